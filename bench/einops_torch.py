#!/usr/bin/env python3
"""The PyTorch column of the rearrange table in docs/performance.md: the same 64 MB tensors as
bench_einops.cpp, moved with permute(...).contiguous() (a new output) and with out.copy_()
(into a reused output), at the given thread count. Run it the way PyTorch runs best:

    OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/einops_torch.py 2

(Debian's python3-torch; install libopenblas0-pthread, though these copies use no BLAS.)
"""
import statistics
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)


def bench(name, fn, nbytes, reps=30):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    print(f"{name:34s} threads={threads}  {t * 1e3:8.2f} ms  {2 * nbytes / t / 1e9:6.2f} GB/s")


images = torch.ones(16, 4, 512, 512)
video = torch.ones(4, 16, 4, 256, 256)
square = torch.ones(4096, 4096)
tokens = torch.ones(16, 256 * 256, 16)
nbytes = images.numel() * 4
out_img = torch.empty_like(images)
out_tok = torch.empty(16, 256 * 256, 16)
out_vid = torch.empty(4, 4, 16, 256, 256)
out_sq = torch.empty(4096, 4096)


def patchify(x):  # b c (h p1) (w p2) -> b (h w) (p1 p2 c)
    return x.view(16, 4, 256, 2, 256, 2).permute(0, 2, 4, 3, 5, 1)


def unpatchify(x):  # b (h w) (p1 p2 c) -> b c (h p1) (w p2)
    return x.view(16, 256, 256, 2, 2, 4).permute(0, 5, 1, 3, 2, 4)


bench("memcpy (out.copy_(x))", lambda: out_img.copy_(images), nbytes)
bench("patchify", lambda: patchify(images).contiguous(), nbytes)
bench("patchify into", lambda: out_tok.view(16, 256, 256, 2, 2, 4).copy_(patchify(images)), nbytes)
bench("unpatchify", lambda: unpatchify(tokens).contiguous(), nbytes)
bench("unpatchify into", lambda: out_img.view(16, 4, 256, 2, 256, 2).copy_(unpatchify(tokens)), nbytes)
bench("b t c h w -> b c t h w", lambda: video.permute(0, 2, 1, 3, 4).contiguous(), nbytes)
bench("b t c h w -> b c t h w into", lambda: out_vid.copy_(video.permute(0, 2, 1, 3, 4)), nbytes)
bench("a b -> b a (4096^2)", lambda: square.t().contiguous(), nbytes)
bench("a b -> b a (4096^2) into", lambda: out_sq.copy_(square.t()), nbytes)
