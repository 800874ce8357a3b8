#!/usr/bin/env python3
"""The PyTorch column of the blocks table in docs/performance.md: the shapes of bench_nn.cpp.

    OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/nn_torch.py 2

Debian's python3-torch with libopenblas0-pthread installed (else it uses the reference BLAS).
"""
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
torch.manual_seed(0)


def bench(name, fn, reps=10, unit=None, work=None):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    extra = f"  {work / t / 1e9:7.1f} {unit}" if work else ""
    print(f"{name:40s} threads={threads}  {t * 1e3:9.2f} ms{extra}")


with torch.no_grad():
    for tokens in (256, 1024):
        for i, o in ((1152, 3456), (1152, 4608), (4608, 1152)):
            x, w, b = torch.randn(tokens, i), torch.randn(o, i), torch.randn(o)
            bench(f"Linear {tokens}x{i}->{o}", lambda: F.linear(x, w, b), unit="GFLOP/s", work=2 * tokens * i * o)
    x = torch.randn(4096, 4096)
    ln = torch.nn.LayerNorm(4096)
    nbytes = x.numel() * 8
    bench("GELU tanh (64 MB)", lambda: F.gelu(x, approximate="tanh"), unit="GB/s", work=nbytes)
    bench("GELU (64 MB)", lambda: F.gelu(x), unit="GB/s", work=nbytes)
    bench("SiLU (64 MB)", lambda: F.silu(x), unit="GB/s", work=nbytes)
    bench("LayerNorm (64 MB)", lambda: ln(x), unit="GB/s", work=nbytes)
    bench("softmax (64 MB)", lambda: F.softmax(x, -1), unit="GB/s", work=nbytes)
    for n in (1024, 4096, 8192):
        q, k, v = (torch.randn(1, 16, n, 64) for _ in range(3))
        naive = lambda: torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64), -1) @ v
        bench(f"attention naive {n} tokens", naive, reps=3 if n > 1024 else 10, unit="GFLOP/s", work=4 * 16 * n * n * 64)
    for c, s in ((128, 64), (128, 256), (256, 128), (512, 64)):  # U-Net / SD decoder shapes
        conv = torch.nn.Conv2d(c, c, 3, padding=1)
        x = torch.randn(1, c, s, s)
        bench(f"Conv2d 3x3 {c}->{c} at {s}x{s}", lambda: conv(x), reps=5, unit="GFLOP/s", work=2 * c * c * 9 * s * s)
