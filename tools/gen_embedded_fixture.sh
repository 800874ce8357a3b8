#!/usr/bin/env bash
# Writes tests/fixtures/embedded_samples.safetensors: one sample of each class from the embedded
# image model (examples/models/image.safetensors), 10 DDIM steps, seed 0, with the model card's
# guidance scale; the test samples again and compares (within 1e-3) and checks that the embedded
# classifier labels both sets alike. Rerun it whenever the embedded model is retrained.
#   tools/gen_embedded_fixture.sh [build]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
"$build/ditto-sample" --model image --per-class 1 --steps 10 --seed 0 --tensors tests/fixtures/embedded_samples.safetensors
