#!/usr/bin/env bash
# Stops the one-node Slurm that cluster/slurm/local/start.sh started: slurmd, slurmctld, then
# munged, each by the pid file under $LATTICE_SLURM_DIR (default /tmp/lattice-slurm), so no
# other Slurm or munge on the machine is touched. Idempotent: what is not running is skipped.
#
#   cluster/slurm/local/stop.sh [--purge]
#
# --purge   also remove $LATTICE_SLURM_DIR (config, key, logs, state); by default it stays, so
#           the logs can be read after a failed test.
#
# Jobs still queued or running are cancelled first (up to 10 s for them to end).
set -euo pipefail

DIR="${LATTICE_SLURM_DIR:-/tmp/lattice-slurm}"
purge=0
case "${1:-}" in
  "") ;;
  --purge) purge=1 ;;
  -h|--help) sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) echo "stop.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

# stop NAME PIDFILE: SIGTERM, then up to 10 s for a clean exit (slurmctld saves its state),
# then SIGKILL.
stop() {
  local name="$1" pidfile="$2" pid
  if [[ ! -s "$pidfile" ]]; then return 0; fi
  pid="$(cat "$pidfile")"
  if ! kill -0 "$pid" 2> /dev/null; then
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 20); do
    if ! kill -0 "$pid" 2> /dev/null; then
      echo "stop.sh: stopped $name (pid $pid)"
      rm -f "$pidfile"
      return 0
    fi
    sleep 0.5
  done
  echo "stop.sh: $name (pid $pid) ignored SIGTERM for 10 s: killing it" >&2
  kill -KILL "$pid" 2> /dev/null || true
  rm -f "$pidfile"
}

if [[ -d "$DIR" ]]; then
  # Jobs first, so that no slurmstepd and no job outlives its daemons.
  if [[ -s "$DIR/slurm.conf" ]] && SLURM_CONF="$DIR/slurm.conf" scontrol ping > /dev/null 2>&1; then
    export SLURM_CONF="$DIR/slurm.conf"
    jobs="$(squeue -h -o %i 2> /dev/null || true)"
    if [[ -n "$jobs" ]]; then
      # shellcheck disable=SC2086  # one job id per word
      scancel $jobs || true
      for _ in $(seq 20); do
        [[ -z "$(squeue -h -o %i 2> /dev/null)" ]] && break
        sleep 0.5
      done
    fi
  fi
  stop slurmd "$DIR/run/slurmd.pid"
  stop slurmctld "$DIR/run/slurmctld.pid"
  stop munged "$DIR/munge/munged.pid"
  if [[ "$purge" == 1 ]]; then
    rm -rf "$DIR"
    echo "stop.sh: removed $DIR"
  fi
fi
echo "stop.sh: local Slurm is down"
