#!/usr/bin/env python3
"""Writes tests/fixtures/dpm_solver.safetensors: U-ViT's DPM-Solver (dpm_solver_pytorch.py,
DPM_Solver.sample) run in float64 on a closed-form toy noise predictor, for the continuous
"linear" and "cosine" schedules and the "discrete" schedule of dpm_solver_pp.py (which
DPM_Solver only reaches through marginal_* and inverse_lambda). Run with a checkout of
baofff/U-ViT:

    UVIT_SRC=/path/to/U-ViT /usr/bin/python3 tools/gen_dpm_solver_fixtures.py
"""
import os
import sys

import torch as th

src = os.environ.get("UVIT_SRC")
if not src:
    sys.exit("set UVIT_SRC to a checkout of baofff/U-ViT (the folder that holds dpm_solver_pytorch.py)")
sys.path.insert(0, src)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
th.set_default_dtype(th.float64)
import dpm_solver_pp  # noqa: E402
import dpm_solver_pytorch as dps  # noqa: E402
from safetensors_writer import save  # noqa: E402


# Debian's torch 1.13 takes only numbers in linspace; upstream passes 0-d / 1-element tensors.
_linspace = th.linspace
th.linspace = lambda start, end, steps, **kw: _linspace(float(start), float(end), steps, **kw)


def toy_eps(x, t):
    """Element-wise, time-dependent; the C++ test evaluates the same formula."""
    t = t.reshape((-1,) + (1,) * (x.dim() - 1))
    return 0.5 * th.sin(x + 2.0 * t) + 0.3 * x * t


betas = th.linspace(1e-4, 0.02, 1000)  # DDPM's linear schedule, as the discrete case's model was trained
SCHEDULES = {
    "linear": dps.NoiseScheduleVP("linear"),
    "cosine": dps.NoiseScheduleVP("cosine"),
    "discrete": dpm_solver_pp.NoiseScheduleVP("discrete", betas=betas),
}
CASES = [  # name, schedule, sample() keyword arguments
    ("linear_fast20", "linear", dict(steps=20, eps=1e-4)),
    ("linear_fast10", "linear", dict(steps=10, eps=1e-3)),
    ("linear_fast12", "linear", dict(steps=12, eps=1e-3)),
    ("cosine_fast15", "cosine", dict(steps=15, eps=1e-3)),
    ("linear_order2_uniform", "linear", dict(steps=10, eps=1e-3, fast_version=False, order=2, skip_type="time_uniform")),
    ("cosine_order1_logsnr", "cosine", dict(steps=7, eps=1e-3, fast_version=False, order=1, skip_type="logSNR")),
    ("discrete_fast20", "discrete", dict(steps=20, eps=1e-3, T=1.0)),
    ("discrete_order3_logsnr", "discrete", dict(steps=9, eps=1e-3, T=1.0, fast_version=False, order=3)),
]

g = th.Generator().manual_seed(0)
out = {}
for name, sched, kwargs in CASES:
    ns = SCHEDULES[sched]
    x = th.randn(3, 2, 4, 4, generator=g)
    out[f"{name}.x_T"] = x
    out[f"{name}.sample"] = dps.DPM_Solver(toy_eps, ns).sample(x.clone(), **kwargs)
for sched, ns in SCHEDULES.items():
    t = th.tensor([1e-3, 0.01, 0.3, 0.5, 0.9, 0.99])
    out[f"{sched}.t"] = t
    out[f"{sched}.log_alpha"] = ns.marginal_log_mean_coeff(t)
    out[f"{sched}.lambda"] = ns.marginal_lambda(t)
    out[f"{sched}.inverse_lambda"] = ns.inverse_lambda(ns.marginal_lambda(t) + 0.25)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "dpm_solver.safetensors")
save(path, out)
print(f"{len(out)} tensors -> tests/fixtures/dpm_solver.safetensors")
