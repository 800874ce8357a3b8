#!/usr/bin/env python3
"""Writes the reference gradients and optimizer steps for ditto's training code:

- tests/fixtures/grad_dit_f32.safetensors, grad_dit_f64.safetensors and grad_dit_configs.json:
  upstream DiT (facebookresearch/DiT models.py, with timm's PatchEmbed / Attention / Mlp) on three
  small configs, every parameter randomized as gen_dit_fixtures.py does (upstream's adaLN-Zero init
  would make most gradients 0). Each case `name` stores `name.w.*` (the state dict, pos_embed
  included), `name.in.{x,t,y}`, `name.out`, `name.grad_out` and `name.grad.<param>` /
  `name.grad.x`: the gradients of L = sum(out * grad_out) for every parameter with
  requires_grad (so not pos_embed) and the input x. "small" also stores DiT's
  training loss (create_diffusion(timestep_respacing=""), 1000 steps):
  `name.loss.{x_start,t,y,noise}`, `name.loss.{value,mse,vb}` (batch means, shape [1]),
  `name.loss.terms.{loss,mse,vb}` (per sample), `name.loss.{x_t,model_out}` (intermediates) and
  `name.loss.grad.<param>` (of the mean loss), at t = 0, 421, 999; the t = 0 sample's noise is
  the model's own prediction + 0.5 N(0, 1), as a trained model would see (see decoder_noise);
  "nosigma" has no sigma output and "odd"'s output (8 x 8, PatchEmbed drops the remainder of 10
  pixels) does not match its input, which upstream's training_losses refuses. The DiT cases'
  weights and inputs are float32 numbers in both files (the f64 case is the f32 one computed in
  double), so grad_dit_f64 stores `name.w.*` as F32, exactly; it holds "small" and "odd" only,
  to stay well under 2 MB.
- tests/fixtures/grad_nn_f32.safetensors and grad_nn_f64.safetensors: single blocks (torch.nn,
  timm's Attention / Mlp / PatchEmbed, DiT's embedders, DiTBlock and FinalLayer), each case
  `block` storing `block.in.*`, `block.w.*`, `block.out`, `block.grad_out`, `block.grad.<param>`
  and `block.grad.<input>` for the same L.
  The losses (cross_entropy, l1_loss, mse_loss, gaussian_kl) store their scalar as `out`.
- tests/fixtures/optim_f64.safetensors and optim_cases.json: torch.optim (Adam, AdamW, SGD,
  parameter groups, a LambdaLR schedule), clip_grad_norm_ and DiT train.py's EMA on three
  parameters a (3, 4), b (5,), c (2, 2, 3) over 10 steps of seeded gradients, in float64.

Every model runs in eval() (no dropout, no label drop). Inputs and weights are drawn in float64
and rounded to the run's dtype (to float32 for DiT in both), so the f32 and f64 files hold the
same case up to float32 rounding. float64 runs upstream's modules in double with two upstream
float32 casts patched out: TimestepEmbedder.timestep_embedding (fixes its features to float32,
which a double model cannot take) and diffusion's _extract_into_tensor (casts every schedule
coefficient to float32): a float64 re-derivation of the same computation. Run with DiT, timm (0.9.x, which runs on Debian's torch
1.13) and huggingface_hub's source on PYTHONPATH:

    PYTHONPATH=/path/to/timm:/path/to/huggingface_hub/src DIT_SRC=/path/to/DiT /usr/bin/python3 tools/gen_grad_fixtures.py
"""
import copy
import json
import math
import os
import sys
from collections import OrderedDict

import torch as th
import torch.nn as nn
import torch.nn.functional as F

src = os.environ.get("DIT_SRC")
if not src:
    sys.exit("set DIT_SRC to a checkout of facebookresearch/DiT (the folder that holds models.py and diffusion/)")
