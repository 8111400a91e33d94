#!/usr/bin/env python3
"""`lattice bench --config` and `lattice bench --sweep` (issue 14; launcher/bench_command.cc,
launcher/bench_sweep.cc).

1. `lattice bench --config` on one process and under `mpirun -np 2` with dp=2 ZeRO-1 and with
   pp=2 writes the JSON it prints: step-time median inside [min, max] and [p10, p90], tokens/s
   = tokens per step / median, per rank = total / ranks, model TFLOP/s per rank from the stated
   FLOPs per token, MFU = TFLOP/s over train.peak_tflops when given and "unknown" when not,
   every phase present and non-negative (dp communication exposed measured on dp=2, the
   pipeline's wait on pp=2, the overlapped part marked "not measured"), memory per rank with
   the arenas' bytes and VmHWM above its baseline both positive.
2. `lattice bench --sweep ranks=1,2,4` (strong and weak) writes sweep.md, sweep.json,
   sweep.gp and sweep.png: the PNG has its signature and an IHDR chunk, the table has a row per
   rank count, the JSON's rows agree with each run's own JSON (tokens/s, speed-up, efficiency),
   and a weak sweep's global batch grows with the ranks.
3. `lattice bench train-step` (tests/bench/cpu_train_step_vs_torch.py's call) still answers
   with its JSON line; bad sweep specs fail naming the value.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

LATTICE = os.environ.get("LATTICE_BIN", "build/lattice")
SRC = os.environ.get("LATTICE_SOURCE_DIR",
                     os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TINY = os.path.join(SRC, "configs", "tiny-gpt2.yaml")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_btl_vader_single_copy_mechanism="none",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
# JSON floats are printed with 17 significant digits; derived figures are recomputed here from
# rounded inputs, so 1e-9 relative is far above any rounding and far below any real error.
REL = 1e-9
failures = []


def check(label, ok, detail=""):
    print(("[ok] " if ok else "[FAIL] ") + label + ("" if ok else "\n  " + str(detail)))
    if not ok:
        failures.append(label)


def close(a, b, rel=REL):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def run(cmd, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def bench(tmp, name, np_, sets):
    out = os.path.join(tmp, f"{name}.json")
    cmd = ([shutil.which("mpirun"), "-np", str(np_), "--bind-to", "none"] if np_ > 1 else [])
    cmd += [LATTICE, "bench", "--config", TINY, "--warmup", "1", "--steps", "4", "--json", out,
            "--set", "train.threads=1"]
    for s in sets:
        cmd += ["--set", s]
    r = run(cmd)
    check(f"{name}: exit 0", r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}")
    if r.returncode != 0:
        return None
    j = json.load(open(out))
    check(f"{name}: summary and JSON on stdout", "step time: median" in r.stdout and
          f'"tokens_per_s": ' in r.stdout, r.stdout[-500:])
    return j


def check_steps(name, j, ranks, peak):
    st = j["step_ms"]
    check(f"{name}: {j['steps']} step times", len(st["all"]) == j["steps"] == 4, st)
    check(f"{name}: min <= p10 <= median <= p90 <= max",
          st["min"] <= st["p10"] <= st["median"] <= st["p90"] <= st["max"], st)
    check(f"{name}: world {ranks}", j["world"] == ranks, j["world"])
    tokens = j["global_batch"] * j["seq_len"]
    check(f"{name}: tokens/s = tokens per step / median",
          close(j["tokens_per_s"], tokens / (st["median"] / 1e3)), (j["tokens_per_s"], tokens))
    check(f"{name}: tokens/s per rank", close(j["tokens_per_s_per_rank"], j["tokens_per_s"] / ranks))
    check(f"{name}: TFLOP/s per rank from the FLOPs per token",
          close(j["model_tflops_per_rank"], j["tokens_per_s"] * j["flops_per_token"] / ranks / 1e12))
    check(f"{name}: MFU convention stated", "6*N_matmul" in j["mfu_convention"], j["mfu_convention"])
    if peak:
        check(f"{name}: MFU over train.peak_tflops",
              close(j["mfu"], j["model_tflops_per_rank"] / peak), (j["mfu"], peak))
    else:
        check(f"{name}: MFU unknown without a peak", j["mfu"] == "unknown" and
              j["peak_tflops_per_rank"] == "unknown", j["mfu"])
    ph = j["phases"]
    for p in ("forward", "backward", "pipeline_bubble", "tp_comm", "dp_comm_exposed", "optimizer",
              "data_loading", "other"):
        check(f"{name}: phase {p} >= 0", p in ph and ph[p]["mean_over_ranks"] >= 0, ph.get(p))
    check(f"{name}: forward and backward measured",
          ph["forward"]["mean_over_ranks"] > 0 and ph["backward"]["mean_over_ranks"] > 0, ph)
    check(f"{name}: overlapped dp communication marked not measured",
          ph["dp_comm_overlapped"]["ms"] == "not measured", ph["dp_comm_overlapped"])
    mem = j["memory"]
    check(f"{name}: memory per rank for {ranks} rank(s)", len(mem["per_rank"]) == ranks, mem)
    for m in mem["per_rank"]:
        parts = sum(m[k] for k in ("params", "grads", "optimizer_state", "comm_buffers",
                                   "activations_peak", "scratch"))
        check(f"{name}: rank {m['rank']} arena bytes = its parts", m["arena_bytes"] == parts, m)
        check(f"{name}: rank {m['rank']} VmHWM above baseline >= ... > 0",
              m["vmhwm_bytes"] > m["vmhwm_baseline_bytes"] > 0, m)
    return ph


def check_sweep(tmp, mode):
    out = os.path.join(tmp, f"sweep-{mode}")
    cmd = [LATTICE, "bench", "--sweep", "ranks=1,2,4", f"--{mode}", "--config", TINY,
           "--warmup", "1", "--steps", "3", "--out-dir", out]
    r = run(cmd, timeout=900)
    check(f"sweep {mode}: exit 0", r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}")
    if r.returncode != 0:
        return
    for f in ("sweep.md", "sweep.json", "sweep.gp", "sweep.png", "sweep.dat"):
        check(f"sweep {mode}: {f} written", os.path.getsize(os.path.join(out, f)) > 0)
    png = open(os.path.join(out, "sweep.png"), "rb").read()
    check(f"sweep {mode}: PNG signature", png[:8] == b"\x89PNG\r\n\x1a\n", png[:8])
    w, h = struct.unpack(">II", png[16:24]) if png[12:16] == b"IHDR" else (0, 0)
    check(f"sweep {mode}: PNG IHDR 900x540 (sweep.gp's size)", (w, h) == (900, 540), (w, h))
    check(f"sweep {mode}: no temporary left", not any(n.startswith(".sweep.png")
                                                      for n in os.listdir(out)), os.listdir(out))
    md = open(os.path.join(out, "sweep.md")).read().splitlines()
    rows_md = [l for l in md if l.startswith("| ") and l.split("|")[1].strip().isdigit()]
    check(f"sweep {mode}: table rows for ranks 1, 2, 4",
          [int(l.split("|")[1]) for l in rows_md] == [1, 2, 4], md)
    s = json.load(open(os.path.join(out, "sweep.json")))
    check(f"sweep {mode}: mode recorded", s["sweep"] == mode, s["sweep"])
    rows = s["rows"]
    check(f"sweep {mode}: JSON rows for ranks 1, 2, 4", [x["ranks"] for x in rows] == [1, 2, 4], rows)
    base = json.load(open(rows[0]["json"]))
    for x in rows:
        run_j = json.load(open(x["json"]))
        check(f"sweep {mode} {x['ranks']}: run's world", run_j["world"] == x["ranks"], run_j["world"])
        check(f"sweep {mode} {x['ranks']}: tokens/s is the run's",
              close(x["tokens_per_s"], run_j["tokens_per_s"]), (x, run_j["tokens_per_s"]))
        sp = run_j["tokens_per_s"] / base["tokens_per_s"]
        check(f"sweep {mode} {x['ranks']}: speed-up", close(x["speedup"], sp), (x["speedup"], sp))
        check(f"sweep {mode} {x['ranks']}: efficiency per rank",
              close(x["efficiency_per_rank"], sp / x["ranks"]), x)
        check(f"sweep {mode} {x['ranks']}: efficiency per core",
              close(x["efficiency_per_core"], sp * rows[0]["cores_used"] / x["cores_used"]), x)
        want = base["global_batch"] * x["ranks"] if mode == "weak" else base["global_batch"]
        check(f"sweep {mode} {x['ranks']}: global batch {want}", run_j["global_batch"] == want,
              run_j["global_batch"])
        check(f"sweep {mode} {x['ranks']}: dp = ranks", run_j["dp"] == x["ranks"], run_j["dp"])


def main():
    tmp = tempfile.mkdtemp(prefix="lattice-bench-test-")
    try:
        j = bench(tmp, "one", 1, ["train.peak_tflops=0.5"])
        if j:
            check_steps("one", j, 1, 0.5)
        j = bench(tmp, "dp2", 2, ["parallel.dp=2", "parallel.zero1=true"])
        if j:
            ph = check_steps("dp2", j, 2, 0)
            check("dp2: data-parallel communication exposed measured",
                  ph["dp_comm_exposed"]["mean_over_ranks"] > 0, ph["dp_comm_exposed"])
            check("dp2: ZeRO-1 staging or shards in memory",
                  all(m["optimizer_state"] < 2 * m["params"] for m in j["memory"]["per_rank"]),
                  j["memory"]["per_rank"])
        j = bench(tmp, "pp2", 2, ["parallel.pp=2"])
        if j:
            ph = check_steps("pp2", j, 2, 0)
            check("pp2: pipeline wait measured", ph["pipeline_bubble"]["max_over_ranks"] > 0,
                  ph["pipeline_bubble"])
        check_sweep(tmp, "strong")
        check_sweep(tmp, "weak")
        r = run([LATTICE, "bench", "train-step", "--config", TINY, "--repeats", "1", "--warmup", "0"])
        ok = r.returncode == 0
        line = json.loads(r.stdout.strip().splitlines()[-1]) if ok else {}
        check("train-step: JSON line with tokens_per_s", ok and line.get("bench") == "train-step"
              and line["tokens_per_s"] > 0, r.stdout + r.stderr)
        for spec, needle in (("ranks=2,1", "increase"), ("ranks=0", "'0'"), ("np=2", "ranks=N")):
            r = run([LATTICE, "bench", "--sweep", spec, "--config", TINY,
                     "--out-dir", os.path.join(tmp, "bad")])
            check(f"--sweep {spec}: fails naming it", r.returncode != 0 and needle in r.stderr,
                  r.stderr)
        r = run([LATTICE, "bench", "--weak", "--config", TINY])
        check("--weak without --sweep fails", r.returncode != 0 and "--sweep" in r.stderr, r.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed: {failures}")
        sys.exit(1)
    print("all bench checks passed")


if __name__ == "__main__":
    main()
