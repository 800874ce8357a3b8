#!/usr/bin/env python3
"""Writes tests/fixtures/dit_f32.safetensors, dit_f64.safetensors and dit_configs.json: upstream
DiT (facebookresearch/DiT models.py, with timm's PatchEmbed / Attention / Mlp) on small and odd
configs, every parameter randomized (upstream's adaLN-Zero init would make the output 0),
forward and forward_with_cfg on seeded inputs. Each case `name` stores `name.w.*` (the state
dict), `name.in.{x,t,y}`, `name.out`, `name.cfg_out` (when the batch is even) and per-module
traces `name.trace.*`.

float64 runs upstream's modules in double, with TimestepEmbedder.timestep_embedding computed in
float64 (upstream fixes its dtype to float32, which a double model cannot take): a float64
re-derivation of the same forward. Run with DiT, timm (0.9.x, which runs on Debian's torch 1.13)
and huggingface_hub's source on PYTHONPATH:

    PYTHONPATH=/path/to/timm:/path/to/huggingface_hub/src DIT_SRC=/path/to/DiT /usr/bin/python3 tools/gen_dit_fixtures.py
"""
import os
import sys

import torch as th

src = os.environ.get("DIT_SRC")
if not src:
    sys.exit("set DIT_SRC to a checkout of facebookresearch/DiT (the folder that holds models.py)")
sys.path.insert(0, src)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402  (DiT's models.py)
from fixture_common import run_traced, timestep_embedding_f64, write_configs, write_fixture  # noqa: E402

upstream_embedding = models.TimestepEmbedder.timestep_embedding




CASES = {  # name: (constructor kwargs, batch, cfg scale)
    "small": (dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10), 4, 4.0),
    "patch4_nosigma": (dict(input_size=16, patch_size=4, in_channels=3, hidden_size=24, depth=2, num_heads=3, mlp_ratio=2.5,
                            class_dropout_prob=0.0, num_classes=7, learn_sigma=False), 3, None),
    "odd": (dict(input_size=10, patch_size=4, in_channels=1, hidden_size=36, depth=1, num_heads=3, mlp_ratio=1.5,
                 class_dropout_prob=0.25, num_classes=5), 2, 1.5),
    "defaults_tiny": (dict(input_size=4, hidden_size=8, depth=1, num_heads=1), 2, 2.0),
    "depth0": (dict(input_size=8, patch_size=4, in_channels=2, hidden_size=16, depth=0, num_heads=2, num_classes=3), 2, 2.0),
}

configs = {}
for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
    models.TimestepEmbedder.timestep_embedding = staticmethod(upstream_embedding if dtype == th.float32 else timestep_embedding_f64)
    g = th.Generator().manual_seed(0)
    out = {}
    for name, (kwargs, B, cfg) in CASES.items():
        if dtype == th.float64 and name not in ("small", "odd"):
            continue
        configs[name] = kwargs
        m = models.DiT(**kwargs).to(dtype).eval()
        with th.no_grad():
            for k, p in m.named_parameters():
                if k == "pos_embed":
                    continue
                fan_in = p.shape[1] if p.dim() == 2 else (p[0].numel() if p.dim() > 2 else 1)
                p.copy_(th.randn(p.shape, generator=g, dtype=th.float64).to(dtype) * (0.1 if p.dim() == 1 else fan_in ** -0.5))
        c = kwargs.get("in_channels", 4)
        s = kwargs.get("input_size", 32)
        x = th.randn(B, c, s, s, generator=g, dtype=th.float64).to(dtype)
        t = (th.rand(B, generator=g, dtype=th.float64) * 999).to(dtype)
        t[0] = 999.0
        t[-1] = 0.5  # fractional timesteps are allowed
        rows = m.y_embedder.embedding_table.weight.shape[0]
        y = th.randint(0, rows, (B,), generator=g)
        for k, v in m.state_dict().items():
            out[f"{name}.w.{k}"] = v
        out[f"{name}.in.x"], out[f"{name}.in.t"], out[f"{name}.in.y"] = x, t, y
        mods = [("x_embedder", m.x_embedder), ("t_embedder", m.t_embedder), ("y_embedder", m.y_embedder),
                ("final_layer", m.final_layer)] + [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
        with th.no_grad():
            out[f"{name}.out"], traces = run_traced(mods, lambda: m(x, t, y))
            for k, v in traces.items():
                out[f"{name}.trace.{k}"] = v
            if cfg is not None:
                out[f"{name}.cfg_out"] = m.forward_with_cfg(x, t, y, cfg)
                out[f"{name}.in.cfg_scale"] = th.tensor([cfg], dtype=dtype)
    write_fixture("dit", suffix, out)
write_configs("dit", configs)
