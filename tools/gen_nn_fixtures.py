#!/usr/bin/env python3
"""Writes tests/fixtures/nn_f32.safetensors and nn_f64.safetensors: weights, inputs and outputs
of torch.nn / torch.nn.functional for every block ditto's nn/ layer implements, in float32 and
float64. Each case `name` stores `name.in.*` (inputs), `name.w.*` (weights, under PyTorch's
state-dict names) and `name.out`. Run with Debian's torch:

    /usr/bin/python3 tools/gen_nn_fixtures.py
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_writer import save  # noqa: E402

torch.manual_seed(0)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def cases(dtype):
    t = {}
    g = torch.Generator().manual_seed(1)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    def module(name, m, inputs, out):
        for k, v in m.state_dict().items():
            t[f"{name}.w.{k}"] = v
        for k, v in inputs.items():
            t[f"{name}.in.{k}"] = v
        t[f"{name}.out"] = out

    def randomize(m):
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(rnd(*p.shape, scale=0.5))
        return m.to(dtype)

    x = rnd(2, 5, 12)
    for bias in (True, False):
        m = randomize(torch.nn.Linear(12, 7, bias=bias).to(dtype))
        module(f"linear_bias{int(bias)}", m, {"x": x}, m(x))
    for affine in (True, False):
        m = torch.nn.LayerNorm(12, eps=1e-6, elementwise_affine=affine).to(dtype)
        if affine:
            randomize(m)
        xs = x * 3 + 1
        module(f"layernorm_affine{int(affine)}", m, {"x": xs}, m(xs))
    for groups, affine in ((4, True), (2, False), (8, True)):
        m = torch.nn.GroupNorm(groups, 8, eps=1e-5, affine=affine).to(dtype)
        if affine:
            randomize(m)
        xi = rnd(2, 8, 5, 3) * 2 + 0.5
        module(f"groupnorm_g{groups}_affine{int(affine)}", m, {"x": xi}, m(xi))
    w = rnd(12, scale=0.5) + 1
    rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w  # RMSNorm (LLaMA / Latte form)
    t["rmsnorm.w.weight"], t["rmsnorm.in.x"], t["rmsnorm.out"] = w, x, rms
    a = rnd(3, 17, scale=3)
    t["act.in.x"] = a
    t["act.gelu"] = F.gelu(a)
    t["act.gelu_tanh"] = F.gelu(a, approximate="tanh")
    t["act.silu"] = F.silu(a)
    t["act.softmax"] = F.softmax(a, dim=-1)
    # timm Mlp: fc1 -> act -> fc2 (DiT uses GELU(approximate="tanh"))
    fc1, fc2 = randomize(torch.nn.Linear(12, 20).to(dtype)), randomize(torch.nn.Linear(20, 12).to(dtype))
    mlp = torch.nn.Sequential()
    mlp.fc1, mlp.fc2 = fc1, fc2
    module("mlp", mlp, {"x": x}, fc2(F.gelu(fc1(x), approximate="tanh")))
    emb = randomize(torch.nn.Embedding(11, 6).to(dtype))
    idx = torch.tensor([[0, 3, 10], [7, 7, 1]], dtype=torch.int64)
    module("embedding", emb, {"idx": idx}, emb(idx))
    # timm Attention: fused qkv, heads, optional q/k LayerNorm over head_dim, proj
    for qk_norm in (False, True):
        dim, heads = 16, 4
        att = torch.nn.Module()
        att.qkv = torch.nn.Linear(dim, 3 * dim, bias=True)
        att.proj = torch.nn.Linear(dim, dim)
        if qk_norm:
            att.q_norm = torch.nn.LayerNorm(dim // heads, eps=1e-6)
            att.k_norm = torch.nn.LayerNorm(dim // heads, eps=1e-6)
        randomize(att)
        xa = rnd(2, 9, dim)
        B, N, C = xa.shape
        qkv = att.qkv(xa).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if qk_norm:
            q, k = att.q_norm(q), att.k_norm(k)
        s = (q * (C // heads) ** -0.5) @ k.transpose(-2, -1)
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
        module(f"attention_qknorm{int(qk_norm)}", att, {"x": xa}, att.proj(o))
    # the attention core alone at a length that spans several blocks, with a key mask
    q, k, v = rnd(2, 3, 70, 8), rnd(2, 3, 70, 8), rnd(2, 3, 70, 8)
    mask = torch.rand(2, 1, 70, 70, generator=g) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    t["sdpa.in.q"], t["sdpa.in.k"], t["sdpa.in.v"] = q, k, v
    t["sdpa.in.mask"] = mask.to(torch.int64)
    t["sdpa.out"] = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1) @ v
    t["sdpa.out_masked"] = ((q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~mask, float("-inf"))).softmax(-1) @ v
    # cross-attention: queries from x (B, N, C), keys/values from context (B, M, Cc)
    ca = torch.nn.Module()
    ca.q = torch.nn.Linear(16, 16)
    ca.kv = torch.nn.Linear(10, 32)
    ca.proj = torch.nn.Linear(16, 16)
    randomize(ca)
    xq, ctx = rnd(2, 6, 16), rnd(2, 5, 10)
    qh = ca.q(xq).reshape(2, 6, 4, 4).transpose(1, 2)
    kv = ca.kv(ctx).reshape(2, 5, 2, 4, 4).permute(2, 0, 3, 1, 4)
    o = ((qh @ kv[0].transpose(-1, -2)) / 2.0).softmax(-1) @ kv[1]
    module("cross_attention", ca, {"x": xq, "context": ctx}, ca.proj(o.transpose(1, 2).reshape(2, 6, 16)))
    # DiT TimestepEmbedder.timestep_embedding (cos first), and the sin-first order; odd dim too
    ts = torch.tensor([0.0, 1.0, 17.5, 999.0], dtype=torch.float64)
    for dim in (8, 9):
        half = dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
        args = ts[:, None] * freqs[None]
        cos_first = torch.cat([torch.cos(args), torch.sin(args)], -1)
        sin_first = torch.cat([torch.sin(args), torch.cos(args)], -1)
        if dim % 2:
            cos_first = torch.cat([cos_first, torch.zeros_like(cos_first[:, :1])], -1)
            sin_first = torch.cat([sin_first, torch.zeros_like(sin_first[:, :1])], -1)
        t[f"timestep_dim{dim}.in.t"] = ts.to(dtype)
        t[f"timestep_dim{dim}.cos_first"] = cos_first.to(dtype)
        t[f"timestep_dim{dim}.sin_first"] = sin_first.to(dtype)
    # MAE / DiT 2-D sin-cos position embedding (numpy, float64), grid 3 x 4 via 1-D on each axis
    def sincos_1d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    for gh, gw, dim in ((4, 4, 16), (3, 5, 8)):
        # DiT: grid = meshgrid(grid_w, grid_h) so grid[0] runs along w; emb = concat(h-part from grid[0], w-part from grid[1])
        grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64)), axis=0)
        emb = np.concatenate([sincos_1d(dim // 2, grid[0]), sincos_1d(dim // 2, grid[1])], axis=1)
        t[f"pos2d_{gh}x{gw}_d{dim}"] = torch.from_numpy(emb).to(dtype)
        t[f"pos1d_{gh}_d{dim}"] = torch.from_numpy(sincos_1d(dim, np.arange(gh, dtype=np.float64))).to(dtype)
    # convolutions: stride, asymmetric padding (F.pad then conv), groups; Conv1d k=1; Conv3d
    for name, (cin, cout, k, stride, pad, groups, hw) in {
        "conv2d_3x3": (4, 6, 3, 1, (1, 1, 1, 1), 1, (7, 5)),
        "conv2d_s2_asym": (4, 6, 3, 2, (0, 1, 0, 1), 1, (8, 9)),  # (left, right, top, bottom)
        "conv2d_groups": (4, 6, 3, 1, (1, 1, 1, 1), 2, (5, 6)),
        "conv2d_1x1": (8, 5, 1, 1, (0, 0, 0, 0), 1, (4, 3)),
        "conv2d_k4_s4": (3, 8, 4, 4, (0, 0, 0, 0), 1, (8, 12)),
    }.items():
        conv = randomize(torch.nn.Conv2d(cin, cout, k, stride=stride, groups=groups).to(dtype))
        xc = rnd(2, cin, *hw)
        module(name, conv, {"x": xc}, conv(F.pad(xc, pad)))
    c1 = randomize(torch.nn.Conv1d(6, 9, 1).to(dtype))
    x1 = rnd(2, 6, 7)
    module("conv1d_k1", c1, {"x": x1}, c1(x1))
    c3 = randomize(torch.nn.Conv3d(3, 5, (2, 3, 3), stride=(1, 2, 1), padding=(1, 1, 0)).to(dtype))
    x3 = rnd(2, 3, 4, 6, 5)
    module("conv3d", c3, {"x": x3}, c3(x3))
    xi = rnd(2, 3, 5, 7)
    t["upsample.in.x"], t["upsample.out"] = xi, F.interpolate(xi, scale_factor=2, mode="nearest")
    t["avgpool.in.x"], t["avgpool.out"] = xi, F.avg_pool2d(xi, kernel_size=2, stride=2)
    # patch embedding (DiT x_embedder / timm PatchEmbed: Conv2d kernel = stride = patch, then flatten)
    pe = randomize(torch.nn.Conv2d(4, 12, 2, stride=2).to(dtype))
    xp = rnd(2, 4, 8, 6)
    tok = pe(xp).flatten(2).transpose(1, 2)
    t["patch_embed.in.x"] = xp
    t["patch_embed.w.proj.weight"], t["patch_embed.w.proj.bias"] = pe.weight, pe.bias
    t["patch_embed.out"] = tok
    tb = randomize(torch.nn.Conv3d(3, 10, (2, 2, 2), stride=(2, 2, 2)).to(dtype))
    xv = rnd(2, 3, 4, 6, 4)
    t["tubelet_embed.in.x"] = xv
    t["tubelet_embed.w.proj.weight"], t["tubelet_embed.w.proj.bias"] = tb.weight, tb.bias
    t["tubelet_embed.out"] = tb(xv).flatten(2).transpose(1, 2)
    # DiT unpatchify: (N, T, p*p*C) -> (N, C, H, W) with h = w = sqrt(T)
    xu = rnd(2, 9, 2 * 2 * 3)
    n, p, c, h = 2, 2, 3, 3
    xr = xu.reshape(n, h, h, p, p, c)
    t["unpatchify.in.x"] = xu
    t["unpatchify.out"] = torch.einsum("nhwpqc->nchpwq", xr).reshape(n, c, h * p, h * p)
    # rotary embeddings: interleaved pairs (RoFormer / rotary-embedding-torch) and half split (GPT-NeoX)
    xr1 = rnd(2, 3, 7, 8)  # (B, H, N, D)
    pos = torch.arange(7, dtype=torch.float64)
    inv = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    ang = pos[:, None] * inv[None]  # (N, D/2)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    x_even, x_odd = xr1[..., 0::2], xr1[..., 1::2]
    inter = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], -1).flatten(-2)
    x1h, x2h = xr1[..., :4], xr1[..., 4:]
    half = torch.cat([x1h * cos - x2h * sin, x2h * cos + x1h * sin], -1)
    t["rope.in.x"], t["rope.interleaved"], t["rope.half"] = xr1, inter, half
    # 3-D rope over a (t, h, w) grid of 2 x 3 x 2 tokens, head dim 12 split 4 / 4 / 4 (interleaved)
    xg = rnd(1, 2, 12, 12)
    grid = torch.stack(torch.meshgrid(torch.arange(2.), torch.arange(3.), torch.arange(2.), indexing="ij"), -1).reshape(-1, 3).to(torch.float64)
    parts = []
    for axis in range(3):
        xs = xg[..., axis * 4:(axis + 1) * 4]
        inv = 1.0 / (10000 ** (torch.arange(0, 4, 2, dtype=torch.float64) / 4))
        ang = grid[:, axis:axis + 1] * inv[None]
        cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
        e, o = xs[..., 0::2], xs[..., 1::2]
        parts.append(torch.stack([e * cos - o * sin, e * sin + o * cos], -1).flatten(-2))
    t["rope3d.in.x"], t["rope3d.out"] = xg, torch.cat(parts, -1)
    # MAE-ST / VideoMAE 3-D table: [temporal (D/4) | spatial (3D/4)] for tokens in (t, h, w) order
    for (tt, gh, gw, dim) in ((3, 2, 4, 32),):
        gridw = np.stack(np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64)), axis=0)
        ds, dt = dim // 4 * 3, dim // 4
        spatial = np.concatenate([sincos_1d(ds // 2, gridw[0]), sincos_1d(ds // 2, gridw[1])], axis=1)
        temporal = sincos_1d(dt, np.arange(tt, dtype=np.float64))
        emb = np.concatenate([np.repeat(temporal[:, None, :], gh * gw, axis=1),
                              np.repeat(spatial[None, :, :], tt, axis=0)], axis=-1).reshape(-1, dim)
        t[f"pos3d_{tt}x{gh}x{gw}_d{dim}"] = torch.from_numpy(emb).to(dtype)
    # the attention module with a mask (same weights as attention_qknorm0)
    att = torch.nn.Module()
    att.qkv, att.proj = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)
    randomize(att)
    xa = rnd(2, 9, 16)
    am = torch.rand(2, 1, 9, 9, generator=g) > 0.4
    am[..., 0] = True
    qkv = att.qkv(xa).reshape(2, 9, 3, 4, 4).permute(2, 0, 3, 1, 4)
    s_ = (qkv[0] @ qkv[1].transpose(-2, -1)) * 0.5
    o = (s_.masked_fill(~am, float("-inf")).softmax(-1) @ qkv[2]).transpose(1, 2).reshape(2, 9, 16)
    module("attention_masked", att, {"x": xa, "mask": am.to(torch.int64)}, att.proj(o))
    return t


for dtype, name in ((torch.float32, "nn_f32.safetensors"), (torch.float64, "nn_f64.safetensors")):
    with torch.no_grad():
        tensors = cases(dtype)
    save(os.path.join(OUT, name), tensors)
    print(f"{len(tensors)} tensors -> tests/fixtures/{name}")