sys.path.insert(0, src)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402  (DiT's models.py; imports timm)
from diffusion import create_diffusion  # noqa: E402
from diffusion import gaussian_diffusion as gd  # noqa: E402
from fixture_common import FIXTURES, extract_f64, timestep_embedding_f64, write_configs, write_fixture  # noqa: E402
from timm.models.vision_transformer import Attention, Mlp, PatchEmbed  # noqa: E402

upstream_embedding = models.TimestepEmbedder.timestep_embedding
upstream_extract = gd._extract_into_tensor


def set_precision(dtype):
    """Upstream as it runs for float32; the two float32 casts patched out for float64."""
    f64 = dtype == th.float64
    models.TimestepEmbedder.timestep_embedding = staticmethod(timestep_embedding_f64 if f64 else upstream_embedding)
    gd._extract_into_tensor = extract_f64 if f64 else upstream_extract


def randn(g, dtype, *shape, scale=1.0):
    """Drawn in float64 and rounded to dtype, so both precisions get the same numbers up to rounding."""
    return (th.randn(tuple(shape), generator=g, dtype=th.float64) * scale).to(dtype)  # () for a scalar loss


def randomize(m, g):
    """gen_dit_fixtures.py's weights: N(0, 1) * (0.1 for 1-D tensors, fan_in ** -0.5 otherwise);
    pos_embed (DiT's fixed sin-cos table, requires_grad=False) keeps its value."""
    with th.no_grad():
        for k, p in m.named_parameters():
            if k == "pos_embed":
                continue
            fan_in = p.shape[1] if p.dim() == 2 else (p[0].numel() if p.dim() > 2 else 1)
            p.copy_(randn(g, p.dtype, *p.shape, scale=0.1 if p.dim() == 1 else fan_in ** -0.5))
    return m


def trainable(m):
    return [(k, p) for k, p in m.named_parameters() if p.requires_grad]


def backward(out, grad_out, named):
    """Gradients of L = sum(out * grad_out) with respect to each (name, tensor)."""
    grads = th.autograd.grad((out * grad_out).sum(), [v for _, v in named])
    return {k: gr for (k, _), gr in zip(named, grads)}


# ---------------------------------------------------------------------------------------------
# DiT: the whole model's gradients, and its training loss.

DIT_CASES = {  # name: constructor kwargs; batch 3 everywhere
    "small": dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10),
    "odd": dict(input_size=10, patch_size=4, in_channels=1, hidden_size=36, depth=1, num_heads=3, mlp_ratio=1.5,
                class_dropout_prob=0.25, num_classes=5),
    "nosigma": dict(input_size=8, patch_size=4, in_channels=3, hidden_size=24, depth=2, num_heads=3, mlp_ratio=2.5,
                    class_dropout_prob=0.0, num_classes=7, learn_sigma=False),
}
LOSS_T = [0, 421, 999]  # t = 0 takes the vb term's decoder-NLL branch, the others its KL
DECODER_NOISE = {}  # case: float32 loss noise, made by the float32 pass and reused by the float64 one


def decoder_noise(name, m, diffusion, x_start, t, y, noise, z):
    """The loss noise with the t = 0 sample's (t[0] == 0) set to the model's own prediction + z.
    At t = 0 the vb term is the decoder NLL, log(cdf(x0 + 1/255) - cdf(x0 - 1/255)) under a
    Gaussian of std ~0.01 whose mean is x0 + 0.01 (noise - eps): with a random model's eps many
    pixels sit several std off, where the two cdfs round to nearly the same float32, and the f32
    loss came out 1.5% off the f64 one (its gradients 15%). A trained model predicts the noise
    closely; this makes the random one do so (x_t hardly depends on the noise at t = 0, so three
    fixed-point steps settle it). Made once, in float32, so both files hold the same noise."""
    if name not in DECODER_NOISE:
        assert x_start.dtype == th.float32, "the float32 pass makes the noise (run it first)"
        noise = noise.clone()
        with th.no_grad():
            for _ in range(3):
                x_t = diffusion.q_sample(x_start, t, noise=noise)
                noise[0] = m(x_t, t, y)[0, : x_start.shape[1]] + z  # 1000 steps: no respacing of t
        DECODER_NOISE[name] = noise
    return DECODER_NOISE[name].to(x_start.dtype)


