#!/usr/bin/env bash
# Starts a real one-node Slurm on this machine: munged, slurmctld and slurmd from Debian's
# packages (slurmctld slurmd slurm-client munge; scripts/install-deps.sh installs them), no
# systemd. For the tests that submit jobs (ctest label `slurm`) and for trying the sbatch
# templates before a real cluster.
#
#   cluster/slurm/local/start.sh [--cpus N]
#   export SLURM_CONF=/tmp/lattice-slurm/slurm.conf      # what start.sh prints last
#   sbatch ...; squeue; cluster/slurm/local/stop.sh
#
# --cpus N   CPUs the node declares; default: this machine's (nproc). More than the machine has
#            lets a 2-core machine run --ntasks-per-node=4 (Slurm refuses that at submission
#            otherwise, even with --overcommit); the tasks then share the cores by time.
#
# Everything lives under $LATTICE_SLURM_DIR (default /tmp/lattice-slurm): slurm.conf, the munge
# key and socket, the daemons' pid files, logs, spool and state. Nothing in /etc or /run is
# touched, so a system munge or Slurm on the same machine is left alone (but the ports are
# Slurm's defaults, 6817 and 6818, or $LATTICE_SLURM_PORT and the next one).
#
# Idempotent: daemons already running from this directory are kept; only missing ones start.
# A fresh slurmctld starts with an empty job table (-c): the cluster holds no jobs of earlier
# runs. Needs root (slurmd starts job steps as the submitting user). Exits non-zero, with the
# log's last lines, when a daemon does not come up within 30 s.
set -euo pipefail

DIR="${LATTICE_SLURM_DIR:-/tmp/lattice-slurm}"
PORT="${LATTICE_SLURM_PORT:-6817}"
# GNU nproc would report OMP_NUM_THREADS instead of the cores where it is set.
cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
cpus_given=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpus)
      if [[ $# -lt 2 || ! "$2" =~ ^[1-9][0-9]*$ ]]; then
        echo "start.sh: --cpus needs a positive integer" >&2
        exit 2
      fi
      cpus="$2"; cpus_given=1; shift 2 ;;
    -h|--help) sed -n '2,22s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "start.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [[ "$(id -u)" -ne 0 ]]; then
  echo "start.sh: needs root (slurmd starts job steps as their user); run it with sudo" >&2
  exit 1
fi
for bin in munged mungekey slurmctld slurmd scontrol sinfo; do
  if ! command -v "$bin" > /dev/null; then
    echo "start.sh: $bin not found: install slurmctld slurmd slurm-client munge" \
         "(bash scripts/install-deps.sh)" >&2
    exit 1
  fi
done
if ! id munge > /dev/null 2>&1; then
  echo "start.sh: no 'munge' user: is Debian's munge package installed?" >&2
  exit 1
fi

# slurmd finds its node by the short host name, so NodeName must be exactly that.
host="$(hostname -s)"
# MemTotal in MiB, what `slurmd -C` reports as RealMemory.
mem_mib="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
conf="$DIR/slurm.conf"
socket="$DIR/munge/munge.socket"

mkdir -p "$DIR"/{state,spool,log,run}
# munged refuses a key, socket or pid directory that others may write, and runs as munge.
install -d -m 0755 -o munge -g munge "$DIR/munge"
if [[ ! -s "$DIR/munge/munge.key" ]]; then
  runuser -u munge -- mungekey --create --keyfile="$DIR/munge/munge.key"
fi

# pid_alive FILE: the pid in FILE names a running process.
pid_alive() {
  [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2> /dev/null
}
# wait_for WHAT LOG COMMAND...: retries COMMAND for 30 s (each daemon is up in 1-3 s here).
wait_for() {
  local what="$1" log="$2"
  shift 2
  for _ in $(seq 60); do
    if "$@" > /dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "start.sh: $what did not come up within 30 s; last lines of $log:" >&2
  tail -n 20 "$log" >&2 || true
  exit 1
}

# The config is rewritten only when no daemon runs (a running slurmctld keeps its own copy).
if pid_alive "$DIR/run/slurmctld.pid" || pid_alive "$DIR/run/slurmd.pid"; then
  running_cpus="$(sed -n 's/^NodeName=.* CPUs=\([0-9]*\) .*/\1/p' "$conf")"
  if [[ "$cpus_given" == 1 && "$running_cpus" != "$cpus" ]]; then
    echo "start.sh: Slurm already runs from $DIR with CPUs=$running_cpus; stop it first" \
         "(cluster/slurm/local/stop.sh) to start it with --cpus $cpus" >&2
    exit 1
  fi
  cpus="$running_cpus"
else
  cat > "$conf.tmp" <<EOF
# Written by cluster/slurm/local/start.sh: a one-node Slurm for tests (REFERENCE.md section 1).
ClusterName=lattice-local
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${PORT}
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
# Its own munged (socket under this directory); cred_expire is also how long a requeued job
# waits before it may start again (default 120 s; 5 is Slurm's minimum).
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${socket},cred_expire=5
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${DIR}/run/slurmctld.pid
SlurmdPidFile=${DIR}/run/slurmd.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
# No cgroups in a container: processes are tracked by parent pid, tasks are not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# srun --mpi=pmix is what Open MPI 4.1 initialises under (pmi2 and none abort in MPI_Init).
MpiDefault=pmix
ReturnToService=2
# Schedule a submitted or requeued job within about a second, not at the next minute's pass.
SchedulerParameters=sched_min_interval=100000,sched_interval=1
# Declared CPUs may exceed the machine's (--cpus): take the node as declared.
SlurmdParameters=config_overrides
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mib} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  mv "$conf.tmp" "$conf"
fi
export SLURM_CONF="$conf"

if ! pid_alive "$DIR/munge/munged.pid"; then
  runuser -u munge -- munged --socket="$socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
fi
munge_ok() { munge -n -S "$socket" | unmunge -S "$socket"; }
wait_for munged "$DIR/munge/munged.log" munge_ok

if ! pid_alive "$DIR/run/slurmctld.pid"; then
  slurmctld -c -f "$conf"
fi
wait_for slurmctld "$DIR/log/slurmctld.log" scontrol ping
if ! pid_alive "$DIR/run/slurmd.pid"; then
  slurmd -c -f "$conf"
fi
node_idle() { sinfo -h -n "$host" -o %T | grep -Eq '^(idle|mixed|allocated)'; }
wait_for "slurmd (node $host idle)" "$DIR/log/slurmd.log" node_idle

echo "start.sh: Slurm is up: node $host, ${cpus} CPUs, ${mem_mib} MiB, partition debug, state in $DIR"
echo "export SLURM_CONF=$conf"
