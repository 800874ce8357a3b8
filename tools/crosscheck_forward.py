#!/usr/bin/env python3
"""Differential check of ditto-forward against the upstream PyTorch code on random configs.

Each case draws a config of the upstream constructor at random (odd sizes, every option),
builds the upstream module, randomizes all its parameters, draws inputs, runs upstream's
forward, then runs `ditto-forward` on the same config / weights / inputs and compares `out`
(relative error max|got - ref| / max|ref|, limit 1e-4). Past the limit, upstream runs again in
float64: a case where ditto is no farther from that than upstream's own float32 result (within 2x,
or under the limit) is reported as ill-conditioned (random weights can make a GroupNorm divide a
cancellation by a tiny variance), anything else fails. A config upstream refuses (an exception
while building or running) must be refused by ditto-forward too (exit status 1).
This is how the ports are judged from outside; the committed fixtures hold a few such cases,
this script draws as many as you like. With --backward it checks `ditto-forward --backward` too:
every gradient of sum(out * grad_out) against upstream's autograd, and that the gradient names
are exactly upstream's trainable parameters plus the floating-point inputs (x, z, text_embedding;
not t, timesteps or the autoencoder's noise). Every model is drawn; Latte's fixed sin-cos tables
get no gradient, the autoencoder (frozen upstream) one for every parameter.

    PYTHONPATH=/path/to/timm:/path/to/huggingface_hub/src:/path/to/einops \
    DIT_SRC=... UVIT_SRC=... GD_SRC=... LATTE_SRC=... \
    /usr/bin/python3 tools/crosscheck_forward.py --ditto build/ditto-forward --cases 20 [--models dit,unet] [--seed 0]

Writes nothing into the repository: cases live in a temporary folder (--keep DIR keeps failing ones).
"""
import argparse
import contextlib
import inspect
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch as th

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_writer import save  # noqa: E402

LIMIT = 1e-4
NO_GRAD_INPUTS = ("t", "timesteps", "noise")  # floating inputs ditto's --backward gives no gradient for


