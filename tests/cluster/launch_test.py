#!/usr/bin/env python3
"""cluster/launch.sh outside Slurm (the srun side runs in slurm_sbatch_test.py):

1. --dry-run prints the mpirun line: -np, mapping and binding (--bind-to core with PE = cores /
   ranks when every rank gets a core, --bind-to none when not, --per-node as ppr:K:node, a
   hostfile), PATH and every NCCL_*, LATTICE_*, OMP_* variable forwarded with -x (and nothing
   else of the environment), the lattice command last; bad arguments are refused with status 2.
2. With SLURM_JOB_ID set it picks srun --mpi=pmix -n $SLURM_NTASKS (and passes
   --cpus-per-task), unless a hostfile asks for mpirun.
3. It really runs: `launch.sh -n 2 train ...` trains the tiny config as dp=2 and prints its line.
"""
import os
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_common as cc  # noqa: E402

LAUNCH = os.path.join(cc.SRC, "cluster", "launch.sh")


def dry(args, **env):
    e = {k: v for k, v in cc.ENV.items() if not k.startswith("SLURM_")}
    e.update(env)
    r = subprocess.run(["bash", LAUNCH, "--dry-run"] + args, capture_output=True, text=True, env=e)
    return r.returncode, shlex.split(r.stdout), r.stderr


def main():
    cores = len(os.sched_getaffinity(0))  # what nproc counts (cc.ENV sets OMP_NUM_THREADS=1)
    rc, line, err = dry(["-n", "1", "train", "--config", "x y.yaml"], NCCL_DEBUG="INFO",
                        LATTICE_FOO="1", OMP_PROC_BIND="close", UNRELATED="1")
    cc.check("1: mpirun line for one rank", rc == 0 and line[:3] == ["mpirun", "-np", "1"], (rc, line, err))
    cc.check("1: one rank gets every core: --bind-to core with PE=cores",
             f"slot:PE={cores}" in line and line[line.index("--bind-to") + 1] == "core", line)
    forwarded = [line[i + 1] for i, w in enumerate(line) if w == "-x"]
    cc.check("1: PATH and the NCCL_/LATTICE_/OMP_ variables forwarded, nothing else",
             {"PATH", "NCCL_DEBUG", "LATTICE_FOO", "OMP_PROC_BIND", "OMP_NUM_THREADS"} <= set(forwarded)
             and "UNRELATED" not in forwarded, forwarded)
    cc.check("1: the lattice command comes last, its arguments intact",
             line[-4:] == [os.path.join(cc.SRC, "build", "lattice"), "train", "--config", "x y.yaml"]
             or line[-3:] == ["train", "--config", "x y.yaml"], line)
    rc, line, _ = dry(["-n", str(cores + 1), "train"])
    cc.check("1: more ranks than cores: --bind-to none", rc == 0 and "--bind-to" in line and
             line[line.index("--bind-to") + 1] == "none", line)
    with tempfile.NamedTemporaryFile("w", suffix=".hosts") as hosts:
        hosts.write("node01 slots=8\nnode02 slots=8\n")
        hosts.flush()
        rc, line, _ = dry(["-n", "16", "--per-node", "8", "--hostfile", hosts.name, "--bind", "none",
                           "train"])
        cc.check("1: hostfile with --per-node: --hostfile F --map-by ppr:8:node",
                 rc == 0 and line[line.index("--hostfile") + 1] == hosts.name and
                 line[line.index("--map-by") + 1] == "ppr:8:node", line)
        rc, line, _ = dry(["--hostfile", hosts.name, "-n", "2", "train"], SLURM_JOB_ID="5",
                          SLURM_NTASKS="4")
        cc.check("2: a hostfile inside an allocation still means mpirun", rc == 0 and line[0] == "mpirun", line)
    for bad in (["-n", "0", "train"], ["train"][:0], ["--bind", "sockets", "train"],
                ["--launcher", "ssh", "train"], ["-n", str(cores + 1), "--bind", "core", "train"]):
        rc, _, err = dry(bad)
        cc.check(f"1: refused: {' '.join(bad) or '(no command)'}", rc == 2 and "launch.sh:" in err, err)

    rc, line, _ = dry(["train", "--config", "c.yaml"], SLURM_JOB_ID="5", SLURM_NTASKS="4",
                      SLURM_CPUS_PER_TASK="2")
    cc.check("2: inside an allocation: srun --mpi=pmix -n 4 --cpus-per-task 2",
             rc == 0 and line[:6] == ["srun", "--mpi=pmix", "-n", "4", "--cpus-per-task", "2"], line)

    with tempfile.TemporaryDirectory() as tmp:
        data = cc.make_data(tmp)
        env = {k: v for k, v in cc.ENV.items() if not k.startswith("SLURM_")}
        env["LATTICE_BIN"] = cc.LATTICE
        r = subprocess.run(["bash", LAUNCH, "-n", "2"] + cc.train_args(data, 2, os.path.join(tmp, "m.jsonl")),
                           capture_output=True, text=True, env=env, timeout=300)
        cc.check("3: launch.sh -n 2 trains as dp=2 and prints its mpirun line",
                 r.returncode == 0 and "launch.sh: mpirun -np 2 " in r.stderr and
                 "layout tp=1 dp=2 pp=1" in r.stdout and len(cc.rows_of(os.path.join(tmp, "m.jsonl"))) == 2,
                 r.stdout + r.stderr)
    return cc.finish("launch_test")


if __name__ == "__main__":
    sys.exit(main())
