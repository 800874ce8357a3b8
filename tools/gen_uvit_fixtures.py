#!/usr/bin/env python3
"""Writes tests/fixtures/uvit_f32.safetensors, uvit_f64.safetensors and uvit_configs.json:
baofff/U-ViT's libs/uvit.py UViT in its "math" attention mode (the one that honours qk_scale),
on small and odd configs (class token or not, conv head or not, mlp_time_embed, qk_scale,
qkv_bias, skip off, an odd embed_dim), every parameter randomized. Each case stores `name.w.*`,
`name.in.{x,timesteps,y}`, `name.out` and per-module traces `name.trace.*`.

float64 runs the modules in double with the timestep features in float64 (upstream computes them
in float32, which a double model cannot take): a float64 re-derivation of the same forward.

    PYTHONPATH=/path/to/einops UVIT_SRC=/path/to/U-ViT /usr/bin/python3 tools/gen_uvit_fixtures.py
"""
import os
import sys

import torch as th

src = os.environ.get("UVIT_SRC")
if not src:
    sys.exit("set UVIT_SRC to a checkout of baofff/U-ViT (the folder that holds libs/)")
sys.path.insert(0, src)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libs import uvit  # noqa: E402
from fixture_common import run_traced, timestep_embedding_f64, write_configs, write_fixture  # noqa: E402

uvit.ATTENTION_MODE = "math"  # the contract: qk_scale is honoured only there
upstream_embedding = uvit.timestep_embedding




CASES = {  # name: (constructor kwargs, batch)
    "cond_conv": (dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=4, num_heads=4, num_classes=10), 2),
    "uncond_mlptime_qkscale": (dict(img_size=8, patch_size=4, in_chans=4, embed_dim=24, depth=3, num_heads=2, mlp_time_embed=True,
                                    qk_scale=0.3, qkv_bias=True, conv=False, mlp_ratio=2.0, use_checkpoint=True), 3),
    "noskip_odd": (dict(img_size=9, patch_size=3, in_chans=1, embed_dim=15, depth=2, num_heads=3, skip=False, num_classes=5), 2),
}

configs = {}
for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
    uvit.timestep_embedding = upstream_embedding if dtype == th.float32 else timestep_embedding_f64
    g = th.Generator().manual_seed(0)
    out = {}
    for name, (kwargs, B) in CASES.items():
        if dtype == th.float64 and name != "uncond_mlptime_qkscale":
            continue
        configs[name] = kwargs
        m = uvit.UViT(**kwargs).to(dtype).eval()
        with th.no_grad():
            for k, p in m.named_parameters():
                fan_in = p.shape[1] if p.dim() == 2 else (p[0].numel() if p.dim() == 4 else 1)
                scale = 0.5 if p.dim() == 3 else (0.1 if p.dim() == 1 else fan_in ** -0.5)
                p.copy_(th.randn(p.shape, generator=g, dtype=th.float64).to(dtype) * scale)
        s = kwargs["img_size"] // kwargs["patch_size"] * kwargs["patch_size"]
        x = th.randn(B, kwargs["in_chans"], s, s, generator=g, dtype=th.float64).to(dtype)
        t = (th.rand(B, generator=g, dtype=th.float64) * 999).to(dtype)
        t[-1] = 0.25
        y = th.randint(0, kwargs["num_classes"], (B,), generator=g) if kwargs.get("num_classes", -1) > 0 else None
        for k, v in m.state_dict().items():
            out[f"{name}.w.{k}"] = v
        out[f"{name}.in.x"], out[f"{name}.in.timesteps"] = x, t
        if y is not None:
            out[f"{name}.in.y"] = y
        mods = [("patch_embed", m.patch_embed), ("mid_block", m.mid_block), ("norm", m.norm), ("decoder_pred", m.decoder_pred),
                ("final_layer", m.final_layer)] + [(f"in_blocks.{i}", b) for i, b in enumerate(m.in_blocks)] + \
               [(f"out_blocks.{i}", b) for i, b in enumerate(m.out_blocks)]
        if kwargs.get("mlp_time_embed"):
            mods.append(("time_embed", m.time_embed))
        if y is not None:
            mods.append(("label_emb", m.label_emb))
        with th.no_grad():
            out[f"{name}.out"], traces = run_traced(mods, lambda: m(x, t, y))
        for k, v in traces.items():
            out[f"{name}.trace.{k}"] = v
    write_fixture("uvit", suffix, out)
write_configs("uvit", configs)
