#!/usr/bin/env python3
"""Writes tests/fixtures/latte_f32.safetensors, latte_f64.safetensors and latte_configs.json:
Vchitect/Latte's models/latte.py (spatial and temporal blocks interleaved), and models/latte_img.py
(images beside the video: use_image_num, y_image), and latte.py's text conditioning (extras = 78:
its 77 x 768 projection and the text input come from hash_weights, not the file), on small and odd
configs (unconditional and class-conditional, learn_sigma on and off, a size the patch does not
divide), every parameter randomized, forward and forward_with_cfg on seeded videos
(B, F, C, H, W). Each case stores `name.w.*`, `name.in.{x,t,y}`, `name.out`, `name.cfg_out` and
per-module traces `name.trace.*`.

float64 runs the modules in double with the timestep features in float64 (upstream computes them
in float32): a float64 re-derivation of the same forward. Run with timm 0.9 (+ huggingface_hub's
src/) and einops on PYTHONPATH:

    PYTHONPATH=/path/to/timm:/path/to/huggingface_hub/src:/path/to/einops LATTE_SRC=/path/to/Latte /usr/bin/python3 tools/gen_latte_fixtures.py
"""
import os
import sys

import torch as th

src = os.environ.get("LATTE_SRC")
if not src:
    sys.exit("set LATTE_SRC to a checkout of Vchitect/Latte (the folder that holds models/latte.py)")
sys.path.insert(0, os.path.join(src, "models"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import latte  # noqa: E402  (models/latte.py alone: models/__init__.py pulls in text models)
import latte_img  # noqa: E402
from fixture_common import hash_weights, run_traced, timestep_embedding_f64, write_configs, write_fixture  # noqa: E402

upstream_embedding = latte.TimestepEmbedder.timestep_embedding




CASES = {  # name: (constructor kwargs, batch, cfg scale)
    "uncond": (dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_frames=3), 2, 3.0),
    "class_patch4_odd": (dict(input_size=10, patch_size=4, in_channels=3, hidden_size=24, depth=4, num_heads=3, mlp_ratio=2.0,
                              num_frames=5, extras=2, num_classes=7, learn_sigma=False, attention_mode="xformers"), 2, 2.5),
    "depth0": (dict(input_size=4, patch_size=2, in_channels=3, hidden_size=16, depth=0, num_heads=2, num_frames=2), 2, 2.0),
}

IMG_CASES = {  # name: (constructor kwargs, batch, use_image_num)
    "img_uncond": (dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=2, num_heads=2, num_frames=3, extras=1), 2, 2),
    "img_class": (dict(input_size=8, patch_size=4, in_channels=3, hidden_size=24, depth=4, num_heads=3, num_frames=2, extras=2,
                       num_classes=5, learn_sigma=False), 2, 3),
}


TEXT_CASES = {  # name: (constructor kwargs, batch, cfg scale); extras = 78: timestep + a (B, 77, 768) text embedding
    "text": (dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=2, num_heads=2, num_frames=3, extras=78), 2, 4.0),
}
TEXT_FEATURES = 77 * 768


def text_inputs(B, dtype):
    """The text case's large tensors, from hash_weights rather than stored (the projection alone
    has 77 * 768 * hidden_size weights): text_embedding_projection.1.weight as hash_weights makes
    it, and a text embedding (B, 77, 768) with values u in [-1, 1)."""
    text = hash_weights("text_embedding", [B, 77, 768]) * TEXT_FEATURES ** 0.5
    return text.to(dtype)


def randomize(m, g, dtype):
    with th.no_grad():
        for k, p in m.named_parameters():
            if k in ("pos_embed", "temp_embed"):
                continue
            fan_in = p.shape[1] if p.dim() == 2 else (p[0].numel() if p.dim() > 2 else 1)
            p.copy_(th.randn(p.shape, generator=g, dtype=th.float64).to(dtype) * (0.1 if p.dim() == 1 else fan_in ** -0.5))