def dit_cases(dtype):
    """Both precisions run on the same numbers: weights and inputs are drawn in float64 and
    rounded to float32, so the f64 case is the exact-arithmetic reference of the f32 one. That
    lets the f64 file store `name.w.*` as F32 (exact; ditto's loader converts), which with
    "nosigma" left to the f32 file (as gen_dit_fixtures.py keeps its f64 file to two cases)
    keeps it well under 2 MB: DiT's 256-wide timestep features make t_embedder.mlp.0.weight
    (hidden x 256) the largest tensor of every case, three times over with the loss."""
    g = th.Generator().manual_seed(0)
    diffusion = create_diffusion(timestep_respacing="")  # 1000 linear steps, learned range sigma, MSE + vb
    out = {}
    B = 3

    def rnd(*shape, scale=1.0):
        return randn(g, th.float32, *shape, scale=scale).to(dtype)

    for name, kwargs in DIT_CASES.items():
        m = randomize(models.DiT(**kwargs).eval(), g).to(dtype)  # drawn as float32, then cast
        c, s = kwargs["in_channels"], kwargs["input_size"]
        rows = m.y_embedder.embedding_table.weight.shape[0]  # includes the null class when dropout > 0
        x = rnd(B, c, s, s).requires_grad_()
        t = (th.rand(B, generator=g, dtype=th.float64) * 999).float().to(dtype)
        t[-1] = 0.5  # fractional timesteps are allowed
        y = th.randint(0, rows, (B,), generator=g)
        if dtype == th.float64 and name == "nosigma":
            continue  # last case, so skipping it changes no other draw
        for k, v in m.state_dict().items():
            out[f"{name}.w.{k}"] = v.float()  # exact: the values are float32 numbers
        out[f"{name}.in.x"], out[f"{name}.in.t"], out[f"{name}.in.y"] = x.detach(), t, y

        o = m(x, t, y)
        grad_out = rnd(*o.shape)
        out[f"{name}.out"], out[f"{name}.grad_out"] = o.detach(), grad_out
        for k, v in backward(o, grad_out, trainable(m) + [("x", x)]).items():
            out[f"{name}.grad.{k}"] = v

        # The loss needs 2C output channels (learn_sigma, as DiT trains) and an output the size of
        # x: "odd" (10 pixels, patch 4) gives 8 x 8 (PatchEmbed drops the remainder), which
        # training_losses refuses (assert model_output.shape == (B, 2C, 10, 10)).
        if not m.learn_sigma or s % kwargs["patch_size"]:
            continue
        x_start = rnd(B, c, s, s, scale=0.7)  # mostly inside [-1, 1]: the decoder NLL's middle bins
        lt = th.tensor(LOSS_T, dtype=th.int64)
        ly = th.randint(0, kwargs["num_classes"], (B,), generator=g)
        noise = decoder_noise(name, m, diffusion, x_start, lt, ly, rnd(B, c, s, s), rnd(c, s, s, scale=0.5))
        terms = diffusion.training_losses(m, x_start, lt, model_kwargs=dict(y=ly), noise=noise)
        with th.no_grad():  # intermediates, for debugging a mismatch: the noised input and the model's output on it
            out[f"{name}.loss.x_t"] = diffusion.q_sample(x_start, lt, noise=noise)
            out[f"{name}.loss.model_out"] = m(out[f"{name}.loss.x_t"], lt, ly)
        loss = terms["loss"].mean()
        out[f"{name}.loss.x_start"], out[f"{name}.loss.t"] = x_start, lt
        out[f"{name}.loss.y"], out[f"{name}.loss.noise"] = ly, noise
        out[f"{name}.loss.value"] = loss.detach().reshape(1)
        for k in ("loss", "mse", "vb"):
            out[f"{name}.loss.terms.{k}"] = terms[k].detach()
        out[f"{name}.loss.mse"] = terms["mse"].detach().mean().reshape(1)
        out[f"{name}.loss.vb"] = terms["vb"].detach().mean().reshape(1)
        named = trainable(m)
        for k, v in zip([k for k, _ in named], th.autograd.grad(loss, [p for _, p in named])):
            out[f"{name}.loss.grad.{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------
# Single blocks.

def nn_cases(dtype):
    g = th.Generator().manual_seed(1)
    out = {}

    def case(name, fn, inputs, module=None, grad_inputs=None):
        """Stores inputs, the module's state dict, fn(**inputs), a random grad_out and the
        gradients of every trainable parameter and of each input in grad_inputs (all float inputs
        when None)."""
        if grad_inputs is None:
            grad_inputs = [k for k, v in inputs.items() if v.is_floating_point()]
        inputs = {k: (v.clone().requires_grad_() if k in grad_inputs else v) for k, v in inputs.items()}
        for k, v in inputs.items():
            out[f"{name}.in.{k}"] = v.detach()
        named = []
        if module is not None:
            module.eval()
            for k, v in module.state_dict().items():
                out[f"{name}.w.{k}"] = v
            named = trainable(module)
        o = fn(**inputs)
        grad_out = randn(g, dtype, *o.shape)
        out[f"{name}.out"], out[f"{name}.grad_out"] = o.detach(), grad_out
        for k, v in backward(o, grad_out, named + [(k, inputs[k]) for k in grad_inputs]).items():
            out[f"{name}.grad.{k}"] = v

    def rnd(*shape, scale=1.0):
        return randn(g, dtype, *shape, scale=scale)

    for name, bias in (("linear", True), ("linear_nobias", False)):
        m = randomize(nn.Linear(7, 5, bias=bias).to(dtype), g)
        case(name, lambda x, m=m: m(x), {"x": rnd(2, 3, 7)}, m)

    m = nn.LayerNorm(6, eps=1e-6).to(dtype)
    with th.no_grad():  # a norm's scale around 1, its shift around 0
        m.weight.copy_(1 + rnd(6, scale=0.2))
        m.bias.copy_(rnd(6, scale=0.1))
    case("layernorm", lambda x: m(x), {"x": rnd(4, 6, scale=2) + 0.5}, m)
    m2 = nn.LayerNorm(6, eps=1e-6, elementwise_affine=False).to(dtype)
    case("layernorm_noaffine", lambda x: m2(x), {"x": rnd(4, 6, scale=2) + 0.5}, m2)

    case("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), {"x": rnd(3, 5, scale=2)})
    case("gelu", lambda x: F.gelu(x), {"x": rnd(3, 5, scale=2)})
    case("silu", lambda x: F.silu(x), {"x": rnd(3, 5, scale=2)})
    case("softmax", lambda x: th.softmax(x, dim=-1), {"x": rnd(3, 7, scale=2)})

    # Attention written out (torch 1.13 has no scaled_dot_product_attention): softmax(q k^T / sqrt(d)) v.
    def attention(q, k, v, mask=None):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            s = s.masked_fill(mask == 0, float("-inf"))
        return th.softmax(s, dim=-1) @ v

    qkv = {"q": rnd(2, 3, 9, 4), "k": rnd(2, 3, 11, 4), "v": rnd(2, 3, 11, 5)}
    case("attention_math", attention, qkv)
    mask = th.rand(9, 11, generator=g) < 0.5  # True = may attend
    mask[:, 0] |= ~mask.any(dim=1)  # every row keeps at least one key
    mask[3] = False
    mask[3, 7] = True  # a row with a single key
    mask[5] = True  # and one with every key
    case("attention_masked", attention, {**qkv, "mask": mask.to(dtype)}, grad_inputs=["q", "k", "v"])

    m = randomize(Attention(dim=12, num_heads=3, qkv_bias=True).to(dtype), g)
    case("timm_attention", lambda x: m(x), {"x": rnd(2, 5, 12)}, m)
    mm = randomize(Mlp(12, hidden_features=20, act_layer=lambda: nn.GELU(approximate="tanh")).to(dtype), g)
    case("timm_mlp", lambda x: mm(x), {"x": rnd(2, 5, 12)}, mm)
    pe = randomize(PatchEmbed(8, 2, 3, 16).to(dtype), g)
    case("patch_embed", lambda x: pe(x), {"x": rnd(2, 3, 8, 8)}, pe)

    te = randomize(models.TimestepEmbedder(16, frequency_embedding_size=32).to(dtype), g)
    t = (th.rand(3, generator=g, dtype=th.float64) * 999).to(dtype)
    t[-1] = 0.5
    case("timestep_embedder", lambda t: te(t), {"t": t}, te, grad_inputs=[])
    le = randomize(models.LabelEmbedder(5, 8, 0.1).to(dtype), g)  # 6 rows: row 5 is the null class
    case("label_embedder", lambda y: le(y, False), {"y": th.tensor([3, 5, 3, 0])}, le)  # 3 twice: rows accumulate

    blk = randomize(models.DiTBlock(16, 2, mlp_ratio=3.0).to(dtype), g)
    case("dit_block", lambda x, c: blk(x, c), {"x": rnd(2, 5, 16), "c": rnd(2, 16)}, blk)
    fl = randomize(models.FinalLayer(16, 2, 6).to(dtype), g)
    case("final_layer", lambda x, c: fl(x, c), {"x": rnd(2, 5, 16), "c": rnd(2, 16)}, fl)

    # Losses (scalars; grad_out a random scale): cross-entropy with label smoothing and an
    # ignored row, L1 (with an exact tie: sign(0) = 0) and MSE, and the autoencoder's KL term
    # as latent-diffusion's DiagonalGaussianDistribution.kl() sums it, averaged over the batch.
    target = th.tensor([2, -100, 0, 4, 2])
    case("cross_entropy", lambda x, y: F.cross_entropy(x, y, label_smoothing=0.1), {"x": rnd(5, 6, scale=2), "y": target})
    case("cross_entropy_plain", lambda x, y: F.cross_entropy(x, y), {"x": rnd(4, 3, scale=2), "y": th.tensor([0, 2, 2, 1])})
    xr, tr = rnd(2, 3, 4), rnd(2, 3, 4)
    tr[0, 1, 2] = xr[0, 1, 2]
    case("l1_loss", lambda x, target: F.l1_loss(x, target), {"x": xr, "target": tr}, grad_inputs=["x"])
    case("mse_loss", lambda x, target: F.mse_loss(x, target), {"x": rnd(2, 3, 4), "target": rnd(2, 3, 4)}, grad_inputs=["x"])

    def kl(mean, logvar):  # 0.5 * sum(mean^2 + var - 1 - logvar, dim=[1, 2, 3]), then sum / B
        return (0.5 * th.sum(mean.pow(2) + th.exp(logvar) - 1.0 - logvar, dim=[1, 2, 3])).sum() / mean.shape[0]
    case("gaussian_kl", kl, {"mean": rnd(3, 2, 4, 4), "logvar": rnd(3, 2, 4, 4)})
    return out


# ---------------------------------------------------------------------------------------------
# Optimizers, gradient clipping and the EMA, in float64.

SHAPES = OrderedDict(a=(3, 4), b=(5,), c=(2, 2, 3))
STEPS = 10


class Params(nn.Module):
    """The three parameters as a module, so named_parameters (the EMA) and clip_grad_norm_ see them."""

    def __init__(self, p0):
        super().__init__()
        for k, v in p0.items():
            setattr(self, k, nn.Parameter(v.clone()))


@th.no_grad()
def update_ema(ema_model, model, decay=0.9999):
    """DiT train.py's update_ema (train.py itself imports diffusers and torchvision's ImageFolder,
    so it is restated here): ema = decay * ema + (1 - decay) * param over named_parameters."""
    ema_params = OrderedDict(ema_model.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)


def warmup_cosine(s):
    """Linear warm-up over 3 steps, then cosine decay to 0 at step 10."""
    return (s + 1) / 3 if s < 3 else 0.5 * (1 + math.cos(math.pi * (s - 3) / 7))


OPTIM_CASES = {  # name: (torch.optim class, kwargs or None, param groups or None, lr lambda or None)
    "adamw": (th.optim.AdamW, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, amsgrad=False), None, None),
    "adamw_dit": (th.optim.AdamW, dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False), None, None),
    "adam": (th.optim.Adam, dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=False), None, None),
    "sgd": (th.optim.SGD, dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False), None, None),
    "sgd_momentum": (th.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False), None, None),
    "sgd_nesterov": (th.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True), None, None),
    "adamw_groups": (th.optim.AdamW, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, amsgrad=False),
                     [dict(params=["a", "c"], weight_decay=0.1, lr=1e-2), dict(params=["b"], weight_decay=0.0, lr=5e-3)], None),
    "adamw_cosine": (th.optim.AdamW, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False), None,
                     warmup_cosine),
}


