#!/usr/bin/env python3
"""Turns an upstream PyTorch checkpoint into .safetensors under its state-dict names, which is
what ditto loads (ditto itself never reads pickles). Run it on your side, with PyTorch:

    python3 tools/convert_checkpoint.py DiT-XL-2-256x256.pt dit-xl-2-256.safetensors
    python3 tools/convert_checkpoint.py checkpoint.pt out.safetensors --key model --dtype float32

The checkpoint may be a raw state_dict (DiT's released .pt, U-ViT's nnet_ema.pth,
guided-diffusion's .pt) or hold one under "ema", "model" or "state_dict" (training checkpoints,
Lightning .ckpt); without --key the first of those present is taken, in that order (the EMA
weights are the ones to sample with). A "module." prefix on every name (DistributedDataParallel)
is removed. Tensors keep their dtype unless --dtype says otherwise; ditto converts F16 / BF16 /
F64 to its own type when it loads them. See docs/models.md for each model's recipe.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_writer import save  # noqa: E402


def find_state_dict(obj, key):
    if key:
        if not isinstance(obj, dict) or key not in obj:
            sys.exit(f"convert_checkpoint: the checkpoint has no entry {key!r}; it has {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
        return obj[key]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for k in ("ema", "model", "state_dict"):
        if isinstance(obj, dict) and k in obj:
            print(f"convert_checkpoint: using the state dict under {k!r}")
            return obj[k]
    if hasattr(obj, "state_dict"):  # a whole pickled module
        return obj.state_dict()
    sys.exit("convert_checkpoint: found no state dict (expected tensors by name, or one under 'ema', 'model' or 'state_dict'; "
             f"top-level entries: {sorted(obj) if isinstance(obj, dict) else type(obj).__name__})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="upstream checkpoint: .pt, .pth, .ckpt or .bin")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--key", help="take the state dict under this entry (e.g. ema, model, state_dict)")
    p.add_argument("--dtype", choices=["keep", "float32", "float16", "bfloat16"], default="keep")
    args = p.parse_args()
    try:
        obj = torch.load(args.input, map_location="cpu", weights_only=True)
    except TypeError:  # torch before 1.13 has no weights_only
        obj = torch.load(args.input, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        if "weights_only" not in str(e):
            raise
        print("convert_checkpoint: the file holds more than tensors; loading it fully (trust its source)")
        obj = torch.load(args.input, map_location="cpu", weights_only=False)
    sd = find_state_dict(obj, args.key)
    names = list(sd)
    if names and all(n.startswith("module.") for n in names):
        sd = {n[len("module."):]: v for n, v in sd.items()}
    out, skipped = {}, []
    for n, v in sd.items():
        if not isinstance(v, torch.Tensor):
            skipped.append(n)
            continue
        if args.dtype != "keep" and v.is_floating_point():
            v = v.to(getattr(torch, args.dtype))
        out[n] = v
    if skipped:
        print(f"convert_checkpoint: skipped {len(skipped)} entries that are not tensors: {', '.join(skipped[:5])}")
    if not out:
        sys.exit("convert_checkpoint: the state dict holds no tensors")
    save(args.output, out)
    total = sum(v.numel() for v in out.values())
    print(f"convert_checkpoint: {len(out)} tensors, {total:,} values -> {args.output}")


if __name__ == "__main__":
    main()
