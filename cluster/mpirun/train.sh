#!/usr/bin/env bash
# Runs `lattice train` under Open MPI's mpirun: one node, or several listed in a hostfile.
#
#   cluster/mpirun/train.sh -np 8 [--per-node 4] [--hostfile hosts.txt] [--config FILE] \
#       [--dry-run] [lattice train options, e.g. --set data.train=data/fineweb_train]
#
# -np N         total number of ranks (the world size); default 1
# --per-node K  ranks per node (`--map-by ppr:K:node`); default: fill each host's slots in order
# --hostfile F  Open MPI hostfile, one "host slots=K" line per node; default: this node only
# --config F    lattice config; default configs/gpt2-124m.yaml (or $CONFIG)
# --dry-run     print the mpirun command instead of running it
# Everything else goes to `lattice train` unchanged; `--` ends this script's own options.
#
# lattice learns its rank, world size and local rank from the OMPI_COMM_WORLD_* variables that
# mpirun sets (parallel/launch_env.h), and arranges the world into tensor-, data- and
# pipeline-parallel groups from parallel.tp / parallel.pp in the config (dp = N / (tp*pp)).
# Across nodes the binary, config and data must be at the same path on every node.
#
# Environment: LATTICE_BIN (default build/lattice), MPIRUN (default mpirun), MPIRUN_ARGS (extra
# mpirun arguments, word-split, e.g. "--mca btl_tcp_if_include eth0").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LATTICE_BIN="${LATTICE_BIN:-$ROOT/build/lattice}"
MPIRUN="${MPIRUN:-mpirun}"
CONFIG="${CONFIG:-$ROOT/configs/gpt2-124m.yaml}"
np=1
per_node=""
hostfile=""
dry_run=0
train_args=()

usage() { sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

need_value() {
  if [[ $# -lt 2 || -z "$2" ]]; then
    echo "train.sh: $1 needs a value" >&2
    exit 2
  fi
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    -np|-n|--np) need_value "$@"; np="$2"; shift 2 ;;
    --per-node) need_value "$@"; per_node="$2"; shift 2 ;;
    --hostfile) need_value "$@"; hostfile="$2"; shift 2 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args+=("$@"); break ;;
    *) train_args+=("$1"); shift ;;
  esac
done

if ! [[ "$np" =~ ^[1-9][0-9]*$ ]]; then
  echo "train.sh: -np $np is not a positive integer" >&2
  exit 2
fi
if [[ -n "$per_node" ]] && ! [[ "$per_node" =~ ^[1-9][0-9]*$ ]]; then
  echo "train.sh: --per-node $per_node is not a positive integer" >&2
  exit 2
fi
if [[ -n "$hostfile" && ! -r "$hostfile" ]]; then
  echo "train.sh: cannot read hostfile $hostfile" >&2
  exit 2
fi

cmd=("$MPIRUN" -np "$np")
[[ -n "$hostfile" ]] && cmd+=(--hostfile "$hostfile")
if [[ -n "$per_node" ]]; then
  cmd+=(--map-by "ppr:${per_node}:node")
else
  cmd+=(--map-by slot)
fi
# No binding: lattice sizes each rank's OpenMP pool itself (node cores / ranks on the node, unless
# train.threads is set), and Open MPI's default (bind to one core when np <= 2) would squeeze
# that whole pool onto a single core.
cmd+=(--bind-to none)
# Remote ranks start with the environment of a fresh login; send the paths that found the
# binary's libraries here.
cmd+=(-x PATH)
[[ -n "${LD_LIBRARY_PATH:-}" ]] && cmd+=(-x LD_LIBRARY_PATH)
if [[ -n "${MPIRUN_ARGS:-}" ]]; then
  read -r -a extra <<< "$MPIRUN_ARGS"
  cmd+=("${extra[@]}")
fi
cmd+=("$LATTICE_BIN" train --config "$CONFIG" "${train_args[@]}")

if [[ "$dry_run" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
