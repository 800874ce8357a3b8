#!/usr/bin/env python3
"""The PyTorch column of the scaling table in docs/performance.md: the shapes of bench/scaling.cpp,
with PyTorch's best form of each (F.linear, F.scaled_dot_product_attention where this PyTorch has
it, else softmax(q k^T / 8) v per head, nn.Conv2d, F.gelu, nn.LayerNorm).

    python3 bench/scaling_torch.py 1 2 4 8 16
"""
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def median_s(fn):
    fn()
    times = []
    while len(times) < 5 or sum(times) < 0.5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report(name, threads, seconds, work, unit):
    print(f"{name:34s} threads={threads:<3d} {seconds * 1e3:9.2f} ms {work / seconds / 1e9:8.1f} {unit}", flush=True)


torch.manual_seed(0)
xl, w, b = torch.randn(1024, 1152), torch.randn(4608, 1152) * 0.03, torch.zeros(4608)
q, k, v = (torch.randn(1, 16, 4096, 64) for _ in range(3))
if hasattr(F, "scaled_dot_product_attention"):
    attention = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
else:  # torch 1.x: per head, so the 16 x 4096 x 4096 scores are not all held at once
    attention = lambda: torch.stack([torch.softmax(q[:, h] @ k[:, h].transpose(-1, -2) / math.sqrt(64), -1) @ v[:, h]  # noqa: E731
                                     for h in range(16)], 1)
xe = torch.randn(4096, 4096)
ln = torch.nn.LayerNorm(4096)
with torch.inference_mode():
    for threads in map(int, sys.argv[1:]):
        torch.set_num_threads(threads)
        report("Linear 1024x1152->4608", threads, median_s(lambda: F.linear(xl, w, b)), 2 * 1024 * 1152 * 4608, "GFLOP/s")
        report("attention 4096 tokens, 16x64", threads, median_s(attention), 4 * 16 * 4096 * 4096 * 64, "GFLOP/s")
        for c, s in ((128, 64), (128, 256), (256, 128), (512, 64)):
            conv = torch.nn.Conv2d(c, c, 3, padding=1)
            x = torch.randn(1, c, s, s)
            report(f"Conv2d 3x3 {c} at {s}x{s}", threads, median_s(lambda: conv(x)), 2 * c * c * 9 * s * s, "GFLOP/s")
        report("GELU tanh (64 MB)", threads, median_s(lambda: F.gelu(xe, approximate="tanh")), 8 * xe.numel(), "GB/s")
        report("LayerNorm (64 MB)", threads, median_s(lambda: ln(xe)), 8 * xe.numel(), "GB/s")
