#!/usr/bin/env python3
# LATTICE_TEST_LABELS: slurm
"""Acceptance 2 of issue 13 on a real Slurm (cluster/slurm/local/start.sh; skipped without one):
`scancel --signal=USR1 --batch <job>` of a running cluster/slurm/train.sbatch job (4 tasks)
leads to a committed checkpoint, a requeue (`scontrol requeue` from run-and-requeue.sh) and a
completed run that resumed from that checkpoint, whose per-step metrics (loss, grad norm, lr,
consumed samples; each step once in the metrics file) equal an uninterrupted run's bit for bit:

A. mid-run, the signal sent twice in a row;
B. while a checkpoint save is in flight (async saves every iteration, so a save is being written
   or awaiting its commit at any moment; the log must say the signal landed during it), and
   once more in the requeued run (two preemptions, two requeues).

A signal during a SYNC save, and one rank signalled alone, are in preemption_mpirun_test.py
(a direct kill lands inside a millisecond-long save; Slurm's signal path takes longer).
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_common as cc  # noqa: E402

# Enough iterations that a run is still going when Slurm's signal arrives (about 15 ms per
# iteration of 4 ranks on 2 cores; scancel to the ranks took up to ~0.3 s here).
STEPS = 60
STOP_AFTER = 3  # signal once the metrics show this step
TEMPLATE = os.path.join(cc.SRC, "cluster", "slurm", "train.sbatch")


def submit(env, tmp, name, data, metrics, extra):
    jenv = dict(env, CONFIG=cc.TINY, LATTICE_BIN=cc.LATTICE,
                CHECKPOINT_DIR=os.path.join(tmp, f"ckpt-{name}"))
    return cc.sbatch(jenv, ["--ntasks-per-node=4", "--cpus-per-task=1", "--time=10",
                            f"--job-name={name}", f"--output={tmp}/{name}-%j.out", TEMPLATE]
                     + cc.train_sets(data, STEPS, metrics, extra))


def stops_in(out):
    """The iterations the log says the run stopped after, in order."""
    marker = "lattice train: stopping after iteration "
    return [int(part.split()[0]) for part in out.split(marker)[1:]]


def check_requeued_run(label, env, tmp, name, job, metrics, ref, requeues):
    info = cc.wait_job(env, job, 300)
    path = os.path.join(tmp, f"{name}-{job}.out")
    out = open(path).read() if os.path.exists(path) else "(no job output)"
    cc.check(f"{label}: job {job} COMPLETED after {requeues} requeue(s) ({info.get('JobState')}, "
             f"Restarts={info.get('Restarts')}, ExitCode={info.get('ExitCode')})",
             info.get("JobState") == "COMPLETED" and info.get("Restarts") == str(requeues) and
             info.get("ExitCode") == "0:0", out)
    stops = stops_in(out)
    ckpt = os.path.join(tmp, f"ckpt-{name}")
    cc.check(f"{label}: {requeues} stop(s) at iterations {stops}, each committed "
             f"(have {cc.committed(ckpt)})",
             len(stops) == requeues and all(0 < s < STEPS and s in cc.committed(ckpt) for s in stops),
             out)
    cc.check(f"{label}: run-and-requeue.sh requeued the job {requeues} time(s)",
             out.count("requeueing job") == requeues and out.count("forwarding it to the step") >= requeues,
             out)
    for i, s in enumerate(stops, 1):
        cc.check(f"{label}: restart {i} resumed from step_{s:08d}",
                 f"(restart {i})" in out and f"resumed from {ckpt}/step_{s:08d} " in out, out)
    diff = cc.same_rows(cc.rows_of(metrics), ref)
    cc.check(f"{label}: metrics equal the uninterrupted run bit for bit", diff == "",
             diff + "\n" + out)
    return out


def wait_for_step(metrics, step, after=0):
    """Waits until the metrics file shows `step`, counting only rows after the first `after`."""
    return cc.wait_until(lambda: any(r["step"] >= step for r in cc.rows_of(metrics)[after:]),
                         120, poll=0.01)


def main():
    env = cc.slurm_or_skip(min_cpus=4)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        data = cc.make_data(tmp)
        ref_metrics = os.path.join(tmp, "ref.jsonl")
        r = subprocess.run(cc.mpirun(4) + [cc.LATTICE] + cc.train_args(data, STEPS, ref_metrics),
                           capture_output=True, text=True, env=cc.ENV, timeout=300)
        if not cc.check("uninterrupted mpirun -np 4 run", r.returncode == 0, r.stdout + r.stderr):
            return cc.finish("slurm_preemption_test")
        ref = cc.rows_of(ref_metrics)

        # A. Mid-run, twice in a row.
        metrics = os.path.join(tmp, "a.jsonl")
        job = submit(env, tmp, "prempt-a", data, metrics, ["--set", "checkpoint.interval=10"])
        if wait_for_step(metrics, STOP_AFTER):
            for _ in range(2):
                r = cc.scancel_batch_usr1(env, job)
                cc.check("A: scancel --signal=USR1 --batch", r.returncode == 0, r.stderr)
        else:
            cc.check("A: the job reached iteration 3", False, cc.job_info(env, job))
        out = check_requeued_run("A", env, tmp, "prempt-a", job, metrics, ref, 1)
        cc.check("A: both signals reached the batch shell",
                 out.count("batch shell got SIGUSR1") == 2, out)

        # B. During an (async) save, then again after the requeue.
        metrics = os.path.join(tmp, "b.jsonl")
        job = submit(env, tmp, "prempt-b", data, metrics,
                     ["--set", "checkpoint.interval=1", "--set", "checkpoint.async=true"])
        ok = bool(wait_for_step(metrics, STOP_AFTER))
        if ok:
            cc.scancel_batch_usr1(env, job)
            # The requeued run truncates the metrics after its checkpoint and appends: wait for
            # a row past the first stop's resume before the second signal.
            ok = bool(cc.wait_until(lambda: cc.job_info(env, job).get("Restarts") == "1", 120, 0.1))
            rows_before = len(cc.rows_of(metrics))
            ok = ok and bool(wait_for_step(metrics, 1, after=rows_before))
            if ok:
                cc.scancel_batch_usr1(env, job)
        cc.check("B: signalled in both runs", ok, cc.job_info(env, job))
        out = check_requeued_run("B", env, tmp, "prempt-b", job, metrics, ref, 2)
        cc.check("B: the first signal landed during a checkpoint save",
                 "SIGUSR1 (received during a checkpoint save)" in out, out)
    return cc.finish("slurm_preemption_test")


if __name__ == "__main__":
    sys.exit(main())
