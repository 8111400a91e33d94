#!/usr/bin/env bash
# The tail of the sbatch templates: runs one job step (normally `srun ... lattice train ...`),
# forwards the batch shell's SIGUSR1 / SIGTERM to it, and requeues the job when lattice stopped
# early with a checkpoint.
#
#   exec cluster/slurm/run-and-requeue.sh srun --mpi=pmix build/lattice train --config ...
#
# Why it is needed: `#SBATCH --signal=B:USR1@120` and `scancel --signal=USR1 --batch` signal
# only the batch shell, and a shell runs its traps only between commands, never while waiting
# for a foreground one. So the step runs in the background, `wait` is interrupted by the trap,
# the trap sends the signal to srun (which forwards it to every task), and the script waits
# again. Every rank then agrees at the next step boundary, saves a checkpoint and exits with
# status 75 (launcher/preemption.h); srun returns 75; this script calls
# `scontrol requeue $SLURM_JOB_ID`: the job goes back to the queue (the batch script starts
# again from the top, with SLURM_RESTART_COUNT one higher) and `checkpoint.resume: auto`
# resumes from the newest committed checkpoint. Any other status is the job's status.
#
# Used with exec, this script IS the batch shell (same pid), so it is what Slurm signals.
# LATTICE_MAX_REQUEUES (default 100) caps the requeues of one job, so a job that is stopped
# on every start cannot cycle for ever.
set -uo pipefail

if [[ $# -eq 0 ]]; then
  echo "run-and-requeue.sh: give the command to run (e.g. srun --mpi=pmix build/lattice train ...)" >&2
  exit 2
fi
# lattice train's exit status after a stop with a committed checkpoint (kStoppedExitCode).
readonly STOPPED=75
max_requeues="${LATTICE_MAX_REQUEUES:-100}"
restarts="${SLURM_RESTART_COUNT:-0}"

"$@" &
step=$!

# Both signals go on as SIGUSR1: srun (and mpirun) forward SIGUSR1 to every task, but answer
# SIGTERM by killing the step themselves ("srun: forcing job termination"), which would leave
# no time to save. (A real preemption's SIGTERM also reaches every task directly from Slurm.)
# shellcheck disable=SC2317  # called from the traps below
forward() {
  echo "run-and-requeue.sh: batch shell got SIG$1 at $(date -u +%H:%M:%S): forwarding it to the step (pid $step) as SIGUSR1"
  kill -s USR1 "$step" 2> /dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# `wait` returns early (status > 128) whenever a trapped signal arrives: wait again until the
# step has really ended. Bash remembers a background job's status, so the final `wait` gives
# it even when the step ended during the trap.
status=0
while kill -0 "$step" 2> /dev/null; do
  wait "$step"
  status=$?
done
wait "$step" 2> /dev/null
last=$?
if [[ "$last" -ne 127 ]]; then status="$last"; fi

if [[ "$status" -ne "$STOPPED" ]]; then
  exit "$status"
fi
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "run-and-requeue.sh: the step stopped early with a checkpoint (status $STOPPED); not in a Slurm job, so nothing is requeued"
  exit "$STOPPED"
fi
if [[ "$restarts" -ge "$max_requeues" ]]; then
  echo "run-and-requeue.sh: the step stopped early again, but job $SLURM_JOB_ID was requeued $restarts times (LATTICE_MAX_REQUEUES=$max_requeues): not requeueing" >&2
  exit "$STOPPED"
fi
echo "run-and-requeue.sh: the step stopped early with a checkpoint: requeueing job $SLURM_JOB_ID (restart $((restarts + 1)))"
if ! scontrol requeue "$SLURM_JOB_ID"; then
  echo "run-and-requeue.sh: scontrol requeue $SLURM_JOB_ID failed (is the job requeueable: #SBATCH --requeue, JobRequeue?); resubmit it to resume" >&2
  exit "$STOPPED"
fi
# The requeue ends this run of the batch script; nothing after it matters.
exit 0
