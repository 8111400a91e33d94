#!/usr/bin/env python3
"""The launch scripts in cluster/ parse, and the mpirun wrapper really trains.

- `bash -n` (and shellcheck, where installed) on cluster/mpirun/train.sh and
  cluster/slurm/train.sbatch;
- every #SBATCH line of the batch script comes before its first command (sbatch stops reading
  directives there, silently);
- with mpirun on the PATH: cluster/mpirun/train.sh -np 2 trains the tiny config for 2 steps as
  dp=2, once on this node and once through a hostfile with --per-node.
"""
import os
import shutil
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pylib"))
from lattice_testing import LATTICE, SRC, TINY, check, finish, mpirun_present  # noqa: E402

MPIRUN_SH = os.path.join(SRC, "cluster", "mpirun", "train.sh")
SBATCH = os.path.join(SRC, "cluster", "slurm", "train.sbatch")


def check_syntax():
    shellcheck = shutil.which("shellcheck")
    for script in (MPIRUN_SH, SBATCH):
        name = os.path.relpath(script, SRC)
        r = subprocess.run(["bash", "-n", script], capture_output=True, text=True, timeout=30)
        check(f"bash -n {name}", r.returncode == 0, r.stderr)
        # scripts/install-deps.sh installs shellcheck: without it the check fails, never skips.
        check(f"shellcheck is installed (for {name})", shellcheck is not None)
        if shellcheck:
            r = subprocess.run([shellcheck, script], capture_output=True, text=True, timeout=60)
            check(f"shellcheck {name}", r.returncode == 0, r.stdout + r.stderr)


def check_sbatch_directives():
    seen_command = False
    late = []
    with open(SBATCH) as f:
        for i, line in enumerate(f, 1):
            s = line.strip()
            if i == 1 or not s:
                continue
            if s.startswith("#SBATCH"):
                if seen_command:
                    late.append(i)
            elif not s.startswith("#"):
                seen_command = True
    check("all #SBATCH lines precede the first command", not late, f"late lines {late}")
    text = open(SBATCH).read()
    for needle in ("#SBATCH --nodes", "#SBATCH --ntasks-per-node", "#SBATCH --gpus-per-node",
                   "#SBATCH --cpus-per-task", "#SBATCH --time", "#SBATCH --output",
                   "--mpi=pmix", "OMP_NUM_THREADS", "configs/gpt2-124m.yaml"):
        check(f"train.sbatch mentions {needle}", needle in text)


def run_mpirun(label, tmp, extra):
    data = os.path.join(tmp, "data.bin")
    env = dict(os.environ)
    env.update({
        "LATTICE_BIN": LATTICE,
        # Open MPI refuses root without these, and more ranks than cores without oversubscribe;
        # containers need the single-copy mechanism off.
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
    })
    cmd = ["bash", MPIRUN_SH, "-np", "2"] + extra + [
        "--config", TINY, "--set", f"data.train={data}", "--set", "train.steps=2",
        "--set", "train.warmup_steps=0", "--set", "train.threads=1"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired as e:
        check(label, False, f"timed out: {e}")
        return
    out = r.stdout
    ok = (r.returncode == 0 and "layout tp=1 dp=2 pp=1" in out and "iteration        2/       2" in out)
    check(f"{label}: exit {r.returncode}", ok, f"cmd={cmd}\nstdout={out!r}\nstderr={r.stderr!r}")


def main():
    check_syntax()
    check_sbatch_directives()
    if mpirun_present():
        with tempfile.TemporaryDirectory() as tmp:
            # A small nanoGPT-style uint16 token file, as tests/launcher/cli_errors_test.py makes.
            with open(os.path.join(tmp, "data.bin"), "wb") as f:
                f.write(struct.pack("<" + "H" * 5000, *[(i * 7) % 250 for i in range(5000)]))
            hostfile = os.path.join(tmp, "hosts")
            with open(hostfile, "w") as f:
                f.write("localhost slots=2\n")
            run_mpirun("train.sh -np 2 (this node)", tmp, [])
            run_mpirun("train.sh -np 2 --hostfile --per-node 2", tmp,
                       ["--hostfile", hostfile, "--per-node", "2"])
    return finish("cluster_scripts_test")


if __name__ == "__main__":
    sys.exit(main())
