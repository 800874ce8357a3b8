#!/usr/bin/env bash
# ditto's rearrange next to memcpy and PyTorch, on this machine, at 1 and 2 threads, in one run.
# Needs a Release build (cmake -S . -B build && cmake --build build --target bench_einops) and
# Debian's python3-torch (tools/install-deps.sh --dev). Prints both sides and the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
lscpu | grep -E "Model name|^L3|Flags" | sed -E 's/(Flags:).*/\1 '"$(grep -o -w -E 'avx2|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' ')"'/'
echo "== ditto (Google Benchmark; bytes = read + write)"
"$build/bench/bench_einops" --benchmark_filter='memcpy|patchify|unpatchify|video|transpose' \
  --benchmark_repetitions=10 --benchmark_report_aggregates_only=true 2>/dev/null | grep -E "_median|^BM_reshape"
echo "== PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)') (OMP_WAIT_POLICY=PASSIVE)"
for t in 1 2; do OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/einops_torch.py "$t"; done
