#!/usr/bin/env bash
# Thread scaling, ditto next to PyTorch on this machine in one run (the 16-core tables of
# docs/performance.md): the blocks of bench/scaling.cpp at each thread count, then DiT-XL/2 and
# the SD autoencoder's decode. PyTorch's blocks run under both OpenMP wait policies (the table
# takes the faster). Needs a Release build of scaling and model_forward, a python3 with torch,
# and DiT's and U-ViT's sources for the model rows:
#   DIT_SRC=... UVIT_SRC=... [PYTHON=python3] bench/run_scaling.sh [THREADS ...]    (default: 1 2 4 8 16)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
py=${PYTHON:-python3}
threads=("$@")
[[ ${#threads[@]} -gt 0 ]] || threads=(1 2 4 8 16)
: "${DIT_SRC:?DiT checkout}" "${UVIT_SRC:?U-ViT checkout}"
lscpu | grep -E "Model name|^Model:|Core|Socket|L2|L3"; grep -o -w -E 'avx2|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
"$py" -c "import torch; print('torch', torch.__version__)"
echo "== ditto blocks"; "$build/bench/scaling" "${threads[@]}"
echo "== PyTorch blocks"; "$py" bench/scaling_torch.py "${threads[@]}"
echo "== PyTorch blocks, OMP_WAIT_POLICY=PASSIVE"; OMP_WAIT_POLICY=PASSIVE "$py" bench/scaling_torch.py "${threads[@]}"
echo "== models"
for t in "${threads[@]}"; do
  for m in DiT-XL/2 SD-VAE-decode; do
    "$build/bench/model_forward" "$m" 1 "$t" 3 | sed 's/^/ditto   /'
    "$py" bench/model_torch.py "$m" 1 "$t" 3 2>/dev/null | grep -v "attention mode" | sed 's/^/PyTorch /'
  done
done
