#!/usr/bin/env python3
"""Preemption under plain mpirun, no Slurm (launcher/preemption.h): the signal path on its own.

1. SIGUSR1 to ONE rank of `mpirun -np 2` mid-run: every rank stops at the same step boundary
   (the max all-reduce), a checkpoint of that iteration is committed, mpirun exits 75; the same
   command again resumes and completes, and the metrics (loss, grad norm, lr, consumed samples of
   every step, each step once) equal the uninterrupted run's bit for bit.
2. SIGTERM to one rank while rank 0 is writing a checkpoint (sync saves every iteration; sent the
   moment the save's .tmp.step_* directory appears, and the log must say it landed during a
   save): the save still commits, the stop saves nothing twice, and the resume is bit for bit.
3. Async saves: SIGUSR1 to mpirun itself (which forwards it to both ranks) while a background
   save is in flight: it is committed, the stopping iteration is saved, resume bit for bit.
4. train.exit_after_minutes (one process): a limit already passed stops after every iteration
   with exit 75 and a checkpoint; running the command until it exits 0 (3 stops, then the last
   iteration) gives the uninterrupted run's metrics.
5. A signal without checkpoint.dir is an error (exit 1) that says nothing was saved.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_common as cc  # noqa: E402

STEPS = 30
STOP_AFTER = 3  # signal once the metrics show this step


def start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cc.ENV)


def ranks_of(mpirun_pid):
    """The rank processes mpirun started on this node (its children)."""
    r = subprocess.run(["ps", "-o", "pid=", "--ppid", str(mpirun_pid)], capture_output=True,
                       text=True)
    return [int(p) for p in r.stdout.split()]


def resume(tmp, label, cmd, ref, metrics, ckpt, stop_log):
    """Runs `cmd` again to completion and checks the whole metrics file against `ref`."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=cc.ENV, timeout=300)
    cc.check(f"{label}: the resumed run completes (exit {r.returncode})",
             r.returncode == 0 and "resumed from" in r.stdout + r.stderr, r.stdout + r.stderr)
    diff = cc.same_rows(cc.rows_of(metrics), ref)
    cc.check(f"{label}: metrics equal the uninterrupted run bit for bit", diff == "",
             diff + "\n" + stop_log)


def stopped_ok(label, out, rc, ckpt, world):
    cc.check(f"{label}: exit status {cc.STOPPED}", rc == cc.STOPPED, out)
    # Every rank reports the stop (main prints it once per process), nobody aborts.
    n = out.count("lattice train: stopped after iteration")
    cc.check(f"{label}: all {world} ranks stopped with a checkpoint", n == world and
             "MPI_ABORT" not in out, out)
    marker = "lattice train: stopping after iteration "
    if not cc.check(f"{label}: rank 0 logs the stop", marker in out, out):
        return None
    it = int(out.split(marker, 1)[1].split()[0])
    cc.check(f"{label}: checkpoint of iteration {it} committed (have {cc.committed(ckpt)})",
             it in cc.committed(ckpt) and it < STEPS, out)
    return it


