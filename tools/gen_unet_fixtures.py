#!/usr/bin/env python3
"""Writes tests/fixtures/unet_f32.safetensors, unet_f64.safetensors and unet_configs.json:
openai/guided-diffusion's UNetModel (guided_diffusion/unet.py) on small configs covering its
options (class conditioning, scale-shift norm, resblock up/down or conv / pooling resample,
num_heads, num_head_channels, num_heads_upsample, both attention orders, fractional channel_mult,
non-square inputs), every parameter set by a hash of its state-dict name and element index (upstream zero-initializes
some). Even a small U-Net has ~10^5-10^6 weights, so they are not stored: unet_configs.json
keeps each case's constructor arguments and its state dict's names and shapes, and the test
rebuilds the same weights from the same formula (`hash_weights` in tools/fixture_common.py,
mirrored in tests/test_models.cpp), writes them to a .safetensors file and loads it strictly. Each case
stores `name.in.{x,timesteps,y}`, `name.out` and per-module traces `name.trace.*`.

float64 runs the modules in double with GroupNorm32, the timestep features and the attention
softmax kept in float64 (upstream computes all three in float32): a float64 re-derivation of the
same forward.

    GD_SRC=/path/to/guided-diffusion /usr/bin/python3 tools/gen_unet_fixtures.py
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
from fixture_common import hash_weights, qkv_attention_f64, run_traced, timestep_embedding_f64, write_configs, write_fixture  # noqa: E402

upstream_embedding, upstream_gn = unet.timestep_embedding, gnn.GroupNorm32.forward




upstream_attention = unet.QKVAttention.forward, unet.QKVAttentionLegacy.forward

CASES = {  # name: (constructor kwargs, input shape)
    "cond_legacy": (dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                         attention_resolutions=[2], channel_mult=[1, 2], num_classes=10, num_heads=2), (2, 3, 8, 8)),
    "scaleshift_updown_neworder_nonsquare": (dict(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1,
                                                  attention_resolutions=[1, 4], channel_mult=[1, 1, 1], num_head_channels=16,
                                                  num_heads_upsample=4, use_scale_shift_norm=True, resblock_updown=True,
                                                  use_new_attention_order=True), (1, 4, 8, 12)),
    "pool_nearest_half": (dict(image_size=8, in_channels=1, model_channels=64, out_channels=2, num_res_blocks=1,
                               attention_resolutions=[2], channel_mult=[0.5, 0.5], conv_resample=False, num_heads=1,
                               num_heads_upsample=2, dropout=0.1, use_checkpoint=True), (2, 1, 4, 4)),
}

configs = {}
for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
    unet.timestep_embedding = upstream_embedding if dtype == th.float32 else timestep_embedding_f64
    gnn.GroupNorm32.forward = upstream_gn if dtype == th.float32 else th.nn.GroupNorm.forward
    if dtype == th.float32:
        unet.QKVAttention.forward, unet.QKVAttentionLegacy.forward = upstream_attention
    else:
        unet.QKVAttention.forward = lambda self, qkv: qkv_attention_f64(self, qkv, False)
        unet.QKVAttentionLegacy.forward = lambda self, qkv: qkv_attention_f64(self, qkv, True)
    g = th.Generator().manual_seed(0)
    out = {}
    for name, (kwargs, shape) in CASES.items():
        if dtype == th.float64 and name != "scaleshift_updown_neworder_nonsquare":
            continue
        m = unet.UNetModel(**{**kwargs, "attention_resolutions": tuple(kwargs["attention_resolutions"]),
                              "channel_mult": tuple(kwargs["channel_mult"])}).to(dtype).eval()
        m.dtype = dtype  # upstream casts the input to its float32 / float16 dtype
        with th.no_grad():
            for k, p in m.state_dict().items():
                p.copy_(hash_weights(k, list(p.shape)).to(dtype))
        configs[name] = {"kwargs": kwargs, "state_dict": {k: list(v.shape) for k, v in m.state_dict().items()}}
        x = th.randn(*shape, generator=g, dtype=th.float64).to(dtype)
        t = (th.rand(shape[0], generator=g, dtype=th.float64) * 999).to(dtype)
        t[-1] = 3.5
        y = th.randint(0, kwargs["num_classes"], (shape[0],), generator=g) if kwargs.get("num_classes") else None
        out[f"{name}.in.x"], out[f"{name}.in.timesteps"] = x, t
        if y is not None:
            out[f"{name}.in.y"] = y
        mods = [("time_embed", m.time_embed), ("middle_block", m.middle_block), ("out", m.out)] + \
               [(f"input_blocks.{i}", b) for i, b in enumerate(m.input_blocks)] + \
               [(f"output_blocks.{i}", b) for i, b in enumerate(m.output_blocks)]
        if y is not None:
            mods.append(("label_emb", m.label_emb))
        with th.no_grad():
            out[f"{name}.out"], traces = run_traced(mods, lambda: m(x, t, y))
        for k, v in traces.items():
            out[f"{name}.trace.{k}"] = v
    write_fixture("unet", suffix, out)
write_configs("unet", configs)