def load_safetensors(path):
    """The few lines of reading this script needs (F32, F64, I64)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    kinds = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "F16": np.float16}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype=kinds[v["dtype"]]).reshape(v["shape"])
    return out


def randomize(m, rng):
    """Every parameter (and float buffer) drawn at a scale that keeps activations O(1):
    weights ~ fan_in^-1/2, biases 0.1, 1-D scales 1 + 0.2 u. Upstream's zero inits (adaLN-Zero,
    zero_module) would hide whole branches."""
    g = th.Generator().manual_seed(rng.randrange(2**31))
    with th.no_grad():
        for k, p in list(m.named_parameters()) + [(k, b) for k, b in m.named_buffers() if b.is_floating_point()]:
            if k.endswith("pos_embed") and not p.requires_grad:
                continue  # fixed sin-cos tables stay as upstream builds them
            u = th.randn(p.shape, generator=g, dtype=th.float64)
            if p.dim() == 1:
                v = 1 + 0.2 * u if k.endswith("weight") else 0.1 * u
            elif p.dim() >= 2 and k.endswith("weight"):
                v = u * float(np.prod(p.shape[1:])) ** -0.5
            else:
                v = 0.5 * u  # tokens, position tables
            p.copy_(v.to(p.dtype))


@contextlib.contextmanager
def patched(pairs):
    """Temporarily replaces attributes: [(object, name, value), ...]."""
    saved = [(o, n, inspect.getattr_static(o, n)) for o, n, _ in pairs]  # a staticmethod stays one
    for o, n, v in pairs:
        setattr(o, n, v)
    try:
        yield
    finally:
        for o, n, v in saved:
            setattr(o, n, v)


def f64_timesteps(x):
    """Upstream computes timestep features in float32; a float64 run needs them in float64."""
    from fixture_common import timestep_embedding_f64
    return x.dtype == th.float64, timestep_embedding_f64


def pick(rng, *xs):
    return rng.choice(xs)


# ---- one generator per model: returns (ditto model name, kwargs, build(), inputs, run(model, inputs), extra flags)

def case_dit(rng):
    import models as dit  # DiT's models.py
    p = pick(rng, 1, 2, 2, 4, 3)
    heads = pick(rng, 1, 2, 3, 4)
    kw = dict(input_size=p * rng.randint(1, 5), patch_size=p, in_channels=rng.randint(1, 5),
              hidden_size=heads * pick(rng, 4, 8, 12, 16), depth=rng.randint(0, 3), num_heads=heads,
              mlp_ratio=pick(rng, 4.0, 1.0, 2.5, 1.7), class_dropout_prob=pick(rng, 0.1, 0.0, 0.3),
              num_classes=rng.randint(1, 12), learn_sigma=pick(rng, True, False))
    kw = {k: v for k, v in kw.items() if rng.random() < 0.85 or k in ("input_size", "hidden_size", "num_heads")}
    B = rng.randint(1, 3) * (2 if rng.random() < 0.5 else 1)
    cfg = pick(rng, None, 1.0, 4.0, 1.5) if B % 2 == 0 else None

    def build():
        return dit.DiT(**kw)

    def inputs(m):
        g = th.Generator().manual_seed(rng.randrange(2**31))
        s, c = kw.get("input_size", 32), kw.get("in_channels", 4)
        rows = m.y_embedder.embedding_table.weight.shape[0]
        return dict(x=th.randn(B, c, s, s, generator=g), t=th.rand(B, generator=g) * 999,
                    y=th.randint(0, rows, (B,), generator=g))

    def run(m, i):
        f64, emb = f64_timesteps(i["x"])
        with patched([(dit.TimestepEmbedder, "timestep_embedding", staticmethod(emb))] if f64 else []):
            return m.forward_with_cfg(i["x"], i["t"], i["y"], cfg) if cfg is not None else m(i["x"], i["t"], i["y"])
    return "dit", kw, build, inputs, run, (["--cfg-scale", str(cfg)] if cfg is not None else [])


def case_uvit(rng):
    from libs import uvit
    uvit.ATTENTION_MODE = "math"
    p = pick(rng, 1, 2, 4, 3)
    heads = pick(rng, 1, 2, 3, 4)
    kw = dict(img_size=p * rng.randint(1, 5), patch_size=p, in_chans=rng.randint(1, 4),
              embed_dim=heads * pick(rng, 4, 8, 12), depth=rng.randint(0, 5), num_heads=heads,
              mlp_ratio=pick(rng, 4.0, 2.0, 1.5), qkv_bias=pick(rng, False, True),
              qk_scale=pick(rng, None, 0.3), mlp_time_embed=pick(rng, False, True),
              num_classes=pick(rng, -1, 5, 11), conv=pick(rng, True, False), skip=pick(rng, True, False))
    kw = {k: v for k, v in kw.items() if rng.random() < 0.85 or k in ("img_size", "patch_size", "embed_dim", "num_heads")}
    B = rng.randint(1, 3)

    def build():
        return uvit.UViT(**kw)

    def inputs(m):
        g = th.Generator().manual_seed(rng.randrange(2**31))
        s, c = kw.get("img_size", 224), kw.get("in_chans", 3)
        i = dict(x=th.randn(B, c, s, s, generator=g), timesteps=th.rand(B, generator=g) * 999)
        if kw.get("num_classes", -1) > 0:
            i["y"] = th.randint(0, kw["num_classes"], (B,), generator=g)
        return i

    def run(m, i):
        f64, emb = f64_timesteps(i["x"])
        with patched([(uvit, "timestep_embedding", emb)] if f64 else []):
            return m(i["x"], i["timesteps"], i.get("y"))
    return "uvit", kw, build, inputs, run, []


def case_unet(rng):
    from guided_diffusion import unet
    levels = rng.randint(1, 3)
    mc = pick(rng, 32, 64)
    mult = [pick(rng, 1, 2, 1, 0.5, 1.5) for _ in range(levels)]
    mult = [m if int(m * mc) % 32 == 0 else 1 for m in mult]
    res = rng.randint(0, 2)
    kw = dict(image_size=8, in_channels=rng.randint(1, 4), model_channels=mc, out_channels=rng.randint(1, 6),
              num_res_blocks=rng.randint(1, 2), attention_resolutions=sorted(rng.sample([1, 2, 4, 8], res)),
              channel_mult=mult, conv_resample=pick(rng, True, False), num_classes=pick(rng, None, 7),
              num_heads=pick(rng, 1, 2, 4), num_head_channels=pick(rng, -1, -1, 16, 32),
              num_heads_upsample=pick(rng, -1, 1, 2), use_scale_shift_norm=pick(rng, False, True),
              resblock_updown=pick(rng, False, True), use_new_attention_order=pick(rng, False, True))
    req = ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions")
    kw = {k: v for k, v in kw.items() if rng.random() < 0.85 or k in req}
    f = 2 ** (len(kw.get("channel_mult", [1, 2, 4, 8])) - 1)
    # >= 2 x 2 pixels at the bottom: a GroupNorm of 32 channels in 32 groups over 1 or 2 pixels
    # divides float32 rounding by a near-zero deviation, and any two float32 codes then differ by 1e-3
    H, W = f * rng.randint(2, 3), f * rng.randint(2, 3)
    B = rng.randint(1, 2)

    def build():
        return unet.UNetModel(**{**kw, "attention_resolutions": tuple(kw["attention_resolutions"]),
                                 **({"channel_mult": tuple(kw["channel_mult"])} if "channel_mult" in kw else {})})

    def inputs(m):
        g = th.Generator().manual_seed(rng.randrange(2**31))
        i = dict(x=th.randn(B, kw["in_channels"], H, W, generator=g), timesteps=th.rand(B, generator=g) * 999)
        if kw.get("num_classes"):
            i["y"] = th.randint(0, kw["num_classes"], (B,), generator=g)
        return i

    def run(m, i):
        f64, emb = f64_timesteps(i["x"])
        if not f64:
            return m(i["x"], i["timesteps"], i.get("y"))
        # upstream also fixes float32 in GroupNorm32 and the attention softmax: float64 there too,
        # as tools/gen_unet_fixtures.py does
        from fixture_common import qkv_attention_f64
        from guided_diffusion import nn as gnn
        m.dtype = th.float64  # upstream casts the input to this
        with patched([(unet, "timestep_embedding", emb), (gnn.GroupNorm32, "forward", th.nn.GroupNorm.forward),
                      (unet.QKVAttention, "forward", lambda self, qkv: qkv_attention_f64(self, qkv, False)),
                      (unet.QKVAttentionLegacy, "forward", lambda self, qkv: qkv_attention_f64(self, qkv, True))]):
            return m(i["x"], i["timesteps"], i.get("y"))
    return "unet", kw, build, inputs, run, []


def case_latte(rng):
    import latte
    p = pick(rng, 1, 2, 2, 4)
    heads = pick(rng, 1, 2, 3, 4)
    extras = pick(rng, 1, 2, 2, 78)
    kw = dict(input_size=p * rng.randint(1, 4), patch_size=p, in_channels=rng.randint(1, 5),
              hidden_size=heads * pick(rng, 4, 8, 12, 16), depth=2 * rng.randint(0, 2), num_heads=heads,
              mlp_ratio=pick(rng, 4.0, 1.5), num_frames=rng.randint(1, 5), class_dropout_prob=pick(rng, 0.1, 0.0),
              num_classes=rng.randint(1, 9), learn_sigma=pick(rng, True, False), extras=extras)
    kw = {k: v for k, v in kw.items() if rng.random() < 0.85 or k in ("input_size", "hidden_size", "num_heads", "num_frames", "extras")}
    B = rng.randint(1, 2) * (2 if rng.random() < 0.4 else 1)
    cfg = pick(rng, None, 3.0) if B % 2 == 0 and extras != 78 else None

    def build():
        return latte.Latte(**kw)

    def inputs(m):
        g = th.Generator().manual_seed(rng.randrange(2**31))
        s, c, F = kw.get("input_size", 32), kw.get("in_channels", 4), kw["num_frames"]
        i = dict(x=th.randn(B, F, c, s, s, generator=g), t=th.rand(B, generator=g) * 999)
        if extras == 2:
            rows = m.y_embedder.embedding_table.weight.shape[0]
            i["y"] = th.randint(0, rows, (B,), generator=g)
        if extras == 78:
            i["text_embedding"] = th.randn(B, 77, 768, generator=g)
        return i

    def run(m, i):
        f64, emb = f64_timesteps(i["x"])
        with patched([(latte.TimestepEmbedder, "timestep_embedding", staticmethod(emb))] if f64 else []):
            if cfg is not None:
                return m.forward_with_cfg(i["x"], i["t"], i.get("y"), cfg)
            return m(i["x"], i["t"], y=i.get("y"), text_embedding=i.get("text_embedding"))
    return "latte", kw, build, inputs, run, (["--cfg-scale", str(cfg)] if cfg is not None else [])


def case_vit(rng):
    from timm.models.vision_transformer import VisionTransformer
    ph, pw = pick(rng, 2, 4, 3), pick(rng, 2, 4, 3)
    heads = pick(rng, 1, 2, 3)
    class_token = pick(rng, True, True, False)
    pool = pick(rng, "token", "avg", "map", "") if class_token else pick(rng, "avg", "map", "")
    dyn = rng.random() < 0.3
    kw = dict(img_size=[ph * rng.randint(1, 4) + rng.randint(0, 1), pw * rng.randint(1, 4)], patch_size=[ph, pw],
              in_chans=rng.randint(1, 4), num_classes=pick(rng, 0, 5, 10), global_pool=pool,
              embed_dim=heads * pick(rng, 4, 8, 16), depth=rng.randint(0, 3), num_heads=heads,
              mlp_ratio=pick(rng, 4.0, 2.0, 1.5), qkv_bias=pick(rng, True, False), qk_norm=pick(rng, False, True),
              init_values=pick(rng, None, 0.1), class_token=class_token, no_embed_class=pick(rng, False, True),
              reg_tokens=pick(rng, 0, 0, 1, 3), pre_norm=pick(rng, False, True), fc_norm=pick(rng, None, True, False),
              dynamic_img_size=dyn, dynamic_img_pad=dyn and rng.random() < 0.5,
              act_layer=pick(rng, None, "gelu", "gelu_tanh", "silu"))
    if dyn:  # timm's resampling takes the stored table as a square grid (a non-square one gives garbage or fails)
        kw["img_size"], kw["patch_size"] = ph * rng.randint(1, 4), ph
    kw = {k: v for k, v in kw.items() if rng.random() < 0.85 or k in ("img_size", "patch_size", "embed_dim", "num_heads", "dynamic_img_size",
                                                                        "class_token", "global_pool")}
    B = rng.randint(1, 3)
    size = kw["img_size"] if isinstance(kw["img_size"], list) else [kw["img_size"]] * 2
    if dyn:
        size = [ph * rng.randint(1, 5) + (rng.randint(0, 2) if kw.get("dynamic_img_pad") else 0),
                ph * rng.randint(1, 5) + (rng.randint(0, 2) if kw.get("dynamic_img_pad") else 0)]

    def build():
        return VisionTransformer(**kw)

    def inputs(m):
        g = th.Generator().manual_seed(rng.randrange(2**31))
        return dict(x=th.randn(B, kw.get("in_chans", 3), *size, generator=g))

    def run(m, i):
        return m(i["x"])
    return "vit", kw, build, inputs, run, []


def case_vae(rng):
    from libs import autoencoder as ae
    levels = rng.randint(1, 3)
    ch = pick(rng, 32, 64)
    ddconfig = dict(double_z=True, z_channels=pick(rng, 4, 3, 8), resolution=pick(rng, 16, 32), in_channels=3,
                    out_ch=3, ch=ch, ch_mult=[pick(rng, 1, 2) for _ in range(levels)], num_res_blocks=rng.randint(1, 2),
                    attn_resolutions=pick(rng, [], [8], [16, 8], [4]), dropout=0.0)
    if rng.random() < 0.3:
        ddconfig["resamp_with_conv"] = False
    if rng.random() < 0.2:
        ddconfig["attn_type"] = pick(rng, "none", "vanilla")
    kw = dict(ddconfig=ddconfig, embed_dim=pick(rng, 4, 3), scale_factor=pick(rng, 0.18215, 1.0, 0.5))
    encode = rng.random() < 0.5
    f = 2 ** (levels - 1)
    H, W = f * rng.randint(2, 4), f * rng.randint(2, 4)  # >= 2 x 2 at the bottom, as for the U-Net
    B = rng.randint(1, 2)

    def build():
        import io
        probe = th.nn.Module()
        with contextlib.redirect_stdout(io.StringIO()):  # upstream prints what it builds
            probe.encoder, probe.decoder = ae.Encoder(**ddconfig), ae.Decoder(**ddconfig)
        probe.quant_conv = th.nn.Conv2d(2 * ddconfig["z_channels"], 2 * kw["embed_dim"], 1)
        probe.post_quant_conv = th.nn.Conv2d(kw["embed_dim"], ddconfig["z_channels"], 1)
        load, th.load = th.load, lambda *a, **k: probe.state_dict()  # FrozenAutoencoderKL loads weights in __init__
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                m = ae.FrozenAutoencoderKL(**kw, pretrained_path="unused")
        finally:
            th.load = load
        # upstream freezes every parameter (requires_grad_(False)); ditto's --backward gives each a
        # gradient, so --backward's autograd needs them all back (inert for the forward checks)
        return m.requires_grad_(True)

    def inputs(m):
        g = th.Generator().manual_seed(rng.randrange(2**31))
        if encode:
            return dict(x=th.rand(B, 3, H, W, generator=g) * 2 - 1, noise=th.randn(B, kw["embed_dim"], H // f, W // f, generator=g))
        return dict(z=th.randn(B, kw["embed_dim"], H // f, W // f, generator=g))

    def run(m, i):
        if encode:
            mean, _ = th.chunk(m.encode_moments(i["x"]), 2, dim=1)
            return mean
        return m.decode(i["z"])
    return ("vae-encode" if encode else "vae-decode"), kw, build, inputs, run, []


def case_vivit(rng):
    """ViViT has no PyTorch upstream: the reference is ditto's own re-implementation of the paper
    (tools/gen_vivit_fixtures.py), under ditto's config keys."""
    import gen_vivit_fixtures as ref
    model = pick(rng, "spatio_temporal", "factorized_encoder", "factorized_self_attention", "factorized_dot_product")
    uniform = rng.random() < 0.3
    heads = pick(rng, 2, 4) if model == "factorized_dot_product" else pick(rng, 1, 2, 3)
    tt = 1 if uniform else pick(rng, 1, 2, 3)
    ph, pw = pick(rng, 2, 4, 3), pick(rng, 2, 4)
    c = dict(model=model, embedding="uniform" if uniform else "tubelet", num_frames=tt * rng.randint(1, 3),
             img_size=[ph * rng.randint(1, 3), pw * rng.randint(1, 3)], patch_size=[ph, pw], in_chans=rng.randint(1, 3),
             embed_dim=heads * pick(rng, 4, 8), depth=rng.randint(0, 2), temporal_depth=rng.randint(0, 2), num_heads=heads,
             mlp_ratio=pick(rng, 4.0, 2.0), qkv_bias=pick(rng, True, False), num_classes=pick(rng, 0, 3, 7),
             classifier=pick(rng, "token", "gap") if model in ("spatio_temporal", "factorized_encoder") else "gap",
             act_layer=pick(rng, "gelu", "gelu_tanh"))
    if not uniform:
        c["tubelet_size"] = tt
    if model not in ("factorized_encoder",):
        del c["temporal_depth"]
    B = rng.randint(1, 2)

    def build():
        return ref.ViViT(c)

    def inputs(m):
        g = th.Generator().manual_seed(rng.randrange(2**31))
        return dict(x=th.randn(B, c["in_chans"], c["num_frames"], *c["img_size"], generator=g))

    def run(m, i):
        return m(i["x"])
    return "vivit", c, build, inputs, run, []


