#!/usr/bin/env bash
# DiT forwards, ditto next to upstream DiT on PyTorch, on this machine in one run (the DiT table
# of docs/performance.md). Needs a Release build of dit_forward, Debian's python3-torch with
# libopenblas0-pthread (tools/install-deps.sh --dev), and upstream sources:
#   DIT_SRC=/path/to/DiT TIMM_SRC=/path/to/timm HFHUB_SRC=/path/to/huggingface_hub/src bench/run_dit_comparison.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
threads=${1:-2}
: "${DIT_SRC:?set DIT_SRC to a checkout of facebookresearch/DiT}" "${TIMM_SRC:?set TIMM_SRC to timm 0.9.x}"
lscpu | grep -E "Model name"; grep -o -w -E 'avx2|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
for spec in "DiT-S/2 1" "DiT-S/2 4" "DiT-B/2 1" "DiT-B/2 4" "DiT-XL/2 1" "DiT-XL/2 4"; do
  set -- $spec
  "$build/bench/dit_forward" "$1" "$2" "$threads" 5 | sed 's/^/ditto   /'
  OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=$threads PYTHONPATH="$TIMM_SRC:${HFHUB_SRC:-}" \
    /usr/bin/python3 bench/dit_torch.py "$1" "$2" "$threads" 5 | sed 's/^/PyTorch /'
done
