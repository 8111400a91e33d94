#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan + UBSan, -DLATTICE_FUZZ=ON in a build
# dir of their own) and runs each for a bounded time. Exits non-zero when any target crashes,
# hangs, runs out of memory or fails a seed.
#
#   scripts/fuzz.sh [seconds-per-target] [target ...]     (default 30 s, every target)
#
# For each target it first runs every seed once (tests/fuzz/corpus/<name>/ and the full-size
# crash inputs of GitHub issue 8 that tests/fuzz/make_seeds.py generates), then fuzzes from the
# committed seeds plus what earlier runs found (kept in the build dir, never written into the
# source tree). One summary line per target; crash inputs land in $BUILD/fuzz-artifacts/<name>/.
#
# Environment: LATTICE_FUZZ_BUILD (default <repo>/build-fuzz), LATTICE_FUZZ_CXX / _CC
# (default clang++-14 / clang-14), LATTICE_FUZZ_JOBS (build parallelism, default nproc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${1:-30}"
if [ $# -gt 0 ]; then shift; fi
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [seconds-per-target >= 1] [target ...]" >&2
  exit 2
fi
BUILD="${LATTICE_FUZZ_BUILD:-$ROOT/build-fuzz}"
CXX_BIN="${LATTICE_FUZZ_CXX:-/usr/bin/clang++-14}"
CC_BIN="${LATTICE_FUZZ_CC:-/usr/bin/clang-14}"
JOBS="${LATTICE_FUZZ_JOBS:-$(nproc)}"

mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER="$CXX_BIN" -DCMAKE_C_COMPILER="$CC_BIN" -DLATTICE_FUZZ=ON \
  > "$BUILD/configure.log" 2>&1 || { cat "$BUILD/configure.log" >&2; exit 1; }
cmake --build "$BUILD" -j "$JOBS" > "$BUILD/build.log" 2>&1 || { tail -50 "$BUILD/build.log" >&2; exit 1; }

LARGE="$BUILD/fuzz-seeds-large"
rm -rf "$LARGE"
python3 "$ROOT/tests/fuzz/make_seeds.py" large "$LARGE"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for src in "$ROOT"/tests/fuzz/*_fuzz.cc; do
    name="$(basename "$src" .cc)"
    targets+=("${name%_fuzz}")
  done
fi

# Per input: 10 s is a hang (the slowest seed runs in well under 1 s under ASan); 2 GiB is an
# out-of-memory (parsers must stay within a small multiple of their input, at most a few MB).
FUZZ_FLAGS=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

failed=0
for t in "${targets[@]}"; do
  bin="$BUILD/fuzz/${t}_fuzz"
  if [ ! -x "$bin" ]; then
    echo "fuzz: $t: no target $bin" >&2
    failed=1
    continue
  fi
  seeds="$ROOT/tests/fuzz/corpus/$t"
  work="$BUILD/fuzz-corpus/$t"
  artifacts="$BUILD/fuzz-artifacts/$t"
  log="$BUILD/fuzz-logs/$t.log"
  mkdir -p "$work" "$(dirname "$log")"
  rm -rf "$artifacts"
  mkdir -p "$artifacts"

  # 1. Every seed once, at full size (directory corpora would be cut to -max_len).
  seed_files=()
  for d in "$seeds" "$LARGE/$t"; do
    if [ -d "$d" ]; then
      while IFS= read -r -d '' f; do seed_files+=("$f"); done < <(find "$d" -type f -print0 | sort -z)
    fi
  done
  status="ok"
  if [ ${#seed_files[@]} -gt 0 ]; then
    if ! "$bin" "${FUZZ_FLAGS[@]}" -artifact_prefix="$artifacts/" "${seed_files[@]}" > "$log.seeds" 2>&1; then
      status="SEED FAILED"
    fi
  fi

  # 2. Fuzzing for the time given.
  runs=0
  if [ "$status" = "ok" ]; then
    dirs=("$work")
    if [ -d "$seeds" ]; then dirs+=("$seeds"); fi
    if ! "$bin" "${FUZZ_FLAGS[@]}" -max_total_time="$SECONDS_PER_TARGET" \
         -artifact_prefix="$artifacts/" "${dirs[@]}" > "$log" 2>&1; then
      status="FAILED"
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  fi
  crashes="$(find "$artifacts" -type f | wc -l)"
  printf 'fuzz: %-13s %10s runs in %ss, %s crashes, %s seeds, %s\n' \
    "$t" "${runs:-0}" "$SECONDS_PER_TARGET" "$crashes" "${#seed_files[@]}" "$status"
  if [ "$status" != "ok" ] || [ "$crashes" -gt 0 ]; then
    failed=1
    for f in "$log.seeds" "$log"; do
      if [ -f "$f" ]; then grep -E 'ERROR|SUMMARY|runtime error|Test unit written|==[0-9]+==' "$f" | head -20 >&2 || true; fi
    done
    echo "fuzz: $t: logs in $log(.seeds), inputs in $artifacts/" >&2
  fi
done
exit "$failed"
