#!/usr/bin/env python3
"""The PyTorch column of the DiT table in docs/performance.md: upstream DiT (facebookresearch/DiT
models.py with timm's blocks), random weights, the inputs of dit_forward.cpp.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=2 PYTHONPATH=/path/to/timm:/path/to/huggingface_hub/src \\
        DIT_SRC=/path/to/DiT /usr/bin/python3 bench/dit_torch.py DiT-XL/2 1 2

Debian's python3-torch with libopenblas0-pthread installed (else it uses the reference BLAS).
"""
import os
import resource
import statistics
import sys
import time

import torch

src = os.environ.get("DIT_SRC")
if not src:
    sys.exit("set DIT_SRC to a checkout of facebookresearch/DiT")
sys.path.insert(0, src)
import models  # noqa: E402

name, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 5
torch.set_num_threads(threads)
torch.manual_seed(0)
m = models.DiT_models[name]().eval()
with torch.no_grad():
    for k, p in m.named_parameters():
        if k != "pos_embed":
            p.normal_(0, 0.02)
x = torch.randn(batch, 4, 32, 32)
t = torch.tensor([999.0 - 100 * b for b in range(batch)])
y = torch.tensor([7 * b for b in range(batch)])
with torch.inference_mode():
    m(x, t, y)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        m(x, t, y)
        times.append(time.perf_counter() - t0)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
weights = sum(p.numel() for p in m.state_dict().values()) * 4 / 2**20
print(f"{name:9s} B={batch} threads={threads}  {statistics.median(times) * 1e3:9.1f} ms  peak RSS {rss:6.0f} MB (weights {weights:5.0f} MB)")
