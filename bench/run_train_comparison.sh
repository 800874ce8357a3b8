#!/usr/bin/env bash
# The training-step table of docs/performance.md: ditto's bench/train_step next to
# bench/train_step_torch.py (the upstream modules on PyTorch), in interleaved rounds on this
# machine. Shared virtual machines change speed by up to 1.7x within minutes as neighbours load
# them; a round runs both sides back to back (ditto first in odd rounds, PyTorch first in even
# ones), so each round's ratio compares the two under the same load, and the table quotes the
# median ratio over the rounds next to each side's fastest round.
# Needs a Release build of train_step, Debian's python3-torch with libopenblas0-pthread
# (tools/install-deps.sh --dev), and the upstream sources:
#   DIT_SRC=... TIMM_SRC=... HFHUB_SRC=... EINOPS_SRC=... UVIT_SRC=... GD_SRC=... \
#     bench/run_train_comparison.sh [THREADS] [ROUNDS] ["MODEL BATCH REPS" ...]
#   (default: 2 threads, 3 rounds, "DiT-S/2 8 5" "DiT-B/2 8 3" "U-ViT-S 8 5" "ADM-64 4 3")
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
threads=${1:-2}
rounds=${2:-3}
: "${DIT_SRC:?DiT checkout}" "${TIMM_SRC:?timm 0.9.x}" "${EINOPS_SRC:?einops}" "${UVIT_SRC:?U-ViT checkout}" "${GD_SRC:?guided-diffusion}"
lscpu | grep -E "Model name"; grep -o -w -E 'avx2|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
export OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=$threads PYTHONPATH="$TIMM_SRC:${HFHUB_SRC:-}:$EINOPS_SRC"
export DIT_SRC UVIT_SRC GD_SRC
shift 2 || shift $# || true
specs=("$@")
[[ ${#specs[@]} -gt 0 ]] || specs=("DiT-S/2 8 5" "DiT-B/2 8 3" "U-ViT-S 8 5" "ADM-64 4 3")
ms() { sed -n 's/.*: \([0-9.]*\) ms per step.*/\1/p'; }
for spec in "${specs[@]}"; do
  set -- $spec
  ratios=() dittos=() torches=()
  for ((r = 1; r <= rounds; ++r)); do
    if ((r % 2)); then
      d=$("$build/bench/train_step" "$1" "$2" "$threads" "$3"); t=$(/usr/bin/python3 bench/train_step_torch.py "$1" "$2" "$threads" "$3" 2>/dev/null | tail -1)
    else
      t=$(/usr/bin/python3 bench/train_step_torch.py "$1" "$2" "$threads" "$3" 2>/dev/null | tail -1); d=$("$build/bench/train_step" "$1" "$2" "$threads" "$3")
    fi
    echo "round $r  ditto   $d"
    echo "round $r  PyTorch $t"
    dm=$(echo "$d" | ms) tm=$(echo "$t" | ms)
    dittos+=("$dm") torches+=("$tm") ratios+=("$(awk -v a="$dm" -v b="$tm" 'BEGIN { printf "%.3f", a / b }')")
  done
  med=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  echo "$1 batch $2, $threads threads: ditto / PyTorch per round ${ratios[*]} (median $med); fastest round ditto $(printf '%s\n' "${dittos[@]}" | sort -g | head -1) ms, PyTorch $(printf '%s\n' "${torches[@]}" | sort -g | head -1) ms"
done
