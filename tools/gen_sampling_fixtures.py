#!/usr/bin/env python3
"""Writes tests/fixtures/diffusion_steps_f32.safetensors and _f64: one step of DiT's diffusion
code (q_sample, q_posterior_mean_variance, p_mean_variance for every variance type, p_sample and
ddim_sample with a given noise, and training_losses for each loss type) on seeded inputs. float32 is upstream as it runs; float64 runs
the same upstream methods with _extract_into_tensor patched to keep float64 (upstream casts every
schedule coefficient to float32 there). Run with a checkout of facebookresearch/DiT:

    DIT_SRC=/path/to/DiT /usr/bin/python3 tools/gen_sampling_fixtures.py
"""
import os
import sys

import torch as th

src = os.environ.get("DIT_SRC")
if not src:
    sys.exit("set DIT_SRC to a checkout of facebookresearch/DiT (the folder that holds diffusion/)")
sys.path.insert(0, src)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diffusion import gaussian_diffusion as gd  # noqa: E402
from diffusion.respace import SpacedDiffusion, space_timesteps  # noqa: E402
from fixture_common import extract_f64  # noqa: E402
from safetensors_writer import save  # noqa: E402

upstream_extract = gd._extract_into_tensor


CASES = [  # name, schedule, respacing, mean type, var type, timesteps
    ("eps_learned_range", "linear", "", gd.ModelMeanType.EPSILON, gd.ModelVarType.LEARNED_RANGE, [0, 7, 999]),
    ("eps_fixed_small_ddim50", "linear", "ddim50", gd.ModelMeanType.EPSILON, gd.ModelVarType.FIXED_SMALL, [0, 1, 49]),
    ("x0_fixed_large_250", "squaredcos_cap_v2", "250", gd.ModelMeanType.START_X, gd.ModelVarType.FIXED_LARGE, [0, 100, 249]),
    ("eps_learned_cos", "squaredcos_cap_v2", "", gd.ModelMeanType.EPSILON, gd.ModelVarType.LEARNED, [3, 500, 998]),
]

for dtype, suffix in ((th.float32, "f32"), (th.float64, "f64")):
    gd._extract_into_tensor = upstream_extract if dtype == th.float32 else extract_f64
    g = th.Generator().manual_seed(0)
    out = {}
    for name, sched, respacing, mean_type, var_type, ts in CASES:
        betas = gd.get_named_beta_schedule(sched, 1000)
        d = SpacedDiffusion(use_timesteps=space_timesteps(1000, respacing if respacing else [1000]), betas=betas,
                            model_mean_type=mean_type, model_var_type=var_type, loss_type=gd.LossType.MSE)
        B, C = 3, 4
        x_start = th.randn(B, C, 4, 4, generator=g, dtype=th.float64).to(dtype)
        x_t = th.randn(B, C, 4, 4, generator=g, dtype=th.float64).to(dtype)
        noise = th.randn(B, C, 4, 4, generator=g, dtype=th.float64).to(dtype)
        learned = var_type in (gd.ModelVarType.LEARNED, gd.ModelVarType.LEARNED_RANGE)
        model_out = th.randn(B, 2 * C if learned else C, 4, 4, generator=g, dtype=th.float64).to(dtype)
        if var_type == gd.ModelVarType.LEARNED_RANGE:
            model_out[:, C:] = model_out[:, C:].tanh()  # the [-1, 1] range the model is trained to output
        t = th.tensor(ts, dtype=th.int64)
        model = lambda x, tt, **kw: model_out  # noqa: E731 (the model call itself is outside the step)
        out[f"{name}.x_start"], out[f"{name}.x_t"], out[f"{name}.noise"] = x_start, x_t, noise
        out[f"{name}.model_output"], out[f"{name}.t"] = model_out, t
        out[f"{name}.q_sample"] = d.q_sample(x_start, t, noise=noise)
        m, v, lv = d.q_posterior_mean_variance(x_start, x_t, t)
        out[f"{name}.q_posterior.mean"], out[f"{name}.q_posterior.variance"], out[f"{name}.q_posterior.log_variance"] = m, v, lv
        for clip in (False, True):
            r = d.p_mean_variance(model, x_t, t, clip_denoised=clip)
            for k in ("mean", "variance", "log_variance", "pred_xstart"):
                out[f"{name}.p_mean_variance.clip{int(clip)}.{k}"] = r[k]
        randn_like = th.randn_like
        th.randn_like = lambda x: noise  # the step's noise, given
        try:
            out[f"{name}.p_sample"] = d.p_sample(model, x_t, t, clip_denoised=False)["sample"]
            for eta in (0.0, 1.0):
                out[f"{name}.ddim_sample.eta{int(eta)}"] = d.ddim_sample(model, x_t, t, clip_denoised=True, eta=eta)["sample"]
        finally:
            th.randn_like = randn_like
        for loss_type in (gd.LossType.MSE, gd.LossType.RESCALED_MSE, gd.LossType.KL, gd.LossType.RESCALED_KL):
            d.loss_type = loss_type
            terms = d.training_losses(model, x_start, t, noise=noise)
            for k, v in terms.items():
                out[f"{name}.losses.{loss_type.name.lower()}.{k}"] = v
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", f"diffusion_steps_{suffix}.safetensors")
    save(path, out)
    print(f"{len(out)} tensors -> tests/fixtures/diffusion_steps_{suffix}.safetensors")
