#!/usr/bin/env bash
# Installs every system package the build, the demo and the tests need. Idempotent: a second
# run only checks. This script is the single source of truth for dependencies; .ci/run and the
# README's two commands both call it.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian 12 packages. Why each is here is in README.md ("Dependencies").
PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev libyaml-cpp-dev nlohmann-json3-dev libopenblas-openmp-dev libdnnl-dev
  libboost-iostreams-dev libboost-program-options-dev
  libgtest-dev libgmock-dev
  clang-14 libclang-rt-14-dev libomp-14-dev
  openmpi-bin libopenmpi-dev
  slurmctld slurmd slurm-client munge libpmix-dev
  bible-kjv shellcheck gnuplot-nox
  python3 python3-venv python3-pip python3-numpy python3-yaml python3-torch
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all Debian packages present"
fi

# Test-only Python oracles. Debian's python3-torch is the CPU PyTorch oracle; the Hugging Face
# `tokenizers` package is not packaged by Debian, so it comes from PyPI into a venv that also
# sees the system site-packages (torch, numpy). The lattice binary never uses Python.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LATTICE_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# transformers (tests/launcher/hf_convert_test.py only): 4.45.2 runs on Debian's torch 1.13 and
# accepts tokenizers 0.20 (4.40.2 requires tokenizers < 0.20, which the pin above rules out).
# tensorboard (tests/launcher/tensorboard_test.py only): its own reader checks lattice's event
# files; 2.18.0 installs on Python 3.11 beside Debian's numpy 1.24 (protobuf comes from PyPI).
if ! "$VENV/bin/python" -c "import tokenizers, safetensors, torch, numpy, transformers, tensorboard" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "tokenizers==0.20.3" "safetensors==0.4.5" "transformers==4.45.2" "tensorboard==2.18.0"
fi
"$VENV/bin/python" -c "import tokenizers, torch, numpy; print('install-deps: python oracles ok: torch', torch.__version__, 'tokenizers', tokenizers.__version__)"