def case_latte_variant(rng):
    """Latte's variants 2-4 and the timestep token: the reference is ditto's own re-implementation
    (tools/gen_latte_variants_fixtures.py), whose variant 1 equals upstream's latte.py."""
    import gen_latte_variants_fixtures as ref
    variant = pick(rng, 1, 2, 3, 4)
    heads = pick(rng, 2, 4) if variant == 4 else pick(rng, 1, 2, 3)
    p = pick(rng, 1, 2, 4)
    c = dict(input_size=p * rng.randint(1, 3), patch_size=p, in_channels=rng.randint(1, 4), hidden_size=heads * pick(rng, 4, 8),
             depth=2 * rng.randint(1, 2) if variant in (1, 2) else rng.randint(1, 3), num_heads=heads,
             num_frames=rng.randint(1, 4), learn_sigma=pick(rng, True, False), mlp_ratio=pick(rng, 4.0, 2.0),
             extras=pick(rng, 1, 2), num_classes=rng.randint(1, 6), class_dropout_prob=pick(rng, 0.1, 0.0),
             variant=variant, timestep_injection=pick(rng, "adaln", "token"))
    B = rng.randint(1, 2)

    def build():
        m = ref.LatteVariant(c)
        # upstream's pos_embed / temp_embed are fixed sin-cos tables (requires_grad=False, nn::fixed
        # in ditto): randomized here like any weight, but --backward takes no gradient of them
        m.untrained = ("pos_embed", "temp_embed")
        return m

    def inputs(m):
        g = th.Generator().manual_seed(rng.randrange(2**31))
        i = dict(x=th.randn(B, c["num_frames"], c["in_channels"], c["input_size"], c["input_size"], generator=g),
                 t=th.rand(B, generator=g) * 999)
        if c["extras"] == 2:
            i["y"] = th.randint(0, c["num_classes"], (B,), generator=g)
        return i

    def run(m, i):
        return m(i["x"], i["t"], i.get("y"))
    return "latte", c, build, inputs, run, []