def main():
    if not cc.mpirun_present():
        return cc.finish("preemption_mpirun_test")
    with tempfile.TemporaryDirectory() as tmp:
        data = cc.make_data(tmp)
        ref_metrics = os.path.join(tmp, "ref.jsonl")
        r = subprocess.run(cc.mpirun(2) + [cc.LATTICE] + cc.train_args(data, STEPS, ref_metrics),
                           capture_output=True, text=True, env=cc.ENV, timeout=300)
        if not cc.check("uninterrupted mpirun -np 2 run", r.returncode == 0, r.stdout + r.stderr):
            return cc.finish("preemption_mpirun_test")
        ref = cc.rows_of(ref_metrics)

        # 1. SIGUSR1 to one rank only.
        ckpt = os.path.join(tmp, "c1")
        metrics = os.path.join(tmp, "m1.jsonl")
        cmd = cc.mpirun(2) + [cc.LATTICE] + cc.train_args(
            data, STEPS, metrics, ["--set", f"checkpoint.dir={ckpt}", "--set", "checkpoint.interval=10"])
        p = start(cmd)
        seen = cc.wait_until(lambda: any(x["step"] >= STOP_AFTER for x in cc.rows_of(metrics)), 120)
        ranks = ranks_of(p.pid)
        if seen and len(ranks) == 2:
            os.kill(ranks[1], signal.SIGUSR1)
        out, _ = p.communicate(timeout=300)
        cc.check("1: two ranks found and signalled mid-run", bool(seen) and len(ranks) == 2, ranks)
        it = stopped_ok("1: SIGUSR1 to one rank", out, p.returncode, ckpt, 2)
        if it is not None:
            cc.check("1: the stop names SIGUSR1", f"after iteration {it} on SIGUSR1" in out, out)
            resume(tmp, "1", cmd, ref, metrics, ckpt, out)

        # 2. SIGTERM to one rank during a sync save (every iteration saves).
        for attempt in range(3):
            ckpt = os.path.join(tmp, f"c2_{attempt}")
            metrics = os.path.join(tmp, f"m2_{attempt}.jsonl")
            cmd = cc.mpirun(2) + [cc.LATTICE] + cc.train_args(
                data, STEPS, metrics,
                ["--set", f"checkpoint.dir={ckpt}", "--set", "checkpoint.interval=1"])
            p = start(cmd)
            cc.wait_until(lambda: any(x["step"] >= STOP_AFTER for x in cc.rows_of(metrics)), 120)
            saving = cc.wait_until(
                lambda: os.path.isdir(ckpt) and any(n.startswith(".tmp.step_") for n in os.listdir(ckpt)),
                30, poll=0.0005)
            ranks = ranks_of(p.pid)
            if saving and ranks:
                os.kill(ranks[-1], signal.SIGTERM)
            out, _ = p.communicate(timeout=300)
            if "received during a checkpoint save" in out or attempt == 2:
                break
            print(f"[retry] 2: the signal landed outside the save (attempt {attempt + 1})")
        cc.check("2: the SIGTERM landed during a checkpoint save",
                 "SIGTERM (received during a checkpoint save)" in out, out)
        if stopped_ok("2: SIGTERM during a save", out, p.returncode, ckpt, 2) is not None:
            resume(tmp, "2", cmd, ref, metrics, ckpt, out)

        # 3. Async: SIGUSR1 to mpirun (forwarded to every rank), twice, with a save in flight.
        ckpt = os.path.join(tmp, "c3")
        metrics = os.path.join(tmp, "m3.jsonl")
        cmd = cc.mpirun(2) + [cc.LATTICE] + cc.train_args(
            data, STEPS, metrics, ["--set", f"checkpoint.dir={ckpt}", "--set", "checkpoint.interval=2",
                                   "--set", "checkpoint.async=true"])
        p = start(cmd)
        cc.wait_until(lambda: any(x["step"] >= STOP_AFTER for x in cc.rows_of(metrics)), 120)
        p.send_signal(signal.SIGUSR1)
        time.sleep(0.01)
        p.send_signal(signal.SIGUSR1)
        out, _ = p.communicate(timeout=300)
        if stopped_ok("3: SIGUSR1 twice to mpirun, async saves", out, p.returncode, ckpt, 2) is not None:
            resume(tmp, "3", cmd, ref, metrics, ckpt, out)

        # 4. train.exit_after_minutes in one process: 1e-9 minutes has passed before any step.
        ref1_metrics = os.path.join(tmp, "ref1.jsonl")
        r = subprocess.run([cc.LATTICE] + cc.train_args(data, 4, ref1_metrics), capture_output=True,
                           text=True, env=cc.ENV, timeout=300)
        ref1 = cc.rows_of(ref1_metrics)
        ckpt = os.path.join(tmp, "c4")
        metrics = os.path.join(tmp, "m4.jsonl")
        cmd = [cc.LATTICE] + cc.train_args(data, 4, metrics, [
            "--set", f"checkpoint.dir={ckpt}", "--set", "train.exit_after_minutes=1e-9"])
        codes, outs = [], []
        for _ in range(6):
            r = subprocess.run(cmd, capture_output=True, text=True, env=cc.ENV, timeout=300)
            codes.append(r.returncode)
            outs.append(r.stdout + r.stderr)
            if r.returncode != cc.STOPPED:
                break
        cc.check(f"4: exit_after_minutes stops after each iteration, then completes (exits {codes})",
                 codes == [cc.STOPPED] * 3 + [0], "\n".join(outs))
        cc.check("4: the stop names the limit",
                 "stopping after iteration 1 on train.exit_after_minutes=1e-09 reached" in outs[0],
                 outs[0])
        diff = cc.same_rows(cc.rows_of(metrics), ref1)
        cc.check("4: metrics equal the uninterrupted run bit for bit", diff == "", diff)

        # 5. No checkpoint.dir: an error, not a silent loss of the run.
        r = subprocess.run([cc.LATTICE] + cc.train_args(
            data, 4, os.path.join(tmp, "m5.jsonl"), ["--set", "train.exit_after_minutes=1e-9"]),
            capture_output=True, text=True, env=cc.ENV, timeout=300)
        cc.check("5: a stop without checkpoint.dir exits 1 and says nothing was saved",
                 r.returncode == 1 and "checkpoint.dir is empty" in r.stderr, r.stdout + r.stderr)
    return cc.finish("preemption_mpirun_test")


if __name__ == "__main__":
    sys.exit(main())
