#!/usr/bin/env python3
"""Writes tests/fixtures/grad_latte_f32.safetensors, grad_latte_f64.safetensors and
grad_latte_configs.json: Latte on small odd configs, the gradients of L = sum(out * grad_out) for
every parameter with requires_grad and the input x (and, for extras = 78, the text embedding).

The models: Vchitect/Latte's models/latte.py (variant 1 with adaLN: unconditional, labels, text)
and models/latte_img.py (use_image_num images after the video frames, y_image), and for the
paper's variants 2-4 and its "all tokens" timestep injection, which have no upstream, ditto's own
re-implementation, class LatteVariant of tools/gen_latte_variants_fixtures.py (imported; it is
checked there against upstream's latte.py for variant 1). latte_img runs as gen_latte_fixtures.py
runs it: train() with the label dropout off (its eval forward cannot take y_image; every other
dropout is 0, so training mode computes the same function); the others run in eval().

Every parameter is randomized as gen_latte_fixtures.py's randomize does (N(0, 1) * 0.1 for 1-D
tensors, * fan_in ** -0.5 otherwise; upstream's adaLN-Zero init would make most gradients 0),
except pos_embed and temp_embed: fixed sin-cos tables (requires_grad=False upstream, nn::fixed in
ditto), so they get no gradient. Upstream's initialize_weights sets them; LatteVariant's are given
the same tables (upstream's get_2d_sincos_pos_embed / get_1d_sincos_temp_embed) and frozen. The
text case (extras = 78) takes text_embedding_projection.1.weight and the (B, 77, 768) text
embedding from hash_weights, exactly as gen_latte_fixtures.py's text case, and stores neither:
the test rebuilds both.

Weights and inputs are drawn in float64 and rounded to float32 for both files, so the f64 case is
the float64 computation of the same numbers (both files store `name.w.*` as F32, exactly); the
text case's hashed projection and embedding are made in the run's dtype. float64 runs upstream's
modules in double with the timestep features in float64 (timestep_embedding_f64; upstream fixes
them to float32), a float64 re-derivation of the same forward. Both files hold every case.

Each case `name` stores `name.w.*` (the state dict, pos_embed / temp_embed included, less the
hashed projection), `name.in.{x,t}` (one t is 0.5), `name.in.y` / `name.in.y_image` (labels),
`name.in.use_image_num` (int64 [I], latte_img cases), `name.out`, `name.grad_out` and the
gradients `name.grad.<param>` (zeros for one autograd never reaches), `name.grad.x` and
`name.grad.text_embedding`. A gradient of more than 1024 values is stored as a sketch, as
gen_grad_unet_fixtures.py: `name.grad.<key>.head` (its first 64 values), `.absmax` (max |g|, [1])
and `.dot` (float64 sum g * r with r = hash_weights("sketch." + key) in the run's dtype, [1]),
key being the parameter's name or "text_embedding". Configs: name -> {"kwargs": the constructor
kwargs as LatteConfig::from_json takes them (with "variant" / "timestep_injection" for
LatteVariant), "use_image_num": I}. Run with timm 0.9 (+ huggingface_hub's src/) and einops on
PYTHONPATH:

    PYTHONPATH=/path/to/timm:/path/to/huggingface_hub/src:/path/to/einops LATTE_SRC=/path/to/Latte /usr/bin/python3 tools/gen_grad_latte_fixtures.py
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
from fixture_common import hash_weights, store_grad, timestep_embedding_f64, write_configs, write_fixture  # noqa: E402
from gen_latte_variants_fixtures import LatteVariant  # noqa: E402  (main() runs only as a script)

upstream_embedding = latte.TimestepEmbedder.timestep_embedding
WHOLE = 1024  # gradients up to this many values are stored whole
HEAD = 64
PROJ = "text_embedding_projection.1.weight"

CASES = {  # name: (model, constructor kwargs, batch, use_image_num)
    "uncond": ("latte", dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=2, num_heads=2, num_frames=3,
                             extras=1, learn_sigma=True), 2, 0),
    # 10 pixels in patches of 4: the patch embedding drops the last 2 rows and columns
    "class_odd": ("latte", dict(input_size=10, patch_size=4, in_channels=3, hidden_size=24, depth=2, num_heads=3, mlp_ratio=2.0,
                                num_frames=4, extras=2, num_classes=5, learn_sigma=False), 2, 0),
    "img_class": ("latte_img", dict(input_size=8, patch_size=4, in_channels=3, hidden_size=16, depth=2, num_heads=2,
                                    mlp_ratio=2.0, num_frames=2, extras=2, num_classes=5), 2, 2),
    "img_uncond": ("latte_img", dict(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=2, num_heads=2,
                                     mlp_ratio=2.0, num_frames=3, extras=1), 2, 1),
    # extras = 78: SiLU + Linear(77 * 768, hidden) of the text joins t in every block (not the final layer)
    "text": ("latte", dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=2, num_heads=2, num_frames=2,
                           extras=78), 2, 0),
    # LatteVariant: late fusion, factorized self-attention, factorized dot-product; "all tokens"
    "v2_class": ("variant", dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=4, num_heads=2, mlp_ratio=2.0,
                                 num_frames=3, extras=2, num_classes=4, variant=2), 2, 0),
    "v3": ("variant", dict(input_size=10, patch_size=4, in_channels=3, hidden_size=24, depth=2, num_heads=3, mlp_ratio=2.0,
                           num_frames=4, learn_sigma=False, variant=3), 2, 0),
    "v4_class": ("variant", dict(input_size=8, patch_size=4, in_channels=4, hidden_size=16, depth=2, num_heads=4, mlp_ratio=2.0,
                                 num_frames=3, extras=2, num_classes=3, class_dropout_prob=0.0, variant=4), 2, 0),
    "v1_token": ("variant", dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=2, num_heads=2, mlp_ratio=2.0,
                                 num_frames=2, extras=2, num_classes=3, variant=1, timestep_injection="token"), 2, 0),
    "v3_token": ("variant", dict(input_size=8, patch_size=4, in_channels=2, hidden_size=16, depth=2, num_heads=2, mlp_ratio=2.0,
                                 num_frames=4, learn_sigma=False, variant=3, timestep_injection="token"), 2, 0),
}


def randn(g, *shape, scale=1.0):
    """Drawn in float64, rounded to float32: both files get the same numbers."""
    return (th.randn(tuple(shape), generator=g, dtype=th.float64) * scale).float()


def randomize(m, g):
    """gen_latte_fixtures.py's randomize (rounded to float32): pos_embed / temp_embed untouched."""
    with th.no_grad():
        for k, p in m.named_parameters():
            if k in ("pos_embed", "temp_embed"):
                continue
            fan_in = p.shape[1] if p.dim() == 2 else (p[0].numel() if p.dim() > 2 else 1)
            p.copy_(randn(g, *p.shape, scale=0.1 if p.dim() == 1 else fan_in ** -0.5))