configs = {}
for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
    for mod in (latte, latte_img):
        mod.TimestepEmbedder.timestep_embedding = staticmethod(upstream_embedding if dtype == th.float32 else timestep_embedding_f64)
    g = th.Generator().manual_seed(0)
    out = {}
    for name, (kwargs, B, cfg) in CASES.items():
        if dtype == th.float64 and name != "uncond":
            continue
        configs[name] = kwargs
        # attention_mode only selects a kernel upstream; run the math one (xformers is CUDA-only)
        m = latte.Latte(**{**kwargs, "attention_mode": "math"}).to(dtype).eval()
        randomize(m, g, dtype)
        s, F, C = kwargs["input_size"], kwargs["num_frames"], kwargs["in_channels"]
        x = th.randn(B, F, C, s, s, generator=g, dtype=th.float64).to(dtype)
        t = (th.rand(B, generator=g, dtype=th.float64) * 999).to(dtype)
        t[-1] = 0.5
        y = None
        if kwargs.get("extras", 1) == 2:
            y = th.randint(0, m.y_embedder.embedding_table.weight.shape[0], (B,), generator=g)
            out[f"{name}.in.y"] = y
        for k, v in m.state_dict().items():
            out[f"{name}.w.{k}"] = v
        out[f"{name}.in.x"], out[f"{name}.in.t"] = x, t
        mods = [("x_embedder", m.x_embedder), ("t_embedder", m.t_embedder), ("final_layer", m.final_layer)] + \
               [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
        if y is not None:
            mods.append(("y_embedder", m.y_embedder))
        with th.no_grad():
            out[f"{name}.out"], traces = run_traced(mods, lambda: m(x, t, y))
            for k, v in traces.items():
                out[f"{name}.trace.{k}"] = v
            out[f"{name}.cfg_out"] = m.forward_with_cfg(x, t, y, cfg)
            out[f"{name}.in.cfg_scale"] = th.tensor([cfg], dtype=dtype)
    # models/latte_img.py: use_image_num frames after the video are images, skipped by the
    # temporal blocks. Its eval forward cannot combine images with labels (the label rows do not
    # cover the images), so it runs in training mode with label dropout off, which is how it
    # takes y_image; every dropout is 0, so training mode computes the same function otherwise.
    for name, (kwargs, B, I) in IMG_CASES.items():
        if dtype == th.float64 and name != "img_class":
            continue
        configs[name] = kwargs
        m = latte_img.Latte(**kwargs).to(dtype).train()
        if kwargs.get("extras") == 2:
            m.y_embedder.dropout_prob = 0.0
        randomize(m, g, dtype)
        s, F, C = kwargs["input_size"], kwargs["num_frames"], kwargs["in_channels"]
        x = th.randn(B, F + I, C, s, s, generator=g, dtype=th.float64).to(dtype)
        t = (th.rand(B, generator=g, dtype=th.float64) * 999).to(dtype)
        y = y_image = None
        if kwargs.get("extras") == 2:
            n = m.y_embedder.embedding_table.weight.shape[0]
            y, y_image = th.randint(0, n, (B,), generator=g), th.randint(0, n, (B, I), generator=g)
            out[f"{name}.in.y"], out[f"{name}.in.y_image"] = y, y_image
        for k, v in m.state_dict().items():
            out[f"{name}.w.{k}"] = v
        out[f"{name}.in.x"], out[f"{name}.in.t"] = x, t
        out[f"{name}.in.use_image_num"] = th.tensor([I], dtype=th.int64)
        mods = [("x_embedder", m.x_embedder), ("t_embedder", m.t_embedder), ("final_layer", m.final_layer)] + \
               [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
        with th.no_grad():
            out[f"{name}.out"], traces = run_traced(mods, lambda: m(x, t, y, y_image=y_image, use_image_num=I))
        for k, v in traces.items():
            out[f"{name}.trace.{k}"] = v
    # extras = 78 (models/latte.py): SiLU + Linear(77 * 768, hidden_size) of the flattened text
    # embedding joins t in every block's condition (the final layer takes t alone, as upstream).
    # Its own generator, so the cases above keep their numbers.
    g = th.Generator().manual_seed(78)
    for name, (kwargs, B, cfg) in TEXT_CASES.items():
        configs[name] = kwargs
        m = latte.Latte(**kwargs).to(dtype).eval()
        randomize(m, g, dtype)
        proj = "text_embedding_projection.1.weight"
        with th.no_grad():
            m.state_dict()[proj].copy_(hash_weights(proj, list(m.state_dict()[proj].shape)))
        s, F, C = kwargs["input_size"], kwargs["num_frames"], kwargs["in_channels"]
        x = th.randn(B, F, C, s, s, generator=g, dtype=th.float64).to(dtype)
        t = (th.rand(B, generator=g, dtype=th.float64) * 999).to(dtype)
        text = text_inputs(B, dtype)
        for k, v in m.state_dict().items():
            if k != proj:
                out[f"{name}.w.{k}"] = v
        out[f"{name}.in.x"], out[f"{name}.in.t"] = x, t
        mods = [("x_embedder", m.x_embedder), ("t_embedder", m.t_embedder), ("text_embedding_projection", m.text_embedding_projection),
                ("final_layer", m.final_layer)] + [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
        with th.no_grad():
            out[f"{name}.out"], traces = run_traced(mods, lambda: m(x, t, text_embedding=text))
            for k, v in traces.items():
                out[f"{name}.trace.{k}"] = v
            out[f"{name}.cfg_out"] = m.forward_with_cfg(x, t, cfg_scale=cfg, text_embedding=text)
            out[f"{name}.in.cfg_scale"] = th.tensor([cfg], dtype=dtype)
    write_fixture("latte", suffix, out)
write_configs("latte", configs)
