#!/usr/bin/env bash
# Writes the embedded models' fixtures: tests/fixtures/embedded_samples.safetensors (one sample of
# each class from examples/models/image.safetensors) and tests/fixtures/embedded_video_samples.safetensors
# (one clip of each class, direction "right", from examples/models/video.safetensors), 10 DDIM
# steps, seed 0, with each model card's guidance scale and interval. The tests sample again and compare (within
# 1e-3) and check that the embedded classifiers label both sets alike. Rerun it whenever an
# embedded model is retrained.
#   tools/gen_embedded_fixture.sh [build]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
"$build/ditto-sample" --model image --per-class 1 --steps 10 --seed 0 --tensors tests/fixtures/embedded_samples.safetensors
"$build/ditto-sample" --model video --per-class 1 --steps 10 --seed 0 --tensors tests/fixtures/embedded_video_samples.safetensors
