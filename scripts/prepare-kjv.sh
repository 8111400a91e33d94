#!/usr/bin/env bash
# Prepares the King James Bible as a small corpus for demos and tests:
#   data/kjv/kjv.txt                    the text, one chapter per document (see below)
#   data/kjv/tokenizer.json             a 4096-token byte-level BPE trained on it
#   data/kjv/kjv_train.{bin,idx}        Megatron indexed datasets written by `lattice prepare`
#   data/kjv/kjv_val.{bin,idx}          (1% of the chapters: chapter 0, 100, 200, ...)
# Idempotent: each step runs only when its output is missing or older than its input.
#
# Documents. `bible -f Gen1:1-Rev22:21` prints one verse per line, "Ge1:1 In the beginning ...",
# with the reference first. We drop the references and keep one verse per line, and separate
# chapters with a blank line, so `lattice prepare`'s default blank-line split makes one document
# per chapter (1189 of them, about 3.5 KB each; 4.1 MB in all): long enough that a training window of a few
# hundred tokens stays mostly inside one chapter, and many enough for a 1% validation split by
# whole chapters.
#
# The lattice binary is $LATTICE_BIN (default: build/lattice in this repository).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${LATTICE_BIN:-}" ]; then
  case "$LATTICE_BIN" in
    /*) ;;
    *) LATTICE_BIN="$PWD/$LATTICE_BIN" ;;
  esac
else
  LATTICE_BIN="$ROOT/build/lattice"
fi
OUT="$ROOT/data/kjv"

if ! command -v bible >/dev/null 2>&1; then
  echo "prepare-kjv: the 'bible' program (Debian package bible-kjv) is missing;" \
       "run scripts/install-deps.sh first" >&2
  exit 1
fi
if [ ! -x "$LATTICE_BIN" ]; then
  echo "prepare-kjv: no lattice binary at $LATTICE_BIN; build it" \
       "(cmake -S . -B build -G Ninja && cmake --build build) or set LATTICE_BIN" >&2
  exit 1
fi
mkdir -p "$OUT"

# 1. The text.
if [ ! -s "$OUT/kjv.txt" ]; then
  echo "prepare-kjv: writing $OUT/kjv.txt"
  bible -f Gen1:1-Rev22:21 | awk '
    {
      ref = $1                               # e.g. "Ge1:1", "SSol3:4", "1Chr2:5"
      chapter = ref; sub(/:[0-9]+$/, "", chapter)
      if (NR > 1 && chapter != previous) print ""
      print substr($0, length(ref) + 2)
      previous = chapter
    }' > "$OUT/kjv.txt.tmp"
  chapters=$(grep -c '^$' "$OUT/kjv.txt.tmp" || true)
  if [ "$((chapters + 1))" -ne 1189 ]; then
    echo "prepare-kjv: expected 1189 chapters from 'bible', got $((chapters + 1))" >&2
    rm -f "$OUT/kjv.txt.tmp"
    exit 1
  fi
  mv "$OUT/kjv.txt.tmp" "$OUT/kjv.txt"
fi

# 2. The tokenizer.
if [ ! -s "$OUT/tokenizer.json" ] || [ "$OUT/kjv.txt" -nt "$OUT/tokenizer.json" ]; then
  echo "prepare-kjv: training a 4096-token BPE tokenizer"
  "$LATTICE_BIN" tokenizer train --input "$OUT/kjv.txt" --vocab-size 4096 \
    --out "$OUT/tokenizer.json"
fi

# 3. The token files.
if [ ! -s "$OUT/kjv_train.idx" ] || [ ! -s "$OUT/kjv_val.idx" ] ||
   [ "$OUT/tokenizer.json" -nt "$OUT/kjv_train.idx" ] || [ "$OUT/kjv.txt" -nt "$OUT/kjv_train.idx" ]; then
  echo "prepare-kjv: tokenizing into $OUT/kjv_train and $OUT/kjv_val"
  "$LATTICE_BIN" prepare --input "$OUT/kjv.txt" --tokenizer "$OUT/tokenizer.json" \
    --out "$OUT/kjv" --val-fraction 0.01
fi
echo "prepare-kjv: ready: $OUT/kjv_train, $OUT/kjv_val, $OUT/tokenizer.json"
