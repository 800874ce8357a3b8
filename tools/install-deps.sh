#!/usr/bin/env bash
# Installs every dependency of ditto from Debian 12's own packages (apt-get only).
# Idempotent: packages already present are left alone. Run as root, or with sudo available.
#   tools/install-deps.sh          library, tests, examples, benches, interpreter test
#   tools/install-deps.sh --dev    also what the fixture generators and the PyTorch side of bench/ need
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libeigen3-dev libxtensor-dev libxsimd-dev nlohmann-json3-dev libstb-dev
  catch2 libbenchmark-dev libopenblas-openmp-dev zlib1g-dev dataset-fashion-mnist libcli11-dev libopenmpi-dev openmpi-bin
  clang-19 clang-tools-19 libomp-19-dev libclang-rt-19-dev
  python3
)
if [[ "${1:-}" == "--dev" ]]; then
  # Fixture generators (tools/*.py) and the PyTorch column of bench/ tables. With
  # libopenblas0-pthread torch uses OpenBLAS instead of the reference BLAS (about 40x faster).
  # timm (tools/gen_dit_fixtures.py) imports torchvision, diffusers' scheduler module
  # (tools/gen_dpmpp_fixtures.py) the small packages after it, on load; gnuplot
  # draws docs/images/ (examples/diffusion_plots).
  packages+=(python3-numpy python3-torch libopenblas0-pthread
             python3-torchvision python3-packaging python3-filelock python3-requests python3-yaml python3-regex python3-tqdm python3-httpx
             gnuplot-nox)
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
