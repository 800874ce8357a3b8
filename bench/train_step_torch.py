#!/usr/bin/env python3
"""The PyTorch column of docs/performance.md's training table: one training step of the
upstream model on the inputs of train_step.cpp, then torch.optim.AdamW.

  DiT-S/2, DiT-B/2, ...: facebookresearch/DiT's models.py with DiT's own training_losses (learned
      sigma: mse + vb) on 4 x 32 x 32 latents (DIT_SRC);
  U-ViT-S: baofff/U-ViT's libs/uvit.py, celeba64's small model, mse on the noise (UVIT_SRC);
  ADM-64: openai/guided-diffusion's ImageNet-64 UNetModel and its training_losses (learned sigma,
      cosine schedule, hybrid loss), dropout 0 (ditto trains without dropout) (GD_SRC).

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=2 DIT_SRC=... UVIT_SRC=... GD_SRC=... \\
        PYTHONPATH=timm:huggingface_hub/src:einops /usr/bin/python3 bench/train_step_torch.py MODEL BATCH THREADS [REPS]
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


def source(var):
    src = os.environ.get(var)
    if not src:
        sys.exit(f"set {var} to the upstream checkout ({name})")
    sys.path.insert(0, src)


t = torch.tensor([(999 - 100 * b) % 1000 for b in range(batch)])
y = torch.tensor([7 * b for b in range(batch)])
if name.startswith("DiT-"):
    source("DIT_SRC")
    import models  # noqa: E402
    from diffusion import create_diffusion  # noqa: E402

    m = models.DiT_models[name]()
    diffusion = create_diffusion(timestep_respacing="")
    x0, noise = torch.randn(batch, 4, 32, 32), torch.randn(batch, 4, 32, 32)

    def loss_fn():
        return diffusion.training_losses(m, x0, t, dict(y=y), noise=noise)["loss"].mean()
elif name == "U-ViT-S":
    source("UVIT_SRC")
    from libs.uvit import UViT  # noqa: E402

    m = UViT(img_size=64, patch_size=4, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4, qkv_bias=False, mlp_time_embed=False,
             num_classes=-1)
    betas = torch.linspace(0.0001, 0.02, 1000, dtype=torch.float64)  # the linear schedule, as train_step.cpp's
    abar = torch.cumprod(1 - betas, 0).float()
    x0, noise = torch.randn(batch, 3, 64, 64), torch.randn(batch, 3, 64, 64)
    x_t = abar[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * noise

    def loss_fn():  # U-ViT's LSimple: mean over the pixels of (eps_pred - eps)^2, mean over the batch
        return (m(x_t, t.float()) - noise).pow(2).flatten(1).mean(1).mean()
elif name == "ADM-64":
    source("GD_SRC")
    from guided_diffusion.script_util import create_gaussian_diffusion  # noqa: E402
    from guided_diffusion.unet import UNetModel  # noqa: E402

    m = UNetModel(image_size=64, in_channels=3, model_channels=192, out_channels=6, num_res_blocks=3, attention_resolutions=(2, 4, 8),
                  dropout=0.0, channel_mult=(1, 2, 3, 4), num_classes=1000, num_head_channels=64, use_scale_shift_norm=True,
                  resblock_updown=True, use_new_attention_order=True)
    diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="cosine")
    x0, noise = torch.randn(batch, 3, 64, 64), torch.randn(batch, 3, 64, 64)

    def loss_fn():
        return diffusion.training_losses(m, x0, t, dict(y=y), noise=noise)["loss"].mean()
else:
    sys.exit(f"unknown model {name}: DiT-S/2, DiT-B/2, ..., U-ViT-S or ADM-64")

m.train()  # as the training scripts (no dropout in any of these configs; DiT's label dropout draws labels)
opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0)
times = []
for r in range(reps + 1):
    t0 = time.perf_counter()
    loss = loss_fn()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if r > 0:
        times.append((time.perf_counter() - t0) * 1e3)
print(f"{name} batch {batch}, {threads} threads: {statistics.median(times):.1f} ms per step (median of {reps}), "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
