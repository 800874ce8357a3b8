#!/usr/bin/env bash
# Model forwards, ditto next to the upstream modules on PyTorch, on this machine in one run (the
# model tables of docs/performance.md). Needs a Release build of model_forward, Debian's
# python3-torch with libopenblas0-pthread (tools/install-deps.sh --dev), and upstream sources:
#   DIT_SRC=... TIMM_SRC=... HFHUB_SRC=... UVIT_SRC=... EINOPS_SRC=... GD_SRC=... LATTE_SRC=... \
#     bench/run_model_comparison.sh [THREADS] [MODEL BATCH ...]     (default: the DiT, U-ViT and U-Net table)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
threads=${1:-2}
: "${DIT_SRC:?DiT checkout}" "${TIMM_SRC:?timm 0.9.x}" "${UVIT_SRC:?U-ViT checkout}" "${EINOPS_SRC:?einops}" "${GD_SRC:?guided-diffusion}"
lscpu | grep -E "Model name"; grep -o -w -E 'avx2|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
export OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=$threads PYTHONPATH="$TIMM_SRC:${HFHUB_SRC:-}:$EINOPS_SRC"
shift || true
specs=("$@")
if [[ ${#specs[@]} -eq 0 ]]; then
  specs=("DiT-S/2 1" "DiT-S/2 4" "DiT-B/2 1" "DiT-B/2 4" "DiT-XL/2 1" "DiT-XL/2 4" "U-ViT-M 1" "U-ViT-M 4" "ADM-64 1" "ADM-64 4")
fi
reps=${REPS:-5}
for spec in "${specs[@]}"; do
  set -- $spec
  "$build/bench/model_forward" "$1" "$2" "$threads" "$reps" | sed 's/^/ditto   /'
  /usr/bin/python3 bench/model_torch.py "$1" "$2" "$threads" "$reps" 2>/dev/null | grep -v "attention mode" | sed 's/^/PyTorch /'
done
