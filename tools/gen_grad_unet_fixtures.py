#!/usr/bin/env python3
"""Writes tests/fixtures/grad_unet_f32.safetensors, grad_unet_f64.safetensors and
grad_unet_configs.json: openai/guided-diffusion's UNetModel on small configs, the gradients of
L = sum(out * grad_out) for every parameter and the input x.

A U-Net's ~10^5 weights are not stored: as tools/gen_unet_fixtures.py, every parameter is
hash_weights(name) (tools/fixture_common.py, mirrored in tests/helpers.hpp) and the configs keep
the state dict's names and shapes. Its gradients are as large, so each is stored whole only up
to 512 values; a larger one is stored as a sketch the test recomputes from its own gradient:
`name.grad.<param>.head` (its first 64 values), `name.grad.<param>.absmax` (max |g|) and
`name.grad.<param>.dot` (sum g * r with r = hash_weights("sketch." + param), so every element
counts). Each case also stores `name.in.{x,timesteps,y}`, `name.out`, `name.grad_out` and
`name.grad.x`.

float64 runs the modules in double with GroupNorm32, the timestep features and the attention
softmax kept in float64 (upstream computes all three in float32), as gen_unet_fixtures.py does.

    GD_SRC=/path/to/guided-diffusion /usr/bin/python3 tools/gen_grad_unet_fixtures.py
"""
import os
import sys

import torch as th

src = os.environ.get("GD_SRC")
if not src:
    sys.exit("set GD_SRC to a checkout of openai/guided-diffusion (the folder that holds guided_diffusion/)")
sys.path.insert(0, src)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from guided_diffusion import nn as gnn  # noqa: E402
from guided_diffusion import unet  # noqa: E402
from fixture_common import hash_weights, qkv_attention_f64, store_grad, timestep_embedding_f64, write_configs, write_fixture  # noqa: E402

upstream_embedding, upstream_gn = unet.timestep_embedding, gnn.GroupNorm32.forward
upstream_attention = unet.QKVAttention.forward, unet.QKVAttentionLegacy.forward
WHOLE = 512  # gradients up to this many values are stored whole
HEAD = 64

CASES = {  # name: (constructor kwargs, input shape)
    # labels, legacy attention at 2x, strided-conv down and nearest + conv up
    "cond_legacy": (dict(image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=[2],
                         channel_mult=[1, 2], num_classes=10, num_heads=2), (2, 3, 8, 8)),
    # scale-shift norm, ResBlock up/down, the new attention order with head channels, non-square
    "scaleshift_updown": (dict(image_size=8, in_channels=2, model_channels=32, out_channels=2, num_res_blocks=1, attention_resolutions=[1, 2],
                               channel_mult=[1, 1], num_head_channels=16, num_heads_upsample=4, use_scale_shift_norm=True,
                               resblock_updown=True, use_new_attention_order=True), (2, 2, 4, 6)),
    # average-pool down and nearest up without convolutions, a fractional channel_mult
    "pool_nearest": (dict(image_size=4, in_channels=1, model_channels=64, out_channels=1, num_res_blocks=1, attention_resolutions=[2],
                          channel_mult=[0.5, 0.5], conv_resample=False), (2, 1, 4, 4)),
}


def set_precision(dtype):
    f64 = dtype == th.float64
    unet.timestep_embedding = timestep_embedding_f64 if f64 else upstream_embedding
    gnn.GroupNorm32.forward = th.nn.GroupNorm.forward if f64 else upstream_gn
    if f64:
        unet.QKVAttention.forward = lambda self, qkv: qkv_attention_f64(self, qkv, False)
        unet.QKVAttentionLegacy.forward = lambda self, qkv: qkv_attention_f64(self, qkv, True)
    else:
        unet.QKVAttention.forward, unet.QKVAttentionLegacy.forward = upstream_attention


def cases(dtype, configs):
    set_precision(dtype)
    g = th.Generator().manual_seed(7)
    out = {}
    for name, (kwargs, shape) in CASES.items():
        m = unet.UNetModel(**{**kwargs, "attention_resolutions": tuple(kwargs["attention_resolutions"]),
                              "channel_mult": tuple(kwargs["channel_mult"])}).to(dtype).eval()
        m.dtype = dtype  # upstream casts the input to its float32 / float16 dtype
        with th.no_grad():
            for k, p in m.state_dict().items():
                p.copy_(hash_weights(k, list(p.shape)).to(dtype))
        configs[name] = {"kwargs": kwargs, "state_dict": {k: list(v.shape) for k, v in m.state_dict().items()}}
        x = th.randn(*shape, generator=g, dtype=th.float64).float().to(dtype).requires_grad_()
        t = (th.rand(shape[0], generator=g, dtype=th.float64) * 999).float().to(dtype)
        t[-1] = 3.5
        y = th.randint(0, kwargs["num_classes"], (shape[0],), generator=g) if kwargs.get("num_classes") else None
        out[f"{name}.in.x"], out[f"{name}.in.timesteps"] = x.detach(), t
        if y is not None:
            out[f"{name}.in.y"] = y
        o = m(x, t, y)
        grad_out = th.randn(*o.shape, generator=g, dtype=th.float64).float().to(dtype)
        out[f"{name}.out"], out[f"{name}.grad_out"] = o.detach(), grad_out
        named = [(k, p) for k, p in m.named_parameters() if p.requires_grad]
        grads = th.autograd.grad((o * grad_out).sum(), [p for _, p in named] + [x])
        for (k, _), gr in zip(named, grads):
            store_grad(out, name, k, gr, dtype, WHOLE, HEAD)
        out[f"{name}.grad.x"] = grads[-1]
    return out


if __name__ == "__main__":
    th.set_num_threads(1)
    configs = {}
    for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
        write_fixture("grad_unet", suffix, cases(dtype, configs))
    write_configs("grad_unet", configs)
