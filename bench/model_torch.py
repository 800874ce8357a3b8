#!/usr/bin/env python3
"""The PyTorch column of the model tables in docs/performance.md: the upstream modules with random
weights, on the inputs of model_forward.cpp.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=2 /usr/bin/python3 bench/model_torch.py MODEL BATCH THREADS [REPS]

MODEL: DiT-S/2 ... DiT-XL/8 (DIT_SRC; timm 0.9 and huggingface_hub's src/ on PYTHONPATH),
U-ViT-M (UVIT_SRC, einops on PYTHONPATH; "math" attention), ADM-64 (GD_SRC), Latte-S/2 ...
Latte-XL/2 (LATTE_SRC, timm and einops on PYTHONPATH; 16 frames, class-conditional). Debian's
python3-torch with libopenblas0-pthread installed (else it uses the reference BLAS).
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


def src(var):
    path = os.environ.get(var)
    if not path:
        sys.exit(f"set {var} to the upstream checkout for {name}")
    sys.path.insert(0, path)


t = torch.tensor([999.0 - 100 * b for b in range(batch)])
y = torch.tensor([7 * b for b in range(batch)])
if name.startswith("DiT-"):
    src("DIT_SRC")
    import models  # noqa: E402
    m = models.DiT_models[name]()
    x = torch.randn(batch, 4, 32, 32)
elif name == "U-ViT-M":
    src("UVIT_SRC")
    from libs import uvit  # noqa: E402
    uvit.ATTENTION_MODE = "math"
    m = uvit.UViT(img_size=64, patch_size=4, embed_dim=768, depth=16, num_heads=12, mlp_ratio=4, qkv_bias=False,
                  mlp_time_embed=False, num_classes=1000)
    x = torch.randn(batch, 3, 64, 64)
elif name == "ADM-64":
    src("GD_SRC")
    from guided_diffusion.unet import UNetModel  # noqa: E402
    m = UNetModel(image_size=64, in_channels=3, model_channels=192, out_channels=6, num_res_blocks=3,
                  attention_resolutions=(2, 4, 8), channel_mult=(1, 2, 3, 4), num_classes=1000, num_head_channels=64,
                  use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True)
    x = torch.randn(batch, 3, 64, 64)
elif name.startswith("Latte-"):
    sys.path.insert(0, os.path.join(os.environ.get("LATTE_SRC", ""), "models"))
    import latte  # noqa: E402
    size = {"S": dict(depth=12, hidden_size=384, num_heads=6), "B": dict(depth=12, hidden_size=768, num_heads=12),
            "L": dict(depth=24, hidden_size=1024, num_heads=16), "XL": dict(depth=28, hidden_size=1152, num_heads=16)}
    kind, patch = name[len("Latte-"):].split("/")
    m = latte.Latte(**size[kind], patch_size=int(patch), num_frames=16, extras=2)
    x = torch.randn(batch, 16, 4, 32, 32)
elif name.startswith("SD-VAE-"):
    src("UVIT_SRC")
    import contextlib
    import io
    from libs import autoencoder as ae  # noqa: E402
    dd = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
              num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        enc, dec = ae.Encoder(**dd), ae.Decoder(**dd)
    quant, post_quant = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(4, 4, 1)
    if name == "SD-VAE-decode":
        m = torch.nn.Sequential(post_quant, dec)
        x = torch.randn(batch, 4, 32, 32)
    else:
        m = torch.nn.Sequential(enc, quant)
        x = torch.rand(batch, 3, 256, 256) * 2 - 1
else:
    sys.exit(f"unknown MODEL {name}")
m = m.eval()
with torch.no_grad():
    for k, p in m.named_parameters():
        if k not in ("pos_embed", "temp_embed"):
            p.normal_(0, 0.02)
run = (lambda: m(x)) if name.startswith("SD-VAE-") else (lambda: m(x, t, y))
with torch.inference_mode():
    run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
weights = sum(p.numel() for p in m.state_dict().values()) * 4 / 2**20
print(f"{name:9s} B={batch} threads={threads}  {statistics.median(times) * 1e3:9.1f} ms  peak RSS {rss:6.0f} MB (weights {weights:5.0f} MB)")
