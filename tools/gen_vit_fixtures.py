#!/usr/bin/env python3
"""Writes tests/fixtures/vit_f32.safetensors, vit_f64.safetensors and vit_configs.json: timm's
VisionTransformer (0.9.x) on small configs covering its options (token / avg / attention / no pooling,
register tokens, LayerScale, q/k norm, no_embed_class, pre_norm, rectangular images and patches,
a size the patch does not divide, no head, images of other sizes with dynamic_img_size), every parameter randomized. Each case stores
`name.w.*` (the state dict), `name.in.x`, `name.out` and per-module traces `name.trace.*`.

    PYTHONPATH=/path/to/timm:/path/to/huggingface_hub/src /usr/bin/python3 tools/gen_vit_fixtures.py
"""
import os
import sys

import torch as th

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from timm.models.vision_transformer import VisionTransformer
except ImportError as e:
    sys.exit(f"cannot import timm ({e}); put timm 0.9.x and huggingface_hub's src/ on PYTHONPATH")
from fixture_common import run_traced, write_configs, write_fixture  # noqa: E402

CASES = {  # name: (constructor kwargs, batch)
    "token": (dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10), 2),
    "avg_ls_reg_rect": (dict(img_size=[24, 40], patch_size=[8, 4], embed_dim=24, depth=2, num_heads=3, global_pool="avg",
                             init_values=0.1, reg_tokens=2, qk_norm=True, num_classes=5, mlp_ratio=3.0), 3),
    "noembed_prenorm_features": (dict(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, no_embed_class=True,
                                      pre_norm=True, num_classes=0, act_layer="gelu_tanh", drop_path_rate=0.1), 2),
    "map_pool": (dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, global_pool="map", num_classes=4,
                      mlp_ratio=2.0), 3),
    "nopool_crop": (dict(img_size=20, patch_size=8, embed_dim=16, depth=1, num_heads=1, global_pool="", class_token=False,
                         num_classes=3, qkv_bias=False, in_chans=1, fc_norm=True), 1),
    # dynamic_img_size: images of another size than img_size; the position table is resampled
    # (antialiased bicubic): taller (upsampled) and narrower (downsampled), then padded and larger
    "dynamic_up_down": (dict(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, dynamic_img_size=True,
                             num_classes=3), 2, [24, 12]),
    "dynamic_pad_reg_noembed": (dict(img_size=12, patch_size=4, embed_dim=16, depth=1, num_heads=2, dynamic_img_size=True,
                                     dynamic_img_pad=True, reg_tokens=2, no_embed_class=True, num_classes=0), 1, [18, 30]),
}

configs = {}
for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
    g = th.Generator().manual_seed(0)
    out = {}
    for name, (kwargs, B, *size) in CASES.items():
        if dtype == th.float64 and name not in ("token", "avg_ls_reg_rect"):
            continue
        configs[name] = kwargs
        m = VisionTransformer(**kwargs).to(dtype).eval()
        with th.no_grad():
            for k, p in m.named_parameters():
                fan_in = p.shape[1] if p.dim() == 2 else (p[0].numel() if p.dim() == 4 else 1)
                scale = 0.5 if p.dim() == 3 else (0.1 if p.dim() == 1 else fan_in ** -0.5)  # tokens / biases / weights
                p.copy_(th.randn(p.shape, generator=g, dtype=th.float64).to(dtype) * scale)
        hw = size[0] if size else kwargs["img_size"] if isinstance(kwargs["img_size"], list) else [kwargs["img_size"]] * 2
        x = th.randn(B, kwargs.get("in_chans", 3), *hw, generator=g, dtype=th.float64).to(dtype)
        for k, v in m.state_dict().items():
            out[f"{name}.w.{k}"] = v
        out[f"{name}.in.x"] = x
        mods = [("patch_embed", m.patch_embed), ("norm_pre", m.norm_pre), ("norm", m.norm), ("fc_norm", m.fc_norm),
                ("head", m.head)] + [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
        if m.attn_pool is not None:
            mods.append(("attn_pool", m.attn_pool))
        with th.no_grad():
            out[f"{name}.out"], traces = run_traced(mods, lambda: m(x))
        for k, v in traces.items():
            out[f"{name}.trace.{k}"] = v
    write_fixture("vit", suffix, out)
write_configs("vit", configs)
