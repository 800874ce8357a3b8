#!/usr/bin/env bash
# Inference before and after a change: bench/model_forward of two builds (an older commit's and
# this one's) in interleaved rounds on this machine, so a shared machine's changing load hits
# both sides alike (the older build first in odd rounds, second in even ones). Prints each
# round's new / old ratio of medians and the median ratio per model. The training issue's rule:
# no model forward of docs/performance.md's 2-thread tables more than 5% slower.
#   OLD=/path/to/old/build bench/run_inference_check.sh [THREADS] [ROUNDS] ["MODEL BATCH REPS" ...]
# e.g. git worktree add /tmp/old <commit> && cmake -S /tmp/old -B /tmp/old/build -DCMAKE_BUILD_TYPE=Release &&
#      cmake --build /tmp/old/build -j2 --target model_forward && OLD=/tmp/old/build bench/run_inference_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
new=${BUILD:-build}
: "${OLD:?the older build folder (with bench/model_forward)}"
threads=${1:-2}
rounds=${2:-3}
shift 2 || shift $# || true
specs=("$@")
[[ ${#specs[@]} -gt 0 ]] || specs=("DiT-S/2 1 5" "DiT-S/2 4 5" "DiT-B/2 1 5" "DiT-B/2 4 5" "DiT-XL/2 1 5" "DiT-XL/2 4 3" "U-ViT-M 1 5" "U-ViT-M 4 5"
                                   "ADM-64 1 5" "ADM-64 4 3" "SD-VAE-decode 1 3" "SD-VAE-encode 1 3" "Latte-S/2 1 5" "Latte-XL/2 1 3")
lscpu | grep -E "Model name"; grep -o -w -E 'avx2|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
export OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=$threads
ms() { sed -n 's/.*threads=[0-9]* *\([0-9.]*\) ms.*/\1/p'; }
for spec in "${specs[@]}"; do
  set -- $spec
  ratios=()
  for ((r = 1; r <= rounds; ++r)); do
    if ((r % 2)); then
      o=$("$OLD/bench/model_forward" "$1" "$2" "$threads" "$3"); n=$("$new/bench/model_forward" "$1" "$2" "$threads" "$3")
    else
      n=$("$new/bench/model_forward" "$1" "$2" "$threads" "$3"); o=$("$OLD/bench/model_forward" "$1" "$2" "$threads" "$3")
    fi
    om=$(echo "$o" | ms) nm=$(echo "$n" | ms)
    ratios+=("$(awk -v a="$nm" -v b="$om" 'BEGIN { printf "%.3f", a / b }')")
    echo "round $r  $1 batch $2: old $om ms, new $nm ms"
  done
  med=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  echo "$1 batch $2, $threads threads: new / old per round ${ratios[*]} (median $med)"
done
