#!/usr/bin/env python3
"""Writes tests/fixtures/nn_f32.safetensors and nn_f64.safetensors: weights, inputs and outputs
of torch.nn / torch.nn.functional for every block ditto's nn/ layer implements, in float32 and
float64. Each case `name` stores `name.in.*` (inputs), `name.w.*` (weights, under PyTorch's
state-dict names) and `name.out`. Run with Debian's torch:

    /usr/bin/python3 tools/gen_nn_fixtures.py
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

torch.manual_seed(0)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def save(path, tensors):
    """A minimal safetensors writer (the format: u64 header length, JSON header, raw data)."""
    names = sorted(tensors)
    header, offset, blobs = {}, 0, []
    for n in names:
        a = tensors[n].detach().contiguous().numpy()
        dtype = {np.float32: "F32", np.float64: "F64", np.int64: "I64"}[a.dtype.type]
        b = a.tobytes()
        header[n] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


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
        gy, gx = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")
        # DiT: grid = meshgrid(grid_w, grid_h) so grid[0] runs along w; emb = concat(h-part from grid[0], w-part from grid[1])
        grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64)), axis=0)
        emb = np.concatenate([sincos_1d(dim // 2, grid[0]), sincos_1d(dim // 2, grid[1])], axis=1)
        t[f"pos2d_{gh}x{gw}_d{dim}"] = torch.from_numpy(emb).to(dtype)
        t[f"pos1d_{gh}_d{dim}"] = torch.from_numpy(sincos_1d(dim, np.arange(gh, dtype=np.float64))).to(dtype)
    return t


for dtype, name in ((torch.float32, "nn_f32.safetensors"), (torch.float64, "nn_f64.safetensors")):
    with torch.no_grad():
        tensors = cases(dtype)
    save(os.path.join(OUT, name), tensors)
    print(f"{len(tensors)} tensors -> tests/fixtures/{name}")