CASES = {"dit": case_dit, "uvit": case_uvit, "unet": case_unet, "latte": case_latte, "vit": case_vit, "vae": case_vae,
         "vivit": case_vivit, "latte_variant": case_latte_variant}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ditto", default="build/ditto-forward")
    ap.add_argument("--cases", type=int, default=10, help="cases per model")
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="copy failing cases into this folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=float, default=LIMIT, help="relative error allowed (default 1e-4)")
    ap.add_argument("--backward", action="store_true",
                    help="also check --backward: the gradients of sum(out * grad_out) for every trainable parameter and "
                         "floating input against upstream's autograd (every model; cases with guidance are skipped)")
    ap.add_argument("--hostile", action="store_true",
                    help="instead: break one thing of a valid case (a config value, an input, a weight) and require "
                         "a clean answer: exit 0, or exit 1 with one line on stderr; never a crash or a hang")
    a = ap.parse_args()
    for var, folder in (("DIT_SRC", ""), ("UVIT_SRC", ""), ("GD_SRC", ""), ("LATTE_SRC", "models")):
        if os.environ.get(var):
            sys.path.insert(0, os.path.join(os.environ[var], folder))
    if a.hostile:
        sys.exit(hostile(a))
    failures, worst = 0, {}
    for model in a.models.split(","):
        for n in range(a.cases):
            rng = random.Random(f"{a.seed}/{model}/{n}")
            name, kw, build, make_inputs, run, flags = CASES[model](rng)
            if a.backward and flags:
                print(f"{model}#{n} skipped: guidance has no backward", flush=True)
                continue
            th.manual_seed(0)
            with tempfile.TemporaryDirectory() as tmp:
                status, detail = check_case(a, tmp, name, kw, build, make_inputs, run, flags, rng)
                worst[model] = max(worst.get(model, 0.0), detail if isinstance(detail, float) else 0.0)
                line = f"{model}#{n} {status}: {detail if not isinstance(detail, float) else f'{detail:.2e}'}"
                if status not in ("ok", "both refuse", "ill-conditioned"):
                    failures += 1
                    print(line, "\n   config:", json.dumps(kw), flush=True)
                    if a.keep:
                        dst = os.path.join(a.keep, f"{model}-{n}")
                        shutil.copytree(tmp, dst, dirs_exist_ok=True)
                else:
                    print(line, flush=True)
    print("worst relative error per model:", {k: f"{v:.1e}" for k, v in worst.items()})
    print(f"{failures} failing case(s)")
    sys.exit(1 if failures else 0)


