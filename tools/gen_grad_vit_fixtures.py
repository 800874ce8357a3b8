#!/usr/bin/env python3
"""Writes tests/fixtures/grad_vit_f32.safetensors, grad_vit_f64.safetensors and
grad_vit_configs.json: timm's VisionTransformer (0.9.x) on small odd configs, the gradients of
L = sum(out * grad_out) for every parameter (timm trains them all, pos_embed included) and the
input x. Each case `name` stores `name.w.*` (the state dict), `name.in.x`, `name.out`,
`name.grad_out`, `name.grad.<param>` and `name.grad.x`.

Weights and inputs are drawn in float64 and rounded to float32 for both files, so the f64 case
is the float64 computation of the same numbers. The f64 file leaves out "dynamic": timm resamples
the position table in float32 (resample_abs_pos_embed casts it), and autograd runs that resize's
backward in float32 too, so a float64 run of it is no float64 reference (as gen_vit_fixtures.py
keeps its dynamic cases to float32). eval(): no dropout. Run with timm's source on PYTHONPATH:

    PYTHONPATH=/path/to/timm:/path/to/huggingface_hub/src /usr/bin/python3 tools/gen_grad_vit_fixtures.py
"""
import os
import sys

import torch as th

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_common import store_autograd, write_configs, write_fixture  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

CASES = {  # name: (constructor kwargs, image (h, w)); batch 2
    # rectangular image and patch, a cut remainder row, qk_norm, LayerScale, registers, pre_norm
    "token": (dict(img_size=(9, 8), patch_size=(4, 2), in_chans=2, num_classes=5, embed_dim=12, depth=2, num_heads=3, mlp_ratio=1.5,
                   qk_norm=True, init_values=0.5, reg_tokens=2, pre_norm=True), (9, 8)),
    # mean pooling with fc_norm, no class token, positions on the patches only
    "avg": (dict(img_size=8, patch_size=4, in_chans=3, num_classes=4, embed_dim=8, depth=1, num_heads=2, global_pool="avg",
                 class_token=False, no_embed_class=True), (8, 8)),
    # attention pooling (AttentionPoolLatent), a register, fc_norm given
    "map": (dict(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2, global_pool="map",
                 class_token=False, reg_tokens=1, fc_norm=True), (8, 8)),
    # another image size: the position table resampled (bicubic, antialiased), and no head
    "dynamic": (dict(img_size=8, patch_size=2, in_chans=1, num_classes=0, embed_dim=8, depth=1, num_heads=2, dynamic_img_size=True),
                (6, 10)),
}


def randn(g, *shape, scale=1.0):
    return (th.randn(*shape, generator=g, dtype=th.float64) * scale).float()


def cases(dtype):
    g = th.Generator().manual_seed(3)
    out = {}
    for name, (kwargs, (h, w)) in CASES.items():
        if dtype == th.float64 and name == "dynamic":
            continue  # last case, so skipping it changes no other draw
        m = VisionTransformer(**kwargs).eval()
        with th.no_grad():  # every tensor random (timm's zero / one inits would hide gradients)
            for k, p in m.named_parameters():
                fan_in = p.shape[1] if p.dim() == 2 else (p[0].numel() if p.dim() > 2 else 1)
                p.copy_(randn(g, *p.shape, scale=0.3 if p.dim() == 1 or "pos_embed" in k or "token" in k else fan_in ** -0.5))
        m = m.to(dtype)
        for k, v in m.state_dict().items():
            out[f"{name}.w.{k}"] = v.float()  # exact: float32 numbers
        x = randn(g, 2, kwargs["in_chans"], h, w).to(dtype).requires_grad_()
        o = m(x)
        grad_out = randn(g, *o.shape).to(dtype)
        out[f"{name}.in.x"] = x.detach()
        store_autograd(out, name, o, grad_out, m, x)
    return out


if __name__ == "__main__":
    th.set_num_threads(1)
    for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
        write_fixture("grad_vit", suffix, cases(dtype))
    write_configs("grad_vit", {k: v[0] for k, v in CASES.items()})
