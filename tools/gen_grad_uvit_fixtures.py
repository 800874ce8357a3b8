#!/usr/bin/env python3
"""Writes tests/fixtures/grad_uvit_f32.safetensors, grad_uvit_f64.safetensors and
grad_uvit_configs.json: baofff/U-ViT's libs/uvit.py UViT ("math" attention, the mode that honours
qk_scale) on small odd configs, the gradients of L = sum(out * grad_out) for every parameter
(U-ViT trains them all, pos_embed included) and the input x. Each case `name` stores `name.w.*`,
`name.in.{x,timesteps,y}`, `name.out`, `name.grad_out`, `name.grad.<param>` and `name.grad.x`.

Weights and inputs are drawn in float64 and rounded to float32 for both files; float64 runs the
modules in double with the timestep features in float64 (upstream computes them in float32,
which a double model cannot take), as gen_uvit_fixtures.py does.

    PYTHONPATH=/path/to/einops UVIT_SRC=/path/to/U-ViT /usr/bin/python3 tools/gen_grad_uvit_fixtures.py
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
from fixture_common import store_autograd, timestep_embedding_f64, write_configs, write_fixture  # noqa: E402

uvit.ATTENTION_MODE = "math"
upstream_embedding = uvit.timestep_embedding

CASES = {  # name: constructor kwargs; batch 2
    # a label token, the 3x3 conv head, long skips
    "cond_conv": dict(img_size=8, patch_size=2, in_chans=3, embed_dim=16, depth=4, num_heads=4, num_classes=10),
    # unconditional, the MLP time embedding, qk_scale, qkv bias, no conv
    "uncond_mlptime": dict(img_size=8, patch_size=4, in_chans=2, embed_dim=12, depth=3, num_heads=2, mlp_time_embed=True, qk_scale=0.3,
                           qkv_bias=True, conv=False, mlp_ratio=2.0),
    # no skips, an odd width, a patch of 3
    "noskip_odd": dict(img_size=9, patch_size=3, in_chans=1, embed_dim=15, depth=2, num_heads=3, skip=False, num_classes=5),
}


def randn(g, *shape, scale=1.0):
    return (th.randn(tuple(shape), generator=g, dtype=th.float64) * scale).float()


def cases(dtype):
    uvit.timestep_embedding = upstream_embedding if dtype == th.float32 else timestep_embedding_f64
    g = th.Generator().manual_seed(5)
    out = {}
    for name, kwargs in CASES.items():
        m = uvit.UViT(**kwargs).eval()
        with th.no_grad():
            for k, p in m.named_parameters():
                fan_in = p.shape[1] if p.dim() == 2 else (p[0].numel() if p.dim() == 4 else 1)
                p.copy_(randn(g, *p.shape, scale=0.5 if p.dim() == 3 else (0.1 if p.dim() == 1 else fan_in ** -0.5)))
        m = m.to(dtype)
        s = kwargs["img_size"]
        x = randn(g, 2, kwargs["in_chans"], s, s).to(dtype).requires_grad_()
        t = (th.rand(2, generator=g, dtype=th.float64) * 999).float().to(dtype)
        t[-1] = 0.25
        y = th.randint(0, kwargs["num_classes"], (2,), generator=g) if kwargs.get("num_classes", -1) > 0 else None
        for k, v in m.state_dict().items():
            out[f"{name}.w.{k}"] = v.float()
        out[f"{name}.in.x"], out[f"{name}.in.timesteps"] = x.detach(), t
        if y is not None:
            out[f"{name}.in.y"] = y
        o = m(x, t, y)
        grad_out = randn(g, *o.shape).to(dtype)
        store_autograd(out, name, o, grad_out, m, x)
    return out


if __name__ == "__main__":
    th.set_num_threads(1)
    for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
        write_fixture("grad_uvit", suffix, cases(dtype))
    write_configs("grad_uvit", CASES)
