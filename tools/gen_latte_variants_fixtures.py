#!/usr/bin/env python3
"""Writes tests/fixtures/latte_variants_f32.safetensors, latte_variants_f64.safetensors and
latte_variants_configs.json.

The Latte paper's variants 2-4 and its "all tokens" timestep injection have no upstream code
(Vchitect/Latte's models/latte.py is variant 1 with adaLN). This is ditto's own PyTorch
re-implementation, written from the paper's sec. 3.2 with plain torch, under the parameter names
ditto uses (docs/models.md): where ditto attends over strided rows, this code transposes the
(b, f, n, d) tokens as a PyTorch user would. For variant 1 with adaLN it is checked here against
upstream's latte.py on the same weights (when LATTE_SRC points at a Latte checkout, with timm and
einops on PYTHONPATH), so the re-implementation shares upstream's conventions.

Each case stores `name.w.*`, `name.in.{x,t,y}`, `name.out` and traces `name.trace.*`: each block's
output ((b f) n d for blocks that attend within frames, (b n) f d for temporal ones) and
final_layer's.

    /usr/bin/python3 tools/gen_latte_variants_fixtures.py
"""
import math
import os
import sys

import torch as th
import torch.nn as nn
import torch.nn.functional as Fn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_common import timestep_embedding_f64, write_configs, write_fixture  # noqa: E402



def attend(q, k, v):  # (..., n, d) each
    return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v


