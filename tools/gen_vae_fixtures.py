#!/usr/bin/env python3
"""Writes tests/fixtures/vae_f32.safetensors, vae_f64.safetensors and vae_configs.json: U-ViT's
libs/autoencoder.py FrozenAutoencoderKL (the CompVis / Stable Diffusion AutoencoderKL) on small
configs (attention or none, conv or pooling resampling, non-square images), weights set from a
hash of each state-dict name (tools/fixture_common.py) (vae_configs.json keeps the names and
shapes; the test rebuilds the weights). Each case stores `name.in.x` (images in [-1, 1]),
`name.in.noise`, `name.mean`, `name.logvar` (clamped), `name.z` (scaled sample), `name.in.z`
(a latent to decode) and `name.decoded`.

    PYTHONPATH=/path/to/einops UVIT_SRC=/path/to/U-ViT /usr/bin/python3 tools/gen_vae_fixtures.py
"""
import contextlib
import io
import os
import sys

import torch as th

src = os.environ.get("UVIT_SRC")
if not src:
    sys.exit("set UVIT_SRC to a checkout of baofff/U-ViT (the folder that holds libs/autoencoder.py)")
sys.path.insert(0, src)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libs import autoencoder as ae  # noqa: E402
from fixture_common import hash_weights, run_traced, write_configs, write_fixture  # noqa: E402

def tiled_decode(m, z, tile_latent, overlap):
    """diffusers' AutoencoderKL.tiled_decode (blend_v / blend_h in place, crop to the stride),
    re-implemented here on U-ViT's decoder: diffusers' own model has other key names."""
    f = 2 ** (len(m.decoder.up) - 1)
    stride, blend = int(tile_latent * (1 - overlap)), int(tile_latent * f * overlap)
    keep = tile_latent * f - blend
    rows = [[m.decode(z[:, :, i:i + tile_latent, j:j + tile_latent]) for j in range(0, z.shape[3], stride)]
            for i in range(0, z.shape[2], stride)]
    out_rows = []
    for i, row in enumerate(rows):
        out_row = []
        for j, b in enumerate(row):
            if i > 0:
                a, e = rows[i - 1][j], min(rows[i - 1][j].shape[2], b.shape[2], blend)
                for y in range(e):
                    b[:, :, y, :] = a[:, :, -e + y, :] * (1 - y / e) + b[:, :, y, :] * (y / e)
            if j > 0:
                a, e = row[j - 1], min(row[j - 1].shape[3], b.shape[3], blend)
                for x in range(e):
                    b[:, :, :, x] = a[:, :, :, -e + x] * (1 - x / e) + b[:, :, :, x] * (x / e)
            out_row.append(b[:, :, :keep, :keep])
        out_rows.append(th.cat(out_row, dim=3))
    return th.cat(out_rows, dim=2)


CASES = {  # name: (FrozenAutoencoderKL kwargs, image shape, latent shape to decode)
    "attn_nonsquare": (dict(ddconfig=dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                                          num_res_blocks=1, attn_resolutions=[8], dropout=0.0), embed_dim=4), (2, 3, 16, 12), (1, 4, 5, 3)),
    "noattn_pool": (dict(ddconfig=dict(double_z=True, z_channels=3, resolution=8, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 2],
                                       num_res_blocks=2, attn_resolutions=[], dropout=0.0, attn_type="none", resamp_with_conv=False),
                         embed_dim=2, scale_factor=0.5, pretrained_path="ignored.pth"), (1, 3, 8, 8), (2, 2, 3, 2)),
}

def build(kwargs, dtype):
    """FrozenAutoencoderKL(**kwargs) in dtype with every parameter hash_weights(name), made in the
    model's dtype (float64: not rounded to float32). Upstream loads its weights in __init__ (and
    prints what it builds), so th.load hands it the hashed state dict."""
    dd = kwargs["ddconfig"]
    probe = th.nn.Module()
    with contextlib.redirect_stdout(io.StringIO()):
        probe.encoder, probe.decoder = ae.Encoder(**dd), ae.Decoder(**dd)
    probe.quant_conv = th.nn.Conv2d(2 * dd["z_channels"], 2 * kwargs["embed_dim"], 1)
    probe.post_quant_conv = th.nn.Conv2d(kwargs["embed_dim"], dd["z_channels"], 1)
    sd = {k: hash_weights(k, list(v.shape)).float() for k, v in probe.state_dict().items()}
    load = th.load
    th.load = lambda *a, **k: sd
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            m = ae.FrozenAutoencoderKL(**{**kwargs, "pretrained_path": "unused"})
    finally:
        th.load = load
    m = m.to(dtype)
    with th.no_grad():
        for k, p in m.state_dict().items():
            p.copy_(hash_weights(k, list(p.shape)))
    return m


def main():
    configs = {}
    for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
        g = th.Generator().manual_seed(0)
        out = {}
        for name, (kwargs, xshape, zshape) in CASES.items():
            m = build(kwargs, dtype)
            configs[name] = {"kwargs": kwargs, "state_dict": {k: list(v.shape) for k, v in m.state_dict().items()}}
            x = (th.rand(*xshape, generator=g, dtype=th.float64) * 2 - 1).to(dtype)
            z_in = th.randn(*zshape, generator=g, dtype=th.float64).to(dtype)
            with th.no_grad():
                moments, traces = run_traced([("encoder", m.encoder), ("quant_conv", m.quant_conv)], lambda: m.encode_moments(x))
                for k, v in traces.items():  # each top-level submodule's output, what ditto-forward --trace writes
                    out[f"{name}.trace_encode.{k}"] = v
                mean, logvar = th.chunk(moments, 2, dim=1)
                noise = th.randn(mean.shape, generator=g, dtype=th.float64).to(dtype)
                randn_like = th.randn_like
                th.randn_like = lambda t: noise
                try:
                    z = m.sample(moments)
                finally:
                    th.randn_like = randn_like
                out[f"{name}.in.x"], out[f"{name}.in.noise"], out[f"{name}.in.z"] = x, noise, z_in
                out[f"{name}.mean"], out[f"{name}.logvar"], out[f"{name}.z"] = mean, th.clamp(logvar, -30.0, 20.0), z
                out[f"{name}.decoded"], traces = run_traced([("post_quant_conv", m.post_quant_conv), ("decoder", m.decoder)],
                                                            lambda: m.decode(z_in))
                for k, v in traces.items():
                    out[f"{name}.trace_decode.{k}"] = v
                if name == "attn_nonsquare":  # tiles of 4 latent pixels, a quarter overlapping, on a 9x7 latent
                    z_big = th.randn(1, 4, 9, 7, generator=g, dtype=th.float64).to(dtype)
                    out[f"{name}.in.z_big"], out[f"{name}.tiled"] = z_big, tiled_decode(m, z_big, 4, 0.25)
        write_fixture("vae", suffix, out)
    write_configs("vae", configs)


if __name__ == "__main__":
    main()
