#!/usr/bin/env bash
# ditto's blocks next to PyTorch on this machine, at 1 and 2 threads, in one run (the tables of
# docs/performance.md). Needs a Release build of bench_nn and attention_memory, and Debian's
# python3-torch with libopenblas0-pthread (tools/install-deps.sh --dev).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
lscpu | grep -E "Model name" ; grep -o -w -E 'avx2|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
echo "== ditto ($("$build/bench/bench_nn" --benchmark_list_tests=true >/dev/null && echo bench_nn))"
"$build/bench/bench_nn" 2>/dev/null | grep -E "^BM"
for n in 16384 32768; do "$build/bench/attention_memory" "$n" 2; done
echo "== PyTorch (OMP_WAIT_POLICY=PASSIVE, OPENBLAS_NUM_THREADS = threads)"
for t in 1 2; do OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=$t /usr/bin/python3 bench/nn_torch.py "$t"; done
