#!/usr/bin/env python3
"""Writes tests/fixtures/vivit_f32.safetensors, vivit_f64.safetensors and vivit_configs.json.

ViViT (Arnab et al. 2021) has no PyTorch upstream (the official code is JAX, in scenic), so this
file is ditto's own PyTorch re-implementation, written from the paper's sec. 3 with plain torch
(no timm): both token embeddings and the four models, under the parameter names ditto uses. Where
ditto attends over strided rows, this code does what a PyTorch user would: it reshapes and
transposes the (b, t, s, d) tokens. Each case stores `name.w.*`, `name.in.x`, `name.out` and
per-module traces `name.trace.*`.

    /usr/bin/python3 tools/gen_vivit_fixtures.py
"""
import os
import re
import sys

import torch as th
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_common import run_traced, write_configs, write_fixture  # noqa: E402



def attention(q, k, v):
    """q, k, v: (..., heads, n, d) -> (..., heads, n, d), softmax(q k^T / sqrt(d)) v."""
    w = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return w.softmax(-1) @ v


class MSA(nn.Module):
    """Multi-head self-attention with a fused qkv projection (the ViT paper's, timm's layout)."""

    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def split(self, x):  # (S, n, D) -> 3 x (S, heads, n, d)
        S, n, D = x.shape
        return self.qkv(x).reshape(S, n, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)

    def merge(self, o):  # (S, heads, n, d) -> (S, n, D)
        S, h, n, d = o.shape
        return o.transpose(1, 2).reshape(S, n, h * d)

    def forward(self, x):
        q, k, v = self.split(x)
        return self.proj(self.merge(attention(q, k, v)))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Transformer encoder layer (ViT paper eq. 2-3): pre-norm MSA and MLP with residuals."""

    def __init__(self, c):
        super().__init__()
        D = c["embed_dim"]
        self.norm1, self.norm2 = nn.LayerNorm(D, eps=1e-6), nn.LayerNorm(D, eps=1e-6)
        self.attn = MSA(D, c["num_heads"], c.get("qkv_bias", True))
        self.mlp = Mlp(D, int(D * c.get("mlp_ratio", 4.0)), act_of(c))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def act_of(c):
    return nn.GELU(approximate="tanh" if c.get("act_layer") == "gelu_tanh" else "none")


class Encoder(nn.Module):
    """[cls,] tokens + positions, L layers, LayerNorm; pooled by the cls token or the mean."""

    def __init__(self, c, n, depth):
        super().__init__()
        D, self.cls = c["embed_dim"], c.get("classifier", "token") == "token"
        if self.cls:
            self.cls_token = nn.Parameter(th.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(th.zeros(1, n + self.cls, D))
        self.blocks = nn.ModuleList([Block(c) for _ in range(depth)])
        self.norm = nn.LayerNorm(D, eps=1e-6)

    def forward(self, x):  # (S, n, D) -> (S, D)
        if self.cls:
            x = th.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for b in self.blocks:
            x = b(x)
        x = self.norm(x)
        return x[:, 0] if self.cls else x.mean(1)


class FactorizedBlock(nn.Module):
    """Model 3 (paper eq. 7-ish): spatial MSA within each frame, temporal MSA across frames, MLP."""

    def __init__(self, c):
        super().__init__()
        D = c["embed_dim"]
        self.norm1, self.temporal_norm, self.norm2 = (nn.LayerNorm(D, eps=1e-6) for _ in range(3))
        self.attn = MSA(D, c["num_heads"], c.get("qkv_bias", True))
        self.temporal_attn = MSA(D, c["num_heads"], c.get("qkv_bias", True))
        self.mlp = Mlp(D, int(D * c.get("mlp_ratio", 4.0)), act_of(c))

    def forward(self, x, nt, ns):  # x: (B, nt * ns, D)
        B, N, D = x.shape
        xs = x.reshape(B * nt, ns, D)  # frames
        xs = xs + self.attn(self.norm1(xs))
        xt = xs.reshape(B, nt, ns, D).transpose(1, 2).reshape(B * ns, nt, D)  # positions over time
        xt = xt + self.temporal_attn(self.temporal_norm(xt))
        x = xt.reshape(B, ns, nt, D).transpose(1, 2).reshape(B, N, D)
        return x + self.mlp(self.norm2(x))


class FactorizedDotProductBlock(Block):
    """Model 4: half the heads attend within the frame (keys of the same t), half across frames
    (keys of the same spatial index); concatenated heads, one output projection."""

    def __init__(self, c, nt, ns):
        super().__init__(c)
        self.nt, self.ns = nt, ns
        self.attn.forward = self.factorized_attention

    def factorized_attention(self, x):  # (B, nt * ns, D)
        a, nt, ns = self.attn, self.nt, self.ns
        B, N, D = x.shape
        q, k, v = a.split(x)  # (B, H, N, d)
        H, d = q.shape[1], q.shape[3]
        grid = lambda z: z.reshape(B, H, nt, ns, d)  # noqa: E731
        qs, ks, vs = (grid(z)[:, : H // 2] for z in (q, k, v))  # spatial heads: (B, H/2, nt, ns, d)
        ys = attention(qs, ks, vs)
        qt, kt, vt = (grid(z)[:, H // 2 :].transpose(2, 3) for z in (q, k, v))  # temporal: (B, H/2, ns, nt, d)
        yt = attention(qt, kt, vt).transpose(2, 3)
        y = th.cat([ys, yt], dim=1).reshape(B, H, N, d)
        return a.proj(a.merge(y))


class ViViT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        D, C = c["embed_dim"], c.get("in_chans", 3)
        ph, pw = (c["patch_size"],) * 2 if isinstance(c["patch_size"], int) else c["patch_size"]
        H, W = (c["img_size"],) * 2 if isinstance(c["img_size"], int) else c["img_size"]
        self.uniform = c.get("embedding", "tubelet") == "uniform"
        tt = 1 if self.uniform else c.get("tubelet_size", 2)
        self.nt, self.ns = c["num_frames"] // tt, (H // ph) * (W // pw)
        if self.uniform:  # sec. 3.2: each frame embedded as ViT does
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv2d(C, D, (ph, pw), (ph, pw))
        else:  # tubelets: a 3-D convolution with kernel = stride
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv3d(C, D, (tt, ph, pw), (tt, ph, pw))
        self.model, depth = c.get("model", "spatio_temporal"), c.get("depth", 12)
        if self.model == "spatio_temporal":
            self.encoder = Encoder(c, self.nt * self.ns, depth)
            for k, v in list(self.encoder._parameters.items()) + list(self.encoder._modules.items()):
                setattr(self, k, v)  # names at the top level, as timm's ViT
            del self.encoder
        elif self.model == "factorized_encoder":
            self.spatial = Encoder(c, self.ns, depth)
            self.temporal = Encoder(c, self.nt, c.get("temporal_depth", 4))
        else:
            self.pos_embed = nn.Parameter(th.zeros(1, self.nt * self.ns, D))
            if self.model == "factorized_self_attention":
                self.blocks = nn.ModuleList([FactorizedBlock(c) for _ in range(depth)])
            else:
                self.blocks = nn.ModuleList([FactorizedDotProductBlock(c, self.nt, self.ns) for _ in range(depth)])
            self.norm = nn.LayerNorm(D, eps=1e-6)
        if c.get("num_classes", 400) > 0:
            self.head = nn.Linear(D, c.get("num_classes", 400))

    def embed(self, x):  # (B, C, T, H, W) -> (B, nt * ns, D), tokens in (t, h, w) order
        B = x.shape[0]
        if self.uniform:
            frames = x.transpose(1, 2).flatten(0, 1)  # (B T, C, H, W)
            e = self.patch_embed.proj(frames).flatten(2).transpose(1, 2)  # (B T, ns, D)
            return e.reshape(B, -1, e.shape[-1])
        return self.patch_embed.proj(x).flatten(2).transpose(1, 2)

    def forward(self, x):
        tokens = self.embed(x)
        B, D = tokens.shape[0], tokens.shape[-1]
        if self.model == "spatio_temporal":
            if "cls_token" in self._parameters:
                tokens = th.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
            t = tokens + self.pos_embed
            for b in self.blocks:
                t = b(t)
            t = self.norm(t)
            pooled = t[:, 0] if self.c.get("classifier", "token") == "token" else t.mean(1)
        elif self.model == "factorized_encoder":
            frames = self.spatial(tokens.reshape(B * self.nt, self.ns, D)).reshape(B, self.nt, D)
            pooled = self.temporal(frames)
        else:
            t = tokens + self.pos_embed
            for b in self.blocks:
                t = b(t, self.nt, self.ns) if isinstance(b, FactorizedBlock) else b(t)
            pooled = self.norm(t).mean(1)
        return self.head(pooled) if hasattr(self, "head") else pooled


CASES = {  # name: (config, batch)
    "st_tubelet_cls": (dict(model="spatio_temporal", num_frames=4, img_size=16, patch_size=8, tubelet_size=2, embed_dim=32,
                            depth=2, num_heads=4, num_classes=5), 2),
    "st_uniform_gap_rect": (dict(model="spatio_temporal", embedding="uniform", num_frames=3, img_size=[8, 12], patch_size=[4, 3],
                                 in_chans=2, embed_dim=24, depth=1, num_heads=3, num_classes=7, classifier="gap",
                                 act_layer="gelu_tanh", mlp_ratio=2.0), 2),
    "fe_cls": (dict(model="factorized_encoder", num_frames=6, img_size=8, patch_size=4, tubelet_size=3, embed_dim=16, depth=2,
                    temporal_depth=1, num_heads=2, num_classes=3), 2),
    "fe_gap_uniform_nohead": (dict(model="factorized_encoder", embedding="uniform", num_frames=3, img_size=8, patch_size=4,
                                   embed_dim=16, depth=1, temporal_depth=2, num_heads=4, num_classes=0, classifier="gap",
                                   qkv_bias=False), 1),
    "fsa": (dict(model="factorized_self_attention", num_frames=4, img_size=[12, 8], patch_size=4, tubelet_size=2, embed_dim=24,
                 depth=2, num_heads=3, num_classes=4, classifier="gap"), 2),
    "fdp": (dict(model="factorized_dot_product", num_frames=6, img_size=8, patch_size=4, tubelet_size=2, embed_dim=32, depth=2,
                 num_heads=4, num_classes=6, classifier="gap", mlp_ratio=3.0), 2),
    "fdp_uniform_2heads": (dict(model="factorized_dot_product", embedding="uniform", num_frames=5, img_size=8, patch_size=2,
                                embed_dim=16, depth=1, num_heads=2, num_classes=2, classifier="gap"), 1),
}

def main():
    configs = {}
    for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
        g = th.Generator().manual_seed(0)
        out = {}
        for name, (c, B) in CASES.items():
            configs[name] = c
            m = ViViT(c).to(dtype).eval()
            with th.no_grad():
                for k, p in m.named_parameters():
                    fan_in = p[0].numel() if p.dim() >= 2 and p.dim() != 3 else 1
                    scale = 0.5 if p.dim() == 3 else (0.1 if p.dim() == 1 else fan_in ** -0.5)  # tokens / biases / weights
                    p.copy_(th.randn(p.shape, generator=g, dtype=th.float64).to(dtype) * scale)
            H, W = (c["img_size"],) * 2 if isinstance(c["img_size"], int) else c["img_size"]
            x = th.randn(B, c.get("in_chans", 3), c["num_frames"], H, W, generator=g, dtype=th.float64).to(dtype)
            for k, v in m.state_dict().items():
                out[f"{name}.w.{k}"] = v
            out[f"{name}.in.x"] = x
            traced = re.compile(r"^((spatial\.|temporal\.)?blocks\.\d+|head)$")  # each block's output, the logits
            mods = [(k, mod) for k, mod in m.named_modules() if traced.match(k)]
            with th.no_grad():
                out[f"{name}.out"], traces = run_traced(mods, lambda: m(x))
            for k, v in traces.items():
                out[f"{name}.trace.{k}"] = v
        write_fixture("vivit", suffix, out)
    write_configs("vivit", configs)


if __name__ == "__main__":
    main()
