#!/usr/bin/env python3
"""The PyTorch column of docs/performance.md's training table: one step of upstream DiT
(models.py) with DiT's own training_losses (learned sigma: mse + vb) and torch.optim.AdamW, on the
inputs of train_step.cpp.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=2 DIT_SRC=... PYTHONPATH=timm:huggingface_hub/src \
        /usr/bin/python3 bench/train_step_torch.py MODEL BATCH THREADS [REPS]
"""
import os
import resource
import statistics
import sys
import time

import torch

name, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 5
torch.set_num_threads(threads)
torch.manual_seed(0)
src = os.environ.get("DIT_SRC")
if not src:
    sys.exit("set DIT_SRC to a checkout of facebookresearch/DiT")
sys.path.insert(0, src)
import models  # noqa: E402
from diffusion import create_diffusion  # noqa: E402

m = models.DiT_models[name]()
m.train()  # as train.py (DiT has no dropout; its label dropout draws labels)
diffusion = create_diffusion(timestep_respacing="")
opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0)
x0 = torch.randn(batch, 4, 32, 32)
noise = torch.randn(batch, 4, 32, 32)
t = torch.tensor([(999 - 100 * b) % 1000 for b in range(batch)])
y = torch.tensor([7 * b for b in range(batch)])
times = []
for r in range(reps + 1):
    t0 = time.perf_counter()
    loss = diffusion.training_losses(m, x0, t, dict(y=y), noise=noise)["loss"].mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if r > 0:
        times.append((time.perf_counter() - t0) * 1e3)
print(f"{name} batch {batch}, {threads} threads: {statistics.median(times):.1f} ms per step (median of {reps}), "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
