#!/usr/bin/env python3
"""Writes tests/fixtures/grad_vivit_f32.safetensors, grad_vivit_f64.safetensors and
grad_vivit_configs.json: ViViT on small odd configs, the gradients of L = sum(out * grad_out) for
every parameter (all are trainable: cls tokens and position tables included) and the input x.

ViViT has no PyTorch upstream; the model is ditto's own PyTorch re-implementation, class ViViT of
tools/gen_vivit_fixtures.py (imported, not copied: the forward fixtures vivit_*.safetensors come
from the same code). The cases cover the four models (spatio_temporal, factorized_encoder,
factorized_self_attention, factorized_dot_product), both token embeddings (tubelets of 2 and 3
frames, uniform frame sampling), class-token and mean (gap) pooling, no head (num_classes 0), no
qkv bias, the tanh GELU, a rectangular image and patch, batches of 1 and 2. Each case `name`
stores `name.w.*` (the state dict), `name.in.x` (B, C, T, H, W), `name.out`, `name.grad_out`,
`name.grad.<param>` and `name.grad.x`; every gradient is stored whole (the largest has a few
thousand values).

Weights and inputs are drawn in float64 and rounded to float32 for both files (cls / position
tokens and 1-D tensors N(0, 0.3^2), matrices and kernels N(0, 1/fan_in), as
gen_grad_vit_fixtures.py), so the f64 case is the float64 computation of the same numbers and
both files store `name.w.*` as F32, exactly. eval(): the model has no dropout anyway.

    /usr/bin/python3 tools/gen_grad_vivit_fixtures.py
"""
import os
import sys

import torch as th

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_common import store_autograd, write_configs, write_fixture  # noqa: E402
from gen_vivit_fixtures import ViViT  # noqa: E402  (main() runs only as a script)

CASES = {  # name: (config, batch)
    # tubelets of 3 frames (nt 2), a class token on 8 patches, 2 input channels
    "st_tubelet3_cls": (dict(model="spatio_temporal", num_frames=6, img_size=8, patch_size=4, tubelet_size=3, in_chans=2,
                             embed_dim=12, depth=2, num_heads=3, num_classes=4), 2),
    # uniform frames, rectangular image and patch (4 x 2 patches), mean pooling, tanh GELU, batch 1
    "st_uniform_rect_gap_tanh": (dict(model="spatio_temporal", embedding="uniform", num_frames=3, img_size=[12, 8],
                                      patch_size=[3, 4], in_chans=1, embed_dim=8, depth=1, num_heads=2, num_classes=3,
                                      classifier="gap", act_layer="gelu_tanh", mlp_ratio=2.0), 1),
    # spatial then temporal encoder, class tokens in both, no qkv bias
    "fe_tubelet2_cls_nobias": (dict(model="factorized_encoder", num_frames=4, img_size=8, patch_size=4, tubelet_size=2,
                                    in_chans=2, embed_dim=12, depth=1, temporal_depth=2, num_heads=3, num_classes=5,
                                    qkv_bias=False), 2),
    # uniform frames, mean pooling in both encoders, no head: the pooled features are the output
    "fe_uniform_gap_nohead": (dict(model="factorized_encoder", embedding="uniform", num_frames=3, img_size=8, patch_size=4,
                                   in_chans=1, embed_dim=8, depth=2, temporal_depth=1, num_heads=2, num_classes=0,
                                   classifier="gap", mlp_ratio=2.0), 2),
    # model 3: spatial, temporal, MLP per block
    "fsa_tubelet2": (dict(model="factorized_self_attention", num_frames=4, img_size=8, patch_size=4, tubelet_size=2,
                          embed_dim=12, depth=2, num_heads=2, num_classes=3, classifier="gap", mlp_ratio=1.5), 2),
    # model 4: half the heads within the frame, half across frames; batch 1
    "fdp_uniform": (dict(model="factorized_dot_product", embedding="uniform", num_frames=3, img_size=8, patch_size=4,
                         embed_dim=12, depth=1, num_heads=4, num_classes=2, classifier="gap"), 1),
}


def randn(g, *shape, scale=1.0):
    return (th.randn(*shape, generator=g, dtype=th.float64) * scale).float()


def cases(dtype):
    g = th.Generator().manual_seed(5)
    out = {}
    for name, (c, B) in CASES.items():
        m = ViViT(c).eval()
        with th.no_grad():
            for k, p in m.named_parameters():
                fan_in = p.shape[1] if p.dim() == 2 else (p[0].numel() if p.dim() > 2 else 1)
                p.copy_(randn(g, *p.shape, scale=0.3 if p.dim() == 1 or "pos_embed" in k or "token" in k else fan_in ** -0.5))
        m = m.to(dtype)
        for k, v in m.state_dict().items():
            out[f"{name}.w.{k}"] = v.float()  # exact: float32 numbers
        H, W = (c["img_size"],) * 2 if isinstance(c["img_size"], int) else c["img_size"]
        x = randn(g, B, c.get("in_chans", 3), c["num_frames"], H, W).to(dtype).requires_grad_()
        o = m(x)
        grad_out = randn(g, *o.shape).to(dtype)
        out[f"{name}.in.x"] = x.detach()
        store_autograd(out, name, o, grad_out, m, x)
        assert out[f"{name}.grad.x"].abs().max() > 0, f"{name}: the gradient of x is all zero"
    return out


if __name__ == "__main__":
    th.set_num_threads(1)
    for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
        write_fixture("grad_vivit", suffix, cases(dtype))
    write_configs("grad_vivit", {k: v[0] for k, v in CASES.items()})