HOSTILE_VALUES = [-1, 0, 2**20, 2**31, 2**40, 2**62, 2**64, 1e300, 0.5, -0.5, "x", None, [], {}, True, [3, -2], float("nan")]


def hostile(a):
    """--hostile: one broken thing per case; a clean error or a clean answer, within 60 s."""
    failures = 0
    for model in a.models.split(","):
        for n in range(a.cases):
            rng = random.Random(f"hostile/{a.seed}/{model}/{n}")
            name, kw, build, make_inputs, run, flags = CASES[model](rng)
            try:
                m = build().eval()
                i = make_inputs(m)
            except Exception:
                continue  # upstream refuses the valid case already: nothing to break
            config, weights = json.loads(json.dumps(kw)), dict(m.state_dict())
            what = rng.choice(["config", "config", "input", "weight"])
            if what == "config":
                key = rng.choice(sorted(config)) if config and rng.random() < 0.8 else "no_such_argument"
                if isinstance(config.get(key), dict):  # the autoencoder's ddconfig
                    config[key] = dict(config[key])
                    key2 = rng.choice(sorted(config[key]))
                    config[key][key2] = rng.choice(HOSTILE_VALUES)
                    change = f"config {key}.{key2} = {config[key][key2]!r}"
                else:
                    config[key] = rng.choice(HOSTILE_VALUES)
                    change = f"config {key} = {config[key]!r}"
            elif what == "input":
                key = rng.choice(sorted(i))
                v = i[key]
                kind = rng.choice(["nan", "shape", "dtype", "huge", "drop", "extra"])
                if kind == ("huge" if v.is_floating_point() else "nan"):
                    kind = "extra"  # NaN needs a float tensor, a huge label an integer one
                if kind == "nan":
                    v = v.clone().reshape(-1)
                    v[0] = float("nan")
                    i[key] = v.reshape(i[key].shape)
                elif kind == "shape":
                    i[key] = v.reshape(-1)[: max(v.numel() - 1, 0)]
                elif kind == "dtype":
                    i[key] = v.to(th.bool) if not v.is_floating_point() else v.to(th.int64)
                elif kind == "huge":
                    i[key] = v * 0 + 2**40
                elif kind == "drop":
                    del i[key]
                else:
                    i["unexpected"] = v
                change = f"input {key}: {kind}"
            else:
                key = rng.choice(sorted(weights))
                if rng.random() < 0.5:
                    del weights[key]
                    change = f"weight {key} missing"
                else:
                    weights[key] = th.zeros(*[d + 1 for d in weights[key].shape]) if weights[key].dim() else th.zeros(2)
                    change = f"weight {key} of shape {list(weights[key].shape)}"
            with tempfile.TemporaryDirectory() as tmp:
                paths = {k: os.path.join(tmp, f"{k}.json" if k == "config" else f"{k}.safetensors") for k in ("config", "weights", "inputs", "out")}
                with open(paths["config"], "w") as f:
                    json.dump(config, f)  # a NaN value is written as Python does (NaN: not JSON, to be refused)
                save(paths["weights"], {k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
                save(paths["inputs"], i)
                cmd = [a.ditto, "--model", name, "--config", paths["config"], "--weights", paths["weights"], "--inputs",
                       paths["inputs"], "--output", paths["out"], "--threads", str(a.threads)] + flags
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                    lines = p.stderr.strip().splitlines()
                    ok = p.returncode == 0 or (p.returncode == 1 and len(lines) == 1 and lines[0].startswith("ditto-forward: "))
                    verdict = f"exit {p.returncode}: {p.stderr.strip()[:160]}"
                except subprocess.TimeoutExpired:
                    ok, verdict = False, "no answer within 60 s"
            print(f"{model}#{n} {'ok' if ok else 'FAIL'}: {change} -> {verdict}", flush=True)
            failures += not ok
    print(f"{failures} failing case(s)")
    return 1 if failures else 0


def check_case(a, tmp, name, kw, build, make_inputs, run, flags, rng):
    # the file's weights may be stored in any float dtype upstream checkpoints use; upstream then
    # computes in float32 from the same (rounded) values that ditto converts
    wdtype = rng.choice([th.float32, th.float32, th.float16, th.bfloat16, th.float64])
    try:
        m = build().eval()
        randomize(m, rng)
        with th.no_grad():
            for v in m.state_dict().values():
                if v.is_floating_point():
                    v.copy_(v.to(wdtype).float())
        i = make_inputs(m)
        for key in ("t", "timesteps"):  # integer timesteps are what samplers pass
            if key in i and rng.random() < 0.3:
                i[key] = i[key].round().long()
        if a.backward:  # upstream's autograd: every trainable parameter and floating input
            for k in getattr(m, "untrained", ()):
                getattr(m, k).requires_grad_(False)
            leaves = {k: v.clone().requires_grad_() for k, v in i.items() if v.is_floating_point() and k not in NO_GRAD_INPUTS}
            o = run(m, {**i, **leaves})
            g = th.Generator().manual_seed(rng.randrange(2**31))
            grad_out = th.randn(o.shape, generator=g)
            named = [(k, p) for k, p in m.named_parameters() if p.requires_grad] + list(leaves.items())
            grads = th.autograd.grad((o * grad_out).sum(), [v for _, v in named], allow_unused=True)
            ref_grads = {f"grad.{k}": (th.zeros_like(v) if gr is None else gr).detach().numpy() for (k, v), gr in zip(named, grads)}
            ref = o.detach().numpy()
            i["grad_out"] = grad_out
        else:
            with th.no_grad():
                ref = run(m, i).numpy()
        upstream_error = None
    except Exception as e:  # upstream refuses this config or input
        upstream_error = f"{type(e).__name__}: {e}"
        m, i = None, None
    paths = {k: os.path.join(tmp, f"{k}.json" if k == "config" else f"{k}.safetensors") for k in ("config", "weights", "inputs", "out")}
    with open(paths["config"], "w") as f:
        json.dump(kw, f)
    if upstream_error is not None:
        # ditto must refuse as well: build it again with default weights just to have a file
        try:
            m = build()
            i = make_inputs(m)
        except Exception:
            return "both refuse", upstream_error.splitlines()[0][:100]
    save(paths["weights"], {k: v.to(wdtype) if v.is_floating_point() else v for k, v in m.state_dict().items()})
    save(paths["inputs"], {k: v for k, v in i.items()})
    cmd = [a.ditto, "--model", name, "--config", paths["config"], "--weights", paths["weights"], "--inputs", paths["inputs"],
           "--output", paths["out"], "--threads", str(a.threads)] + flags + (["--backward"] if a.backward else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if upstream_error is not None:
        if p.returncode == 1:
            return "both refuse", upstream_error.splitlines()[0][:100] + " / " + p.stderr.strip()[:100]
        return "UPSTREAM REFUSES, DITTO RUNS", f"{upstream_error[:200]} (ditto exit {p.returncode})"
    if p.returncode != 0:
        return "DITTO REFUSES", p.stderr.strip()[:300]
    outputs = load_safetensors(paths["out"])
    got = outputs["out"]
    if got.shape != ref.shape:
        return "SHAPE", f"ditto {got.shape}, upstream {ref.shape}"
    worst_grad = 0.0
    if a.backward:
        forward_outputs = {"out", "logvar", "z"} if name == "vae-encode" else {"out"}
        if set(outputs) != set(ref_grads) | forward_outputs:
            return "GRAD NAMES", (f"ditto only: {sorted(set(outputs) - set(ref_grads) - forward_outputs)[:5]}, "
                                  f"upstream only: {sorted(set(ref_grads) - set(outputs))[:5]}")
        if any(outputs[k].shape != r.shape for k, r in ref_grads.items()):
            return "GRAD SHAPE", ", ".join(f"{k}: ditto {outputs[k].shape}, upstream {r.shape}"
                                           for k, r in ref_grads.items() if outputs[k].shape != r.shape)[:300]
        # each gradient against its own max |ref|; one below limit x the largest (zero in exact
        # arithmetic: rounding noise on both sides) against the largest, as tests/test_train.cpp does
        largest = max(float(np.abs(r).max()) for r in ref_grads.values() if r.size)
        worst_grad, worst_name = 0.0, ""
        for k, r in ref_grads.items():
            if r.size == 0:
                continue
            diff, own = float(np.abs(outputs[k].astype(np.float64) - r).max()), float(np.abs(r).max())
            e = diff / (largest if own < a.limit * largest else own)
            if not np.isfinite(e) or e > worst_grad:
                worst_grad, worst_name = e, k
        if not np.isfinite(worst_grad) or worst_grad > a.limit:
            # As for out: upstream's autograd again in float64; if ditto's gradient is no farther
            # from it than upstream's float32 one (within 2x), the case is ill-conditioned.
            try:
                m64 = m.double()
                # integer timesteps as float64 (the same numbers; the float64 embeddings take floats)
                i64 = {k: v.double() if v.is_floating_point() or k in ("t", "timesteps") else v for k, v in i.items() if k != "grad_out"}
                leaves64 = {k: i64[k].clone().requires_grad_() for k in leaves}
                # guided-diffusion's checkpoint() recomputes blocks in backward, outside run()'s
                # float64 patches (its AttentionBlock always checkpoints): run them plainly
                gd_unet = sys.modules.get("guided_diffusion.unet")
                with patched([(gd_unet, "checkpoint", lambda func, inputs, params, flag: func(*inputs))] if gd_unet else []):
                    o64 = run(m64, {**i64, **leaves64})
                named64 = [(k, p) for k, p in m64.named_parameters() if p.requires_grad] + list(leaves64.items())
                g64 = th.autograd.grad((o64 * i["grad_out"].double()).sum(), [v for _, v in named64], allow_unused=True)
                ref64 = dict(zip([f"grad.{k}" for k, _ in named64], g64))[worst_name]
                ref64 = np.zeros(ref_grads[worst_name].shape) if ref64 is None else ref64.detach().numpy()
                scale = max(float(np.abs(ref64).max()), a.limit * largest)
                mine = float(np.abs(outputs[worst_name] - ref64).max()) / scale
                theirs = float(np.abs(ref_grads[worst_name] - ref64).max()) / scale
                status = "ill-conditioned" if mine <= max(2 * theirs, a.limit) else "GRAD MISMATCH"
                return status, (f"{worst_name}: {worst_grad:.2e}; against upstream in float64: ditto {mine:.2e}, upstream float32 {theirs:.2e}"
                                f" (its largest value {float(np.abs(ref64).max()):.1e}, the case's largest gradient {largest:.1e})")
            except Exception as e:  # some upstream code fixes float32 inside
                return "GRAD MISMATCH", f"{worst_name}: {worst_grad:.2e} (no float64 run: {e})"
    err = float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))
    if not np.isfinite(err) or err > a.limit:
        # Who is off? Upstream again in float64 on the same weights and inputs: if float32
        # upstream is as far from it as ditto, the case is ill-conditioned, not wrong.
        try:
            with th.no_grad():
                m64 = m.double()
                i64 = {k: v.double() if v.is_floating_point() else v for k, v in i.items()}
                ref64 = run(m64, i64).numpy()
            scale = np.abs(ref64).max()
            mine, theirs = np.abs(got - ref64).max() / scale, np.abs(ref - ref64).max() / scale
            status = "ill-conditioned" if mine <= max(2 * theirs, a.limit) else "MISMATCH"
            return status, f"{err:.2e}; against upstream in float64: ditto {mine:.2e}, upstream float32 {theirs:.2e}"
        except Exception as e:  # some upstream code fixes float32 inside
            return "MISMATCH", f"{err:.2e} (no float64 run: {e})"
    return "ok", max(err, worst_grad)  # with --backward, out's error or the worst gradient's, whichever is larger


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        sys.exit(2)
