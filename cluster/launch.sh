#!/usr/bin/env bash
# Starts N ranks of `lattice <command>`: prints the launch line, then runs it.
#
#   cluster/launch.sh [-n N] [--per-node K] [--hostfile F] [--bind auto|core|none]
#                     [--launcher auto|mpirun|srun] [--dry-run] [--] <lattice command and args>
#   cluster/launch.sh -n 4 train --config configs/tiny-gpt2.yaml --set data.train=data.bin
#
# -n N          ranks (world size); default: $SLURM_NTASKS inside an allocation, else 1
# --per-node K  ranks per node; default: all on this node, or the hostfile's slots in order
# --hostfile F  Open MPI hostfile ("host slots=K" per line) for several nodes over ssh
# --bind MODE   mpirun only. core: each rank gets (cores per node / ranks per node) cores of its
#               own (--map-by ...:PE=c --bind-to core), and lattice sizes its thread pool to
#               them; none: no binding (each rank's pool shares the node). auto (default): core
#               when every rank gets at least one core of this node, else none
# --launcher L  auto (default): srun inside a Slurm allocation (SLURM_JOB_ID set) unless a
#               hostfile is given, else mpirun
# --dry-run     print the line, do not run it
#
# mpirun: the environment of the ranks on other nodes is a fresh ssh login's, so the line
# forwards PATH, LD_LIBRARY_PATH and every NCCL_*, LATTICE_* and OMP_* variable set here
# (-x NAME; OMPI_* variables travel by themselves). srun: `srun --mpi=pmix` (the only plugin
# that initialises Open MPI 4.1 on Debian 12: `srun --mpi=list` also offers pmi2, cray_shasta
# and none, which abort in MPI_Init), which passes the whole environment and binds as the
# cluster's TaskPlugin and --cpus-per-task say.
# LATTICE_BIN (default build/lattice), MPIRUN (default mpirun) and SRUN (default srun) pick the
# programs; MPIRUN_ARGS / SRUN_ARGS (word-split) add arguments.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LATTICE_BIN="${LATTICE_BIN:-$ROOT/build/lattice}"
MPIRUN="${MPIRUN:-mpirun}"
SRUN="${SRUN:-srun}"
np=""
per_node=""
hostfile=""
bind=auto
launcher=auto
dry_run=0

usage() { sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
fail() { echo "launch.sh: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || fail "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|-np|--np) need_value "$@"; np="$2"; shift 2 ;;
    --per-node) need_value "$@"; per_node="$2"; shift 2 ;;
    --hostfile) need_value "$@"; hostfile="$2"; shift 2 ;;
    --bind) need_value "$@"; bind="$2"; shift 2 ;;
    --launcher) need_value "$@"; launcher="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) fail "unknown option '$1' (see --help; lattice's own options come after its command)" ;;
    *) break ;;
  esac
done
[[ $# -gt 0 ]] || fail "give the lattice command to run, e.g. train --config configs/tiny-gpt2.yaml"

case "$bind" in auto|core|none) ;; *) fail "--bind $bind: use auto, core or none" ;; esac
case "$launcher" in
  auto) if [[ -n "${SLURM_JOB_ID:-}" && -z "$hostfile" ]]; then launcher=srun; else launcher=mpirun; fi ;;
  mpirun|srun) ;;
  *) fail "--launcher $launcher: use auto, mpirun or srun" ;;
esac
if [[ -z "$np" ]]; then
  if [[ "$launcher" == srun && -n "${SLURM_NTASKS:-}" ]]; then np="$SLURM_NTASKS"; else np=1; fi
fi
[[ "$np" =~ ^[1-9][0-9]*$ ]] || fail "-n $np is not a positive integer"
[[ -z "$per_node" || "$per_node" =~ ^[1-9][0-9]*$ ]] || fail "--per-node $per_node is not a positive integer"
[[ -z "$hostfile" || -r "$hostfile" ]] || fail "cannot read hostfile $hostfile"
[[ "$launcher" == mpirun || -z "$hostfile" ]] || fail "--hostfile is for mpirun; srun takes the nodes of the allocation"

if [[ "$launcher" == srun ]]; then
  cmd=("$SRUN" --mpi=pmix -n "$np")
  [[ -n "$per_node" ]] && cmd+=(--ntasks-per-node "$per_node")
  # Since Slurm 22.05 srun does not inherit the allocation's --cpus-per-task.
  [[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && cmd+=(--cpus-per-task "$SLURM_CPUS_PER_TASK")
  if [[ -n "${SRUN_ARGS:-}" ]]; then
    read -r -a extra <<< "$SRUN_ARGS"
    cmd+=("${extra[@]}")
  fi
else
  cmd=("$MPIRUN" -np "$np")
  [[ -n "$hostfile" ]] && cmd+=(--hostfile "$hostfile")
  # Ranks on one node: --per-node, else all of them when they stay on this node; unknown for
  # a hostfile without --per-node (its slots may differ per node).
  local_ranks="$per_node"
  [[ -z "$local_ranks" && -z "$hostfile" ]] && local_ranks="$np"
  # The cores this process may use; GNU nproc would report OMP_NUM_THREADS instead where set.
  cores="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
  pe=0
  if [[ "$bind" != none && -n "$local_ranks" && "$local_ranks" -le "$cores" ]]; then
    pe=$((cores / local_ranks))
  elif [[ "$bind" == core ]]; then
    fail "--bind core: ${local_ranks:-an unknown number of} ranks per node do not each get a core of this node's $cores (give --per-node, or --bind none)"
  fi
  map="slot"
  [[ -n "$per_node" ]] && map="ppr:${per_node}:node"
  if [[ "$pe" -gt 0 ]]; then
    # PE=c: c cores per rank; lattice sizes its OpenMP pool to its affinity mask.
    cmd+=(--map-by "${map}:PE=${pe}" --bind-to core)
  else
    # Open MPI's default (bind to one core when np <= 2) would squeeze a rank's whole thread
    # pool onto one core.
    cmd+=(--map-by "$map" --bind-to none)
  fi
  cmd+=(-x PATH)
  [[ -n "${LD_LIBRARY_PATH:-}" ]] && cmd+=(-x LD_LIBRARY_PATH)
  while IFS= read -r name; do
    cmd+=(-x "$name")
  done < <(compgen -e | grep -E '^(NCCL|LATTICE|OMP)_' | sort)
  if [[ -n "${MPIRUN_ARGS:-}" ]]; then
    read -r -a extra <<< "$MPIRUN_ARGS"
    cmd+=("${extra[@]}")
  fi
fi
cmd+=("$LATTICE_BIN" "$@")

printf -v line '%q ' "${cmd[@]}"
if [[ "$dry_run" == 1 ]]; then
  echo "${line% }"
  exit 0
fi
echo "launch.sh: ${line% }" >&2
exec "${cmd[@]}"
