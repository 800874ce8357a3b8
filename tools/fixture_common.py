"""Shared by the fixture generators: deterministic weights (the same formula in Python, here, and
C++, tests/test_models.cpp hash_weights, so a fixture can hold a model's outputs without its
weights), float64 timestep features, forward hooks that record each module's output, and the
writers of tests/fixtures/<model>_<suffix>.safetensors and <model>_configs.json."""
import json
import math
import os

import numpy as np
import torch as th

from safetensors_writer import save

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def hash_weights(name, shape):
    """value[i] = u * scale, u in [-1, 1) from a 32-bit hash of (name, i); scale: 1 + 0.2 u for a
    1-D weight (norm scales), 0.1 for other 1-D tensors, fan_in ** -0.5 for matrices / kernels."""
    h0 = 2166136261
    for ch in name.encode():
        h0 = ((h0 ^ ch) * 16777619) & 0xFFFFFFFF
    n = int(np.prod(shape))
    h = (np.uint64(h0) + np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)
    for shift, mul in ((15, 0x2C1B3C6D), (12, 0x297A2D39)):
        h ^= h >> np.uint64(shift)
        h = (h * np.uint64(mul)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    u = (h >> np.uint64(8)).astype(np.float64) * 2.0 ** -23 - 1.0
    if len(shape) == 1:
        v = 1 + 0.2 * u if name.endswith("weight") else 0.1 * u
    else:
        v = u * float(np.prod(shape[1:])) ** -0.5
    return th.from_numpy(v.reshape(shape))


def timestep_embedding_f64(t, dim, max_period=10000):
    """DiT / U-ViT / ADM / Latte's sinusoidal timestep features (cos first), in float64: upstream
    fixes them to float32, which a double model cannot take (the float64 fixtures' re-derivation)."""
    import math

    half = dim // 2
    freqs = th.exp(-math.log(max_period) * th.arange(start=0, end=half, dtype=th.float64) / half)
    args = t[:, None].double() * freqs[None]
    emb = th.cat([th.cos(args), th.sin(args)], dim=-1)
    if dim % 2:
        emb = th.cat([emb, th.zeros_like(emb[:, :1])], dim=-1)
    return emb


def run_traced(modules, fn):
    """Runs fn() with a forward hook on each (name, module); returns fn's result and
    {name: that module's output}."""
    traces = {}
    hooks = [mod.register_forward_hook(lambda _m, _i, o, key=key: traces.__setitem__(key, o)) for key, mod in modules]
    try:
        result = fn()
    finally:
        for h in hooks:
            h.remove()
    return result, traces


def qkv_attention_f64(self, qkv, legacy):
    """guided-diffusion's QKVAttention(Legacy).forward with the softmax in the input's dtype (upstream
    fixes float32 there), for float64 re-derivations."""
    bs, width, length = qkv.shape
    ch = width // (3 * self.n_heads)
    if legacy:
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
    else:
        q, k, v = (z.reshape(bs * self.n_heads, ch, length) for z in qkv.chunk(3, dim=1))
    weight = th.softmax(th.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
    return th.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


def write_fixture(model, suffix, tensors):
    """tests/fixtures/{model}_{suffix}.safetensors."""
    save(os.path.join(FIXTURES, f"{model}_{suffix}.safetensors"), tensors)
    print(f"{len(tensors)} tensors -> tests/fixtures/{model}_{suffix}.safetensors")


def write_configs(model, configs):
    """tests/fixtures/{model}_configs.json, sorted and indented as committed."""
    with open(os.path.join(FIXTURES, f"{model}_configs.json"), "w") as f:
        json.dump(configs, f, indent=1, sort_keys=True)
        f.write("\n")


def extract_f64(arr, timesteps, broadcast_shape):
    """DiT diffusion's _extract_into_tensor without its .float(): the coefficients stay float64
    (the float64 fixtures patch it in)."""
    res = th.from_numpy(arr)[timesteps].to(th.float64)
    while len(res.shape) < len(broadcast_shape):
        res = res[..., None]
    return res + th.zeros(broadcast_shape, dtype=th.float64)


def store_autograd(out, name, o, grad_out, m, x):
    """Stores `name.out`, `name.grad_out` and `name.grad.<k>`: the gradients of
    L = sum(o * grad_out) for every parameter of m with requires_grad (zeros for one the call never
    reaches, as ditto-forward --backward gives it) and for the input x (`name.grad.x`)."""
    out[f"{name}.out"], out[f"{name}.grad_out"] = o.detach(), grad_out
    named = [(k, p) for k, p in m.named_parameters() if p.requires_grad] + [("x", x)]
    grads = th.autograd.grad((o * grad_out).sum(), [v for _, v in named], allow_unused=True)
    for (k, v), gr in zip(named, grads):
        out[f"{name}.grad.{k}"] = th.zeros_like(v) if gr is None else gr


def store_grad(out, name, key, gr, dtype, whole, head=64):
    """Stores the gradient `gr` of `key` in case `name`: whole (`name.grad.<key>`) up to `whole`
    values, else as a sketch the test recomputes from its own gradient: `.head` (the first `head`
    values), `.absmax` (max |g|, [1]) and `.dot` (float64 sum g * r with
    r = hash_weights("sketch." + key) in the run's dtype, [1]), so every element counts."""
    if gr.numel() <= whole:
        out[f"{name}.grad.{key}"] = gr
        return
    r = hash_weights("sketch." + key, list(gr.shape)).to(dtype)
    out[f"{name}.grad.{key}.head"] = gr.reshape(-1)[:head].clone()
    out[f"{name}.grad.{key}.absmax"] = gr.abs().max().reshape(1)
    out[f"{name}.grad.{key}.dot"] = (gr.double() * r.double()).sum().reshape(1)
