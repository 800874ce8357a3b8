#!/usr/bin/env python3
"""Writes tests/fixtures/dpmpp.safetensors: diffusers' DPMSolverMultistepScheduler (its defaults:
dpmsolver++, midpoint, linspace timesteps, lower_order_final, final sigma 0) stepping a
closed-form toy model, for orders 1-3, the three prediction types and two beta schedules.

The scheduler keeps its schedule in float32; here its alphas_cumprod and sigmas are replaced by
the float64 arrays of the same betas, so the fixture is the float64 algorithm (ditto's double path
must match it to 1e-10). Run with diffusers' src/ and huggingface_hub's src/ from early 2024
(which still run on Debian's torch 1.13) on PYTHONPATH:

    PYTHONPATH=/path/to/diffusers/src:/path/to/huggingface_hub/src /usr/bin/python3 tools/gen_dpmpp_fixtures.py
"""
import math
import os
import sys

import numpy as np
import torch as th

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
except ImportError as e:
    sys.exit(f"cannot import diffusers ({e}); put diffusers' src/ and huggingface_hub's src/ on PYTHONPATH")
from safetensors_writer import save  # noqa: E402


def betas_for(name):
    if name == "linear":
        return np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(1000)], dtype=np.float64)


def toy(x, t):
    """Element-wise in x, smooth in the integer timestep t; the C++ test evaluates the same formula."""
    return 0.5 * th.sin(x + t / 500.0) + 0.3 * x * (t / 1000.0)


CASES = [  # name, schedule, prediction type, order, steps
    ("linear_eps_2_20", "linear", "epsilon", 2, 20),
    ("linear_eps_2_10", "linear", "epsilon", 2, 10),
    ("linear_eps_1_7", "linear", "epsilon", 1, 7),
    ("linear_eps_3_20", "linear", "epsilon", 3, 20),
    ("linear_eps_3_12", "linear", "epsilon", 3, 12),
    ("cosine_x0_2_15", "squaredcos_cap_v2", "sample", 2, 15),
    ("cosine_v_2_25", "squaredcos_cap_v2", "v_prediction", 2, 25),
    ("linear_eps_2_1", "linear", "epsilon", 2, 1),
]

g = th.Generator().manual_seed(0)
out = {}
for name, sched, pred, order, steps in CASES:
    s = DPMSolverMultistepScheduler(num_train_timesteps=1000, solver_order=order, prediction_type=pred)
    ab = np.cumprod(1.0 - betas_for(sched))
    s.alphas_cumprod = th.from_numpy(ab)
    s.set_timesteps(steps)
    table = ((1 - ab) / ab) ** 0.5
    s.sigmas = th.from_numpy(np.concatenate([np.interp(s.timesteps.numpy(), np.arange(1000), table), [0.0]]))
    x = th.randn(3, 2, 4, 4, generator=g, dtype=th.float64)
    out[f"{name}.x_T"] = x
    out[f"{name}.timesteps"] = s.timesteps.clone()
    for t in s.timesteps:
        x = s.step(toy(x, float(t)), t, x).prev_sample
    out[f"{name}.sample"] = x
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "dpmpp.safetensors")
save(path, out)
print(f"{len(out)} tensors -> tests/fixtures/dpmpp.safetensors")
