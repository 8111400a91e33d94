#!/usr/bin/env bash
# From a fresh Debian 12 machine: install, build, prepare the King James Bible, train the demo
# model on the CPU, and sample from it. The README's first command.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install-deps.sh
BUILD="${LATTICE_BUILD_DIR:-build}"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j"$(nproc)" --target lattice
export LATTICE_BIN="$ROOT/$BUILD/lattice"
bash scripts/prepare-kjv.sh
mkdir -p runs/kjv-demo
"$LATTICE_BIN" train --config configs/kjv-demo.yaml "$@"
echo
echo "== sample (temperature 0.8, top-k 40) =="
"$LATTICE_BIN" generate --config configs/kjv-demo.yaml --weights runs/kjv-demo/model.safetensors \
  --prompt "And God said" --max-new-tokens 80 --temperature 0.8 --top-k 40 --seed 1