def optim_cases():
    g = th.Generator().manual_seed(2)
    p0 = {k: th.randn(*s, generator=g, dtype=th.float64) for k, s in SHAPES.items()}
    grads = [{k: th.randn(*s, generator=g, dtype=th.float64) for k, s in SHAPES.items()} for _ in range(STEPS)]
    out, cases = {}, {}

    def record_inputs(name):
        for k in SHAPES:
            out[f"{name}.p0.{k}"] = p0[k]
            for s in range(STEPS):
                out[f"{name}.grad.{s}.{k}"] = grads[s][k]

    for name, (cls, kwargs, groups, lr_lambda) in OPTIM_CASES.items():
        model = Params(p0)
        params = dict(model.named_parameters())
        if groups is None:
            opt = cls(model.parameters(), **kwargs)
        else:  # per-group values override the constructor's defaults
            opt = cls([{**grp, "params": [params[k] for k in grp["params"]]} for grp in groups], **kwargs)
        sched = th.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda else None
        record_inputs(name)
        lrs = []
        for s in range(STEPS):
            lrs.append(opt.param_groups[0]["lr"])
            for k, p in params.items():
                p.grad = grads[s][k].clone()
            opt.step()
            if sched:
                sched.step()
            for k, p in params.items():
                out[f"{name}.p.{s}.{k}"] = p.detach().clone()
        state_keys = ["exp_avg", "exp_avg_sq"] if cls in (th.optim.Adam, th.optim.AdamW) else (
            ["momentum_buffer"] if kwargs["momentum"] else [])
        for sk in state_keys:
            for k, p in params.items():
                out[f"{name}.{sk}.{STEPS - 1}.{k}"] = opt.state[p][sk]
        cases[name] = {"optimizer": cls.__name__, "args": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
                       "steps": STEPS}
        if groups:
            cases[name]["param_groups"] = groups
        if sched:
            out[f"{name}.lr"] = th.tensor(lrs, dtype=th.float64)
            cases[name]["lr_lambda"] = ("LambdaLR factor of the base lr at step s (0-based, the lr used by step s): "
                                        "(s + 1) / 3 for s < 3, else 0.5 * (1 + cos(pi * (s - 3) / 7)); "
                                        "lr(s) is recorded as adamw_cosine.lr")

    # clip_grad_norm_ on the step-0 gradients: total_norm (before clipping) and the clipped grads.
    # torch scales by max_norm / (total_norm + 1e-6) when that is below 1.
    for name, max_norm, norm_type in (("clip", 0.5, 2.0), ("clip_inf", 0.1, math.inf)):
        model = Params(p0)
        for k, p in model.named_parameters():
            p.grad = grads[0][k].clone()
            out[f"{name}.in.{k}"] = grads[0][k]
        total = th.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm, norm_type=norm_type)
        out[f"{name}.total_norm"] = total.detach().reshape(1)
        for k, p in model.named_parameters():
            out[f"{name}.grad.{k}"] = p.grad
        cases[name] = {"function": "clip_grad_norm_", "args": {"max_norm": max_norm,
                       "norm_type": "inf" if math.isinf(norm_type) else norm_type},
                       "note": "gradients are the step-0 ones (also stored as <case>.in.<k>); clip coefficient max_norm / (total_norm + 1e-6), clamped to 1"}

    # DiT train.py's EMA: ema = deepcopy(model); update_ema(ema, model, decay=0) once; then after
    # every optimizer step update_ema(ema, model). DiT uses decay 0.9999; 0.9 makes 10 steps visible.
    decay = 0.9
    model = Params(p0)
    ema = copy.deepcopy(model).requires_grad_(False)  # train.py: requires_grad(ema, False)
    update_ema(ema, model, decay=0)
    opt = th.optim.SGD(model.parameters(), lr=0.1)
    record_inputs("ema")
    for s in range(STEPS):
        for k, p in model.named_parameters():
            p.grad = grads[s][k].clone()
        opt.step()
        update_ema(ema, model, decay=decay)
        for (k, p), (_, e) in zip(model.named_parameters(), ema.named_parameters()):
            out[f"ema.model.{s}.{k}"] = p.detach().clone()
            out[f"ema.p.{s}.{k}"] = e.detach().clone()
    out["ema.decay"] = th.tensor([decay], dtype=th.float64)
    cases["ema"] = {"optimizer": "SGD", "args": {"lr": 0.1}, "steps": STEPS, "decay": decay,
                    "note": "ema.p.<step>.<k>: the EMA after step <step>; ema.model.<step>.<k>: the SGD parameters; "
                            "ema starts as a copy of p0 (update_ema with decay 0)"}
    return out, cases


if __name__ == "__main__":
    for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
        set_precision(dtype)
        write_fixture("grad_dit", suffix, dit_cases(dtype))
        write_fixture("grad_nn", suffix, nn_cases(dtype))
    set_precision(th.float32)
    write_configs("grad_dit", DIT_CASES)
    tensors, cases = optim_cases()
    write_fixture("optim", "f64", tensors)
    with open(os.path.join(FIXTURES, "optim_cases.json"), "w") as f:
        json.dump(cases, f, indent=1, sort_keys=True)
        f.write("\n")
    print("optim_cases.json")
