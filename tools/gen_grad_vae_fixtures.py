#!/usr/bin/env python3
"""Writes tests/fixtures/grad_vae_f32.safetensors, grad_vae_f64.safetensors and
grad_vae_configs.json: U-ViT's libs/autoencoder.py FrozenAutoencoderKL (the CompVis / Stable
Diffusion AutoencoderKL) on the two configs of tools/gen_vae_fixtures.py, the gradients of
L = sum(out * grad_out) for every parameter and the input, for its two halves:

  `<config>_encode`: out = the posterior mean (the first half of quant_conv's channels of
      upstream's encode_moments; L never reads the logvar half), input `name.in.x` (images in
      [-1, 1]), `name.grad.x`; the gradients of post_quant_conv's and the decoder's parameters
      are zero and stored as such.
  `<config>_decode`: out = upstream's decode(z) (z / scale_factor, post_quant_conv, decoder),
      input `name.in.z` (randn), `name.grad.z`; the encoder's and quant_conv's gradients are zero.

As tools/gen_vae_fixtures.py, every parameter is hash_weights(name) (tools/fixture_common.py,
mirrored in tests/helpers.hpp) and the configs keep the state dict's names and shapes (and
"mode": "encode" or "decode"). As tools/gen_grad_unet_fixtures.py, a gradient is stored whole up
to 512 values; a larger one as a sketch: `name.grad.<param>.head` (its first 64 values),
`name.grad.<param>.absmax` (max |g|, shape [1]) and `name.grad.<param>.dot` (float64
sum g * r with r = hash_weights("sketch." + param) in the run's dtype). Each case also stores
`name.out` and `name.grad_out` (randn of out's shape). Inputs and grad_out are drawn in float64
and rounded to float32 for both files, so the f64 file is the float64 computation of the same
numbers (upstream's Normalize is plain torch GroupNorm: nothing to patch for float64).

    PYTHONPATH=/path/to/einops UVIT_SRC=/path/to/U-ViT /usr/bin/python3 tools/gen_grad_vae_fixtures.py
"""
import os
import sys

import torch as th

src = os.environ.get("UVIT_SRC")
if not src:
    sys.exit("set UVIT_SRC to a checkout of baofff/U-ViT (the folder that holds libs/autoencoder.py)")
sys.path.insert(0, src)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libs import autoencoder as ae  # noqa: E402
from fixture_common import store_grad, write_configs, write_fixture  # noqa: E402
from gen_vae_fixtures import build as build_hashed  # noqa: E402

WHOLE = 512  # gradients up to this many values are stored whole
HEAD = 64

CASES = {  # config: (FrozenAutoencoderKL kwargs as gen_vae_fixtures.py, image shape, latent shape)
    # attention at 8x, strided-conv down and nearest + conv up, non-square images and latents
    "attn_nonsquare": (dict(ddconfig=dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                                          num_res_blocks=1, attn_resolutions=[8], dropout=0.0), embed_dim=4), (1, 3, 16, 12), (1, 4, 4, 3)),
    # no attention, average-pool down and nearest up without convolutions, scale_factor 0.5
    "noattn_pool": (dict(ddconfig=dict(double_z=True, z_channels=3, resolution=8, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 2],
                                       num_res_blocks=2, attn_resolutions=[], dropout=0.0, attn_type="none", resamp_with_conv=False),
                         embed_dim=2, scale_factor=0.5, pretrained_path="ignored.pth"), (2, 3, 8, 8), (1, 2, 2, 3)),
}


def build(kwargs, dtype):
    """gen_vae_fixtures.py's hashed FrozenAutoencoderKL, with requires_grad (upstream freezes it)."""
    return build_hashed(kwargs, dtype).requires_grad_(True)


def encode_mean(m, x):
    mean, _logvar = th.chunk(m.encode_moments(x), 2, dim=1)
    return mean


def store(out, name, m, inp_name, inp, o, grad_out, dtype):
    out[f"{name}.out"], out[f"{name}.grad_out"] = o.detach(), grad_out
    named = [(k, p) for k, p in m.named_parameters()]
    grads = th.autograd.grad((o * grad_out).sum(), [p for _, p in named] + [inp], allow_unused=True)
    for (k, p), gr in zip(named, grads):
        store_grad(out, name, k, th.zeros_like(p) if gr is None else gr, dtype, WHOLE, HEAD)
    out[f"{name}.grad.{inp_name}"] = grads[-1]


def cases(dtype, configs):
    g = th.Generator().manual_seed(11)
    out = {}
    for cfg, (kwargs, xshape, zshape) in CASES.items():
        m = build(kwargs, dtype)
        sd_shapes = {k: list(v.shape) for k, v in m.state_dict().items()}
        for mode in ("encode", "decode"):
            name = f"{cfg}_{mode}"
            configs[name] = {"kwargs": kwargs, "state_dict": sd_shapes, "mode": mode}
            if mode == "encode":
                inp_name = "x"
                inp = (th.rand(*xshape, generator=g, dtype=th.float64) * 2 - 1).float().to(dtype).requires_grad_()
                o = encode_mean(m, inp)
            else:
                inp_name = "z"
                inp = th.randn(*zshape, generator=g, dtype=th.float64).float().to(dtype).requires_grad_()
                o = m.decode(inp)
            out[f"{name}.in.{inp_name}"] = inp.detach().clone()
            grad_out = th.randn(*o.shape, generator=g, dtype=th.float64).float().to(dtype)
            store(out, name, m, inp_name, inp, o, grad_out, dtype)
    return out


if __name__ == "__main__":
    th.set_num_threads(1)
    configs = {}
    for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
        write_fixture("grad_vae", suffix, cases(dtype, configs))
    write_configs("grad_vae", configs)