class Attn(nn.Module):
    def __init__(self, D, H):
        super().__init__()
        self.H, self.qkv, self.proj = H, nn.Linear(D, 3 * D), nn.Linear(D, D)

    def heads(self, x):  # (S, n, D) -> q, k, v: (S, H, n, d)
        S, n, D = x.shape
        return self.qkv(x).reshape(S, n, 3, self.H, D // self.H).permute(2, 0, 3, 1, 4)

    def forward(self, x):
        q, k, v = self.heads(x)
        o = attend(q, k, v)
        return self.proj(o.transpose(1, 2).flatten(2))


def over_frames(f, x):  # x: (B, F, n, D); f sees (B F, n, D)
    B, F, n, D = x.shape
    return f(x.reshape(B * F, n, D)).reshape(B, F, n, D)


def over_time(f, x):  # f sees (B n, F, D)
    B, F, n, D = x.shape
    return f(x.transpose(1, 2).reshape(B * n, F, D)).reshape(B, n, F, D).transpose(1, 2)


def split_heads(a, x):
    """Variant 4: heads [0, H/2) attend within the frame, [H/2, H) across frames; x (B, F, n, D)."""
    B, F, n, D = x.shape
    q, k, v = a.heads(x.reshape(B, F * n, D))  # (B, H, F n, d)
    H, d = q.shape[1], q.shape[-1]
    grid = lambda z: z.reshape(B, H, F, n, d)  # noqa: E731
    ys = attend(*(grid(z)[:, : H // 2] for z in (q, k, v)))
    yt = attend(*(grid(z)[:, H // 2:].transpose(2, 3) for z in (q, k, v))).transpose(2, 3)
    o = th.cat([ys, yt], dim=1).permute(0, 2, 3, 1, 4).reshape(B, F, n, D)
    return a.proj(o)


class Block(nn.Module):
    def __init__(self, D, H, hidden, attends, adaln):
        super().__init__()
        self.attends, self.adaln = attends, adaln
        two = attends == "frame_then_time"
        self.attn = Attn(D, H)
        if two:
            self.attn_temporal = Attn(D, H)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(D, hidden), nn.Linear(hidden, D)
        if adaln:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, (9 if two else 6) * D))
        else:
            self.norm1, self.norm2 = nn.LayerNorm(D, eps=1e-6), nn.LayerNorm(D, eps=1e-6)
            if two:
                self.norm_temporal = nn.LayerNorm(D, eps=1e-6)

    def forward(self, x, c):  # x: (B, F, n, D), c: (B, D)
        D = x.shape[-1]
        mods = self.adaLN_modulation(c)[:, None, None, :].chunk(9 if self.attends == "frame_then_time" else 6, dim=-1) \
            if self.adaln else None
        step = [0]

        def branch(norm, f, x):
            if self.adaln:
                shift, scale, gate = mods[step[0]:step[0] + 3]
                step[0] += 3
                return x + gate * f(Fn.layer_norm(x, (D,), eps=1e-6) * (1 + scale) + shift)
            return x + f(norm(x))

        mlp = lambda h: self.mlp.fc2(Fn.gelu(self.mlp.fc1(h), approximate="tanh"))  # noqa: E731
        if self.attends == "frame":
            x = branch(getattr(self, "norm1", None), lambda h: over_frames(self.attn, h), x)
        elif self.attends == "time":
            x = branch(getattr(self, "norm1", None), lambda h: over_time(self.attn, h), x)
        elif self.attends == "split_heads":
            x = branch(getattr(self, "norm1", None), lambda h: split_heads(self.attn, h), x)
        else:
            x = branch(getattr(self, "norm1", None), lambda h: over_frames(self.attn, h), x)
            x = branch(getattr(self, "norm_temporal", None), lambda h: over_time(self.attn_temporal, h), x)
        return branch(getattr(self, "norm2", None), mlp, x)


def attends_of(variant, i, depth):
    return {1: "time" if i % 2 else "frame", 2: "frame" if i < depth // 2 else "time", 3: "frame_then_time",
            4: "split_heads"}[variant]


class LatteVariant(nn.Module):
    def __init__(self, c):
        super().__init__()
        D, p, C = c["hidden_size"], c["patch_size"], c["in_channels"]
        self.c, self.adaln = c, c.get("timestep_injection", "adaln") == "adaln"
        self.out_channels = 2 * C if c.get("learn_sigma", True) else C
        g = c["input_size"] // p
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(C, D, p, p)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        if c.get("extras", 1) == 2:
            self.y_embedder = nn.Module()
            self.y_embedder.embedding_table = nn.Embedding(c["num_classes"] + (c.get("class_dropout_prob", 0.1) > 0), D)
        self.pos_embed = nn.Parameter(th.zeros(1, g * g, D))
        self.temp_embed = nn.Parameter(th.zeros(1, c["num_frames"], D))
        depth, variant = c["depth"], c.get("variant", 1)
        self.kinds = [attends_of(variant, i, depth) for i in range(depth)]
        self.blocks = nn.ModuleList([Block(D, c["num_heads"], int(D * c.get("mlp_ratio", 4.0)), k, self.adaln) for k in self.kinds])
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(D, p * p * self.out_channels)
        if self.adaln:
            self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        else:
            self.final_layer.norm_final = nn.LayerNorm(D, eps=1e-6)

    def timestep_features(self, t):
        if t.dtype == th.float64:
            return timestep_embedding_f64(t, 256)
        half = 128  # cos first, in float32 (GLIDE / DiT)
        freqs = th.exp(-math.log(10000) * th.arange(half, dtype=th.float32) / half)
        args = t[:, None].float() * freqs[None]
        return th.cat([th.cos(args), th.sin(args)], dim=-1)

    def forward(self, x, t, y=None, traces=None):
        c, p = self.c, self.c["patch_size"]
        B, F, C, S, _ = x.shape
        g, D = S // p, c["hidden_size"]
        frames = x.reshape(B * F, C, S, S)[:, :, : g * p, : g * p]
        e = self.x_embedder.proj(frames).flatten(2).transpose(1, 2) + self.pos_embed  # (B F, N, D)
        cond = self.t_embedder.mlp(self.timestep_features(t).to(x.dtype))
        if y is not None:
            cond = cond + self.y_embedder.embedding_table(y)
        tok = e.reshape(B, F, g * g, D)
        if not self.adaln:  # the condition as one more token at the head of every frame
            tok = th.cat([cond[:, None, None, :].expand(B, F, 1, D), tok], dim=2)
        first_temporal = next((i for i, k in enumerate(self.kinds) if k != "frame"), len(self.kinds))
        for i, (blk, kind) in enumerate(zip(self.blocks, self.kinds)):
            if i == first_temporal:
                tok = tok + self.temp_embed[:, :, None, :]
            tok = blk(tok, cond)
            if traces is not None:
                n = tok.shape[2]
                traces[f"blocks.{i}"] = tok.transpose(1, 2).reshape(B * n, F, D) if kind == "time" else tok.reshape(B * F, n, D)
        patches = tok[:, :, tok.shape[2] - g * g:]
        if self.adaln:
            shift, scale = self.final_layer.adaLN_modulation(cond)[:, None, None, :].chunk(2, dim=-1)
            h = Fn.layer_norm(patches, (D,), eps=1e-6) * (1 + scale) + shift
        else:
            h = self.final_layer.norm_final(patches)
        o = self.final_layer.linear(h).reshape(B * F, g * g, -1)
        if traces is not None:
            traces["final_layer"] = o
        o = o.reshape(B * F, g, g, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return o.reshape(B, F, self.out_channels, g * p, g * p)


CASES = {  # name: (config, batch)
    "v2_adaln_class": (dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_frames=3,
                            extras=2, num_classes=5, variant=2), 2),
    "v3_adaln_odd": (dict(input_size=10, patch_size=4, in_channels=3, hidden_size=24, depth=3, num_heads=3, num_frames=4,
                          learn_sigma=False, mlp_ratio=2.0, variant=3), 2),
    "v4_adaln": (dict(input_size=8, patch_size=4, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_frames=5, variant=4), 1),
    "v1_token_class": (dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=2, num_heads=2, num_frames=3,
                            extras=2, num_classes=3, class_dropout_prob=0.0, timestep_injection="token"), 2),
    "v3_token": (dict(input_size=8, patch_size=4, in_channels=2, hidden_size=24, depth=2, num_heads=2, num_frames=4,
                      variant=3, timestep_injection="token"), 2),
    "v4_token": (dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=1, num_heads=2, num_frames=3,
                      variant=4, timestep_injection="token", learn_sigma=False), 2),
}


def randomize(m, g, dtype):
    with th.no_grad():
        for k, p in m.named_parameters():
            fan_in = p.shape[1] if p.dim() == 2 else (p[0].numel() if p.dim() > 2 else 1)
            scale = 0.5 if k in ("pos_embed", "temp_embed") else (0.1 if p.dim() == 1 else fan_in ** -0.5)
            p.copy_(th.randn(p.shape, generator=g, dtype=th.float64).to(dtype) * scale)


def check_against_upstream():
    """Variant 1 with adaLN is upstream's model: the same weights must give the same output."""
    src = os.environ.get("LATTE_SRC")
    if not src:
        print("LATTE_SRC not set: skipping the check of variant 1 against upstream's latte.py")
        return
    sys.path.insert(0, os.path.join(src, "models"))
    import latte  # noqa: E402

    kw = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_frames=3, extras=2,
              num_classes=5)
    up = latte.Latte(**kw).double().eval()
    mine = LatteVariant(kw).double().eval()
    g = th.Generator().manual_seed(1)
    randomize(up, g, th.float64)
    missing = mine.load_state_dict(up.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys, missing
    latte.TimestepEmbedder.timestep_embedding = staticmethod(timestep_embedding_f64)
    x = th.randn(2, 3, 4, 8, 8, generator=g, dtype=th.float64)
    t, y = th.tensor([3.0, 700.0], dtype=th.float64), th.tensor([1, 4])
    with th.no_grad():
        err = (up(x, t, y) - mine(x, t, y)).abs().max().item()
    assert err < 1e-12, f"the re-implementation differs from upstream's variant 1 by {err}"
    print(f"variant 1 (adaLN) equals upstream's latte.py to {err:.1e}")


def main():
    check_against_upstream()
    configs = {}
    for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
        g = th.Generator().manual_seed(0)
        out = {}
        for name, (c, B) in CASES.items():
            configs[name] = c
            if dtype == th.float64 and name not in ("v3_adaln_odd", "v1_token_class", "v4_token"):
                continue
            m = LatteVariant(c).to(dtype).eval()
            randomize(m, g, dtype)
            s, F, C = c["input_size"], c["num_frames"], c["in_channels"]
            x = th.randn(B, F, C, s, s, generator=g, dtype=th.float64).to(dtype)
            t = (th.rand(B, generator=g, dtype=th.float64) * 999).to(dtype)
            y = None
            if c.get("extras", 1) == 2:
                y = th.randint(0, c["num_classes"], (B,), generator=g)
                out[f"{name}.in.y"] = y
            for k, v in m.state_dict().items():
                out[f"{name}.w.{k}"] = v
            out[f"{name}.in.x"], out[f"{name}.in.t"] = x, t
            traces = {}
            with th.no_grad():
                out[f"{name}.out"] = m(x, t, y, traces)
            for k, v in traces.items():
                out[f"{name}.trace.{k}"] = v
        write_fixture("latte_variants", suffix, out)
    write_configs("latte_variants", configs)


if __name__ == "__main__":
    main()
