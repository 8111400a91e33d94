"""Shared by the tests of tests/cluster/: the tiny training run, its metrics, and the local Slurm
(cluster/slurm/local/start.sh) the `slurm`-labelled tests submit to.

A test that needs Slurm calls slurm_or_skip(): when no local Slurm answers it prints why and exits
with SKIP (ctest reports the test as skipped), unless LATTICE_REQUIRE_SLURM=1 (scripts/run-tests.sh
sets it after starting Slurm), where a Slurm that does not answer is a failure.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pylib"))
from lattice_testing import (EXACT, LATTICE, SKIP, SRC, TINY, check, failures,  # noqa: E402,F401
                             finish, mpirun_present, write_random_tokens)
import lattice_testing  # noqa: E402

# lattice_testing.ENV plus mpi_yield_when_idle: mpirun turns it on by itself when it places more
# ranks than cores, but ranks started by srun only know the CPUs the node declares (8 on the test
# Slurm, 2 real cores), and 4 ranks spinning in MPI waits on 2 cores made each step of the tiny
# run 30x slower (200 ms instead of 6 ms, measured here).
ENV = dict(lattice_testing.ENV, OMPI_MCA_mpi_yield_when_idle="1")
STOPPED = 75  # lattice train's exit status after a stop with a checkpoint (launcher/preemption.h)


def make_data(tmp):
    """The tiny run's data: 20000 random byte-vocabulary tokens in tmp/data.bin."""
    return write_random_tokens(os.path.join(tmp, "data.bin"))


def train_sets(data, steps, metrics, extra=()):
    """The --set overrides of the tiny run: world 4 (or 2) x micro-batch 2 = global batch 8, one
    thread per rank (the same arithmetic under every launcher)."""
    return ["--set", f"data.train={data}",
            "--set", "model.n_layer=4", "--set", f"train.steps={steps}",
            "--set", "train.warmup_steps=1", "--set", "train.micro_batch_size=2",
            "--set", "train.global_batch_size=8", "--set", "train.threads=1",
            "--set", "train.log_interval=1", "--set", f"train.metrics_file={metrics}"] + list(extra)


def train_args(data, steps, metrics, extra=()):
    """`lattice train` arguments of the tiny run (configs/tiny-gpt2.yaml + train_sets)."""
    return ["train", "--config", TINY] + train_sets(data, steps, metrics, extra)


def mpirun(np_):
    return [shutil.which("mpirun") or "mpirun", "-np", str(np_), "--bind-to", "none"]


def rows_of(path):
    if not os.path.exists(path):
        return []
    rows = []
    for line in open(path):
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return rows


def same_rows(rows, ref):
    """'' when `rows` hold exactly the reference's rows, each step once, else what differs."""
    steps = [r["step"] for r in rows]
    want = [r["step"] for r in ref]
    if steps != want:
        return f"steps {steps} vs {want}"
    for got, exp in zip(rows, ref):
        for k in EXACT:
            if got.get(k) != exp.get(k):
                return f"step {got['step']} {k}: {got.get(k)!r} vs {exp.get(k)!r}"
    return ""


def committed(ckpt_dir):
    """Iterations of the committed checkpoints (a step_N directory with its index)."""
    out = []
    if os.path.isdir(ckpt_dir):
        for name in os.listdir(ckpt_dir):
            m = re.fullmatch(r"step_(\d+)", name)
            if m and os.path.exists(os.path.join(ckpt_dir, name, "index.json")):
                out.append(int(m.group(1)))
    return sorted(out)


def wait_until(pred, timeout, poll=0.002):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    return None


# ---- Slurm --------------------------------------------------------------------------------------

def slurm_env():
    env = dict(ENV)
    if "SLURM_CONF" not in env:
        conf = os.path.join(os.environ.get("LATTICE_SLURM_DIR", "/tmp/lattice-slurm"), "slurm.conf")
        env["SLURM_CONF"] = conf
    return env


def slurm_or_skip(min_cpus):
    """Returns the environment for Slurm commands, or exits: SKIP without a Slurm, 1 with one that
    cannot run `min_cpus` tasks on its node."""
    env = slurm_env()
    why = ""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        why = "sbatch/scontrol not installed (bash scripts/install-deps.sh)"
    elif not os.path.exists(env["SLURM_CONF"]):
        why = f"no {env['SLURM_CONF']}: start one with cluster/slurm/local/start.sh"
    else:
        r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=env, timeout=30)
        if r.returncode != 0 or "UP" not in r.stdout:
            why = f"slurmctld of {env['SLURM_CONF']} does not answer ({r.stdout.strip()} {r.stderr.strip()})"
    if why:
        if os.environ.get("LATTICE_REQUIRE_SLURM") == "1":
            print(f"[FAIL] Slurm is required here (LATTICE_REQUIRE_SLURM=1) but {why}")
            sys.exit(1)
        print(f"[skip] needs a running Slurm: {why}")
        # Checks that ran before this one and failed still fail the test.
        sys.exit(1 if failures else SKIP)
    r = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, env=env, timeout=30)
    cpus = max([int(x) for x in r.stdout.split() if x.isdigit()] or [0])
    if cpus < min_cpus:
        print(f"[FAIL] the Slurm node has {cpus} CPUs, this test runs {min_cpus} tasks on it: "
              f"restart it with cluster/slurm/local/stop.sh; cluster/slurm/local/start.sh --cpus 8")
        sys.exit(1)
    return env


def sbatch(env, args, cwd=SRC):
    r = subprocess.run(["sbatch", "--parsable"] + args, capture_output=True, text=True, env=env,
                       cwd=cwd, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"sbatch {args} failed: {r.stderr}")
    return r.stdout.strip().split(";")[0]


def job_info(env, job):
    r = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                       env=env, timeout=30)
    info = {}
    for tok in r.stdout.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            info.setdefault(k, v)
    return info


def wait_job(env, job, timeout):
    """Waits until the job has ended for good (not pending, running or requeued); its info."""
    end = time.monotonic() + timeout
    info = {}
    while time.monotonic() < end:
        info = job_info(env, job)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                    "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"):
            return info
        time.sleep(0.2)
    subprocess.run(["scancel", job], env=env, timeout=30)
    info["JobState"] = f"still {info.get('JobState')} after {timeout} s (cancelled)"
    return info


def scancel_batch_usr1(env, job):
    return subprocess.run(["scancel", "--signal=USR1", "--batch", job], capture_output=True,
                          text=True, env=env, timeout=30)