def build(kind, kwargs):
    if kind == "latte":
        return latte.Latte(**kwargs).eval()
    if kind == "latte_img":
        m = latte_img.Latte(**kwargs).train()
        if kwargs.get("extras") == 2:
            m.y_embedder.dropout_prob = 0.0
        return m
    m = LatteVariant(kwargs).eval()
    D, g = kwargs["hidden_size"], kwargs["input_size"] // kwargs["patch_size"]
    with th.no_grad():  # upstream's fixed tables, frozen as upstream freezes them
        m.pos_embed.copy_(th.from_numpy(latte.get_2d_sincos_pos_embed(D, g)).float()[None])
        m.temp_embed.copy_(th.from_numpy(latte.get_1d_sincos_temp_embed(D, kwargs["num_frames"])).float()[None])
    m.pos_embed.requires_grad_(False)
    m.temp_embed.requires_grad_(False)
    return m


def cases(dtype, configs):
    for mod in (latte, latte_img):
        embedding = upstream_embedding if dtype == th.float32 else timestep_embedding_f64
        mod.TimestepEmbedder.timestep_embedding = staticmethod(embedding)
    g = th.Generator().manual_seed(11)
    out = {}
    for name, (kind, kwargs, B, I) in CASES.items():
        configs[name] = {"kwargs": kwargs, "use_image_num": I}
        m = build(kind, kwargs)
        randomize(m, g)
        m = m.to(dtype)
        text = None
        if kwargs.get("extras") == 78:  # gen_latte_fixtures.py's text_inputs, in the run's dtype
            with th.no_grad():
                m.state_dict()[PROJ].copy_(hash_weights(PROJ, list(m.state_dict()[PROJ].shape)))
            text = (hash_weights("text_embedding", [B, 77, 768]) * (77 * 768) ** 0.5).to(dtype).requires_grad_()
        for k, v in m.state_dict().items():
            if k != PROJ:
                out[f"{name}.w.{k}"] = v.float()  # exact: float32 numbers
        s, F, C = kwargs["input_size"], kwargs["num_frames"], kwargs["in_channels"]
        x = randn(g, B, F + I, C, s, s).to(dtype).requires_grad_()
        t = (th.rand(B, generator=g, dtype=th.float64) * 999).float().to(dtype)
        t[-1] = 0.5
        out[f"{name}.in.x"], out[f"{name}.in.t"] = x.detach(), t
        y = y_image = None
        if kwargs.get("extras") == 2:
            n = m.y_embedder.embedding_table.weight.shape[0] if kind != "variant" else kwargs["num_classes"]
            y = th.randint(0, n, (B,), generator=g)
            out[f"{name}.in.y"] = y
            if kind == "latte_img":
                y_image = th.randint(0, n, (B, I), generator=g)
                out[f"{name}.in.y_image"] = y_image
        if kind == "latte_img":
            out[f"{name}.in.use_image_num"] = th.tensor([I], dtype=th.int64)
            o = m(x, t, y, y_image=y_image, use_image_num=I)
        elif text is not None:
            o = m(x, t, text_embedding=text)
        else:
            o = m(x, t, y)
        grad_out = randn(g, *o.shape).to(dtype)
        out[f"{name}.out"], out[f"{name}.grad_out"] = o.detach(), grad_out
        named = [(k, p) for k, p in m.named_parameters() if p.requires_grad] + [("x", x)]
        if text is not None:
            named.append(("text_embedding", text))
        grads = th.autograd.grad((o * grad_out).sum(), [v for _, v in named], allow_unused=True)
        for (k, v), gr in zip(named, grads):
            store_grad(out, name, k, th.zeros_like(v) if gr is None else gr, dtype, WHOLE, HEAD)
        assert grads[len(named) - 1 - (text is not None)].abs().max() > 0, f"{name}: the gradient of x is all zero"
    return out


if __name__ == "__main__":
    th.set_num_threads(1)
    configs = {}
    for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
        write_fixture("grad_latte", suffix, cases(dtype, configs))
    write_configs("grad_latte", configs)
