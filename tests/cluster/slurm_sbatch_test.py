#!/usr/bin/env python3
# LATTICE_TEST_LABELS: slurm
"""Acceptance 1 of issue 13 on a real Slurm (cluster/slurm/local/start.sh; skipped without one):

1. `sbatch --ntasks-per-node=4 cluster/slurm/train.sbatch` (the one-node template, srun
   --mpi=pmix inside) trains the tiny config to completion, and its per-step metrics (loss, grad
   norm, lr, consumed samples) equal the same run under plain `mpirun -np 4` bit for bit.
2. `cluster/launch.sh` inside an allocation picks `srun --mpi=pmix`, prints the line, and the
   run's metrics equal the same reference.
3. cluster/slurm/local/start.sh run again on the running Slurm is a no-op that says it is up
   (the same daemons, by their pid files), when the test's Slurm is that one.
4. Both templates pass `bash -n` and shellcheck (where installed), keep every #SBATCH line before
   the first command, and carry the preemption directives (--signal=B:USR1@120, --requeue);
   the multi-node one reserves one GPU per task, the one-node one does not hard-code it.
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_common as cc  # noqa: E402

STEPS = 6
ONE_NODE = os.path.join(cc.SRC, "cluster", "slurm", "train.sbatch")
MULTI = os.path.join(cc.SRC, "cluster", "slurm", "train-multinode.sbatch")


def directives(path):
    """The #SBATCH lines sbatch reads (it stops at the first command) and any after it."""
    lines, late, seen_command = [], [], False
    for i, line in enumerate(open(path), 1):
        s = line.strip()
        if i == 1 or not s:
            continue
        if s.startswith("#SBATCH"):
            (late if seen_command else lines).append(s)
        elif not s.startswith("#"):
            seen_command = True
    return lines, late


def check_templates():
    for path in (ONE_NODE, MULTI, os.path.join(cc.SRC, "cluster", "slurm", "run-and-requeue.sh"),
                 os.path.join(cc.SRC, "cluster", "launch.sh")):
        name = os.path.relpath(path, cc.SRC)
        r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
        cc.check(f"bash -n {name}", r.returncode == 0, r.stderr)
        if shutil.which("shellcheck"):
            r = subprocess.run(["shellcheck", path], capture_output=True, text=True)
            cc.check(f"shellcheck {name}", r.returncode == 0, r.stdout)
    for path, gpus in ((ONE_NODE, False), (MULTI, True)):
        name = os.path.relpath(path, cc.SRC)
        lines, late = directives(path)
        cc.check(f"{name}: every #SBATCH line precedes the first command", not late, late)
        for d in ("--signal=B:USR1@120", "--requeue", "--open-mode=append", "--ntasks-per-node"):
            cc.check(f"{name}: #SBATCH {d}", any(d in x for x in lines), lines)
        cc.check(f"{name}: --gpus-per-node {'set' if gpus else 'not hard-coded'}",
                 any("--gpus-per-node" in x for x in lines) == gpus, lines)


def main():
    check_templates()
    env = cc.slurm_or_skip(min_cpus=4)
    local = os.environ.get("LATTICE_SLURM_DIR", "/tmp/lattice-slurm")
    if os.path.realpath(env["SLURM_CONF"]) == os.path.realpath(os.path.join(local, "slurm.conf")):
        pidfiles = [os.path.join(local, "run", "slurmctld.pid"), os.path.join(local, "run", "slurmd.pid"),
                    os.path.join(local, "munge", "munged.pid")]
        before = [open(f).read() for f in pidfiles]
        r = subprocess.run(["bash", os.path.join(cc.SRC, "cluster", "slurm", "local", "start.sh")],
                           capture_output=True, text=True, timeout=120)
        cc.check("3: start.sh again: up, the same daemons",
                 r.returncode == 0 and "Slurm is up" in r.stdout and
                 [open(f).read() for f in pidfiles] == before, r.stdout + r.stderr)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        data = cc.make_data(tmp)
        ref_metrics = os.path.join(tmp, "ref.jsonl")
        r = subprocess.run(cc.mpirun(4) + [cc.LATTICE] + cc.train_args(data, STEPS, ref_metrics),
                           capture_output=True, text=True, env=cc.ENV, timeout=300)
        if not cc.check("plain mpirun -np 4 reference", r.returncode == 0 and
                        "layout tp=1 dp=4 pp=1" in r.stdout, r.stdout + r.stderr):
            return cc.finish("slurm_sbatch_test")
        ref = cc.rows_of(ref_metrics)

        # 1. The one-node template with 4 tasks.
        metrics = os.path.join(tmp, "sbatch.jsonl")
        jenv = dict(env, CONFIG=cc.TINY, LATTICE_BIN=cc.LATTICE,
                    CHECKPOINT_DIR=os.path.join(tmp, "ckpt"))
        job = cc.sbatch(jenv, ["--ntasks-per-node=4", "--cpus-per-task=1", "--time=10",
                               f"--output={tmp}/job-%j.out", ONE_NODE]
                        + cc.train_sets(data, STEPS, metrics))
        info = cc.wait_job(env, job, 240)
        out_path = os.path.join(tmp, f"job-{job}.out")
        out = open(out_path).read() if os.path.exists(out_path) else "(no job output)"
        cc.check(f"1: sbatch train.sbatch job {job} COMPLETED, exit 0:0 "
                 f"({info.get('JobState')}, {info.get('ExitCode')})",
                 info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", out)
        cc.check("1: 4 ranks under srun, layout dp=4", "4 ranks" in out and
                 "layout tp=1 dp=4 pp=1" in out and f"iteration        {STEPS}/" in out, out)
        diff = cc.same_rows(cc.rows_of(metrics), ref)
        cc.check("1: the sbatch run's metrics equal plain mpirun -np 4's bit for bit", diff == "",
                 diff + "\n" + out)

        # 2. cluster/launch.sh inside an allocation: srun --mpi=pmix.
        metrics = os.path.join(tmp, "launch.jsonl")
        launch = [os.path.join(cc.SRC, "cluster", "launch.sh")] + cc.train_args(data, STEPS, metrics)
        job = cc.sbatch(dict(env, LATTICE_BIN=cc.LATTICE),
                        ["--ntasks=4", "--time=10", f"--output={tmp}/launch-%j.out",
                         "--wrap", " ".join(launch)])
        info = cc.wait_job(env, job, 240)
        out_path = os.path.join(tmp, f"launch-{job}.out")
        out = open(out_path).read() if os.path.exists(out_path) else "(no job output)"
        cc.check(f"2: launch.sh job {job} COMPLETED ({info.get('JobState')})",
                 info.get("JobState") == "COMPLETED", out)
        cc.check("2: launch.sh printed its srun --mpi=pmix -n 4 line",
                 "launch.sh: srun --mpi=pmix -n 4 " in out, out)
        diff = cc.same_rows(cc.rows_of(metrics), ref)
        cc.check("2: launch.sh's metrics equal plain mpirun -np 4's bit for bit", diff == "",
                 diff + "\n" + out)
    return cc.finish("slurm_sbatch_test")


if __name__ == "__main__":
    sys.exit(main())
