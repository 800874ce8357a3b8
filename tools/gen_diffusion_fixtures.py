#!/usr/bin/env python3
"""Writes tests/fixtures/diffusion_schedules.safetensors: every float64 array of DiT's
GaussianDiffusion / SpacedDiffusion for several schedules and respacings, computed by the
upstream code itself. Run with a checkout of facebookresearch/DiT:

    DIT_SRC=/path/to/DiT /usr/bin/python3 tools/gen_diffusion_fixtures.py
"""
import os
import sys

import numpy as np

src = os.environ.get("DIT_SRC")
if not src:
    sys.exit("set DIT_SRC to a checkout of facebookresearch/DiT (the folder that holds diffusion/)")
sys.path.insert(0, src)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diffusion import gaussian_diffusion as gd  # noqa: E402
from diffusion.respace import SpacedDiffusion, space_timesteps  # noqa: E402
from safetensors_writer import save  # noqa: E402

ARRAYS = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next", "sqrt_alphas_cumprod",
          "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
          "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
          "posterior_mean_coef1", "posterior_mean_coef2"]
CASES = [("linear", 1000, ""), ("squaredcos_cap_v2", 1000, ""), ("linear", 100, ""), ("linear", 1000, "250"),
         ("linear", 1000, "ddim50"), ("linear", 1000, "10,15,20"), ("squaredcos_cap_v2", 1000, "ddim25"),
         ("linear", 1000, "7,3")]
out = {}
for name, steps, respacing in CASES:
    betas = gd.get_named_beta_schedule(name, steps)
    use = space_timesteps(steps, respacing if respacing else [steps])
    d = SpacedDiffusion(use_timesteps=use, betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
                        model_var_type=gd.ModelVarType.LEARNED_RANGE, loss_type=gd.LossType.MSE)
    key = f"{name}_{steps}_{respacing or 'full'}".replace(",", "-")
    for a in ARRAYS:
        out[f"{key}.{a}"] = np.asarray(getattr(d, a), dtype=np.float64)
    out[f"{key}.timestep_map"] = np.asarray(d.timestep_map, dtype=np.int64)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "diffusion_schedules.safetensors")
save(path, out)
print(f"{len(CASES)} schedules, {len(out)} arrays -> tests/fixtures/diffusion_schedules.safetensors")
