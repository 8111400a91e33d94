#!/usr/bin/env python3
"""`lattice plan` against Megatron-LM's published H100 weak-scaling table (issue 14, acceptance 2),
and the planner's accounting rules.

1. The nine GPT models of the Megatron-LM README's "Training Speed and Scalability" table
   (https://github.com/NVIDIA/Megatron-LM, images/model_table.png; transcribed in
   ../shared/REFERENCE.md section 6): vocabulary 131072, seq 4096, untied embeddings, on the
   published (tp, pp, dp) and global batch with the distributed optimizer (ZeRO-1), the planner
   choosing vpp, micro-batch and recompute. The best layout's predicted throughput, in
   Megatron's own FLOP formula (the published figures use it), is within 15% of each published
   TFLOP/s/GPU, i.e. its MFU within 15% of the published MFU; its memory fits in 80 GB. One
   cluster file (configs/clusters/h100-80gb-ib.yaml) serves every row. The table in
   docs/planner.md shows these same predictions (checked to 1 TFLOP/s).
2. Accounting rules on fixed layouts: ZeRO-1 divides the optimizer state by dp exactly; full
   recompute keeps less than none; 1F1B keeps min(pp, M) micro-batches in flight on the first
   stage and GPipe M; the table and JSON agree; bad inputs are errors naming what is wrong.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

LATTICE = os.environ.get("LATTICE_BIN", "build/lattice")
SRC = os.environ.get("LATTICE_SOURCE_DIR",
                     os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
H100 = os.path.join(SRC, "configs", "clusters", "h100-80gb-ib.yaml")
A100 = os.path.join(SRC, "configs", "clusters", "a100-80gb-ib.yaml")
BASE = os.path.join(SRC, "configs", "gpt2-124m.yaml")
# Acceptance 2: predicted MFU within 15% (relative) of each published figure.
TOLERANCE = 0.15
# "fits in 80 GB": decimal gigabytes, as the H100's 80 GB is specified.
HBM = 80e9
# (name, heads, hidden, layers, tp, pp, dp, global batch, published TFLOP/s/GPU, MFU %)
ROWS = [("1.7B", 16, 2048, 24, 1, 1, 48, 192, 408.8, 41),
        ("7.1B", 32, 4096, 30, 2, 1, 48, 192, 465.9, 47),
        ("16B", 48, 6144, 32, 4, 1, 48, 192, 489.1, 49),
        ("32B", 56, 7168, 48, 8, 1, 48, 192, 459.6, 46),
        ("70B", 64, 8192, 84, 8, 2, 48, 384, 419.7, 42),
        ("119B", 80, 10240, 92, 8, 4, 48, 768, 420.5, 43),
        ("177B", 96, 12288, 96, 8, 6, 48, 1152, 432.8, 44),
        ("314B", 128, 16384, 96, 8, 8, 48, 1536, 474.4, 48),
        ("462B", 144, 18432, 112, 8, 16, 48, 3072, 459.9, 47)]
failures = []


def check(label, ok, detail=""):
    print(("[ok] " if ok else "[FAIL] ") + label + ("" if ok else "\n  " + str(detail)[-3000:]))
    if not ok:
        failures.append(label)
    return ok


def model_sets(heads, hidden, layers):
    s = []
    for kv in (f"model.n_layer={layers}", f"model.d_model={hidden}", f"model.n_head={heads}",
               "model.vocab_size=131072", "model.vocab_pad_multiple=128", "model.seq_len=4096",
               "model.tie_embeddings=0"):
        s += ["--set", kv]
    return s


def plan(args, expect_ok=True):
    r = subprocess.run([LATTICE, "plan"] + args, capture_output=True, text=True, timeout=600)
    if expect_ok and r.returncode != 0:
        raise RuntimeError(" ".join(args) + "\n" + r.stdout + r.stderr)
    return r


def plan_json(args):
    return json.loads(plan(args + ["--json"]).stdout)


def megatron_table():
    doc = open(os.path.join(SRC, "docs", "planner.md")).read()
    for name, heads, hidden, layers, tp, pp, dp, gbs, tflops, mfu in ROWS:
        j = plan_json(["--model", BASE, "--cluster", H100, "--global-batch", str(gbs),
                       "--gpus", str(tp * pp * dp), "--tp", str(tp), "--pp", str(pp),
                       "--dp", str(dp), "--zero1", "true"] + model_sets(heads, hidden, layers))
        best = j["layouts"][0]
        pred = best["megatron_tflops_per_gpu"]
        pred_mfu = pred * 1e12 / 989.4e12
        rel = pred / tflops - 1
        check(f"{name} on {tp * pp * dp} GPUs: predicted {pred:.1f} TFLOP/s/GPU (MFU "
              f"{100 * pred_mfu:.1f}%) vs published {tflops} ({mfu}%): {100 * rel:+.1f}%",
              abs(rel) <= TOLERANCE, best)
        mem = best["memory_bytes"]["total"]
        check(f"{name}: {mem / 1e9:.1f} GB per GPU fits in 80 GB", best["fits"] and mem <= HBM, best)
        # The documented table shows today's prediction.
        m = re.search(r"^\| %s \|.*$" % re.escape(name), doc, re.M)
        cells = [c.strip() for c in m.group(0).strip("|").split("|")] if m else []
        check(f"docs/planner.md row {name} shows {pred:.1f}",
              bool(cells) and any(abs(float(c) - pred) <= 1.0 for c in cells
                                  if re.fullmatch(r"\d+\.\d", c)), cells)


def accounting():
    sets = model_sets(32, 4096, 32)
    common = ["--model", BASE, "--cluster", H100, "--gpus", "64", "--global-batch", "64",
              "--tp", "2", "--pp", "4", "--dp", "8", "--micro-batch", "1", "--vpp", "1"]
    on = plan_json(common + sets + ["--zero1", "true", "--recompute", "none"])["layouts"]
    off = plan_json(common + sets + ["--zero1", "false", "--recompute", "none"])["layouts"]
    o1 = [x for x in on if x["layout"]["schedule"] == "1f1b"][0]
    o0 = [x for x in off if x["layout"]["schedule"] == "1f1b"][0]
    check("ZeRO-1 divides the optimizer state by dp=8",
          abs(o0["memory_bytes"]["optimizer"] / o1["memory_bytes"]["optimizer"] - 8) < 1e-9,
          (o0["memory_bytes"], o1["memory_bytes"]))
    check("parameters and gradients do not depend on ZeRO-1",
          o0["memory_bytes"]["params"] == o1["memory_bytes"]["params"] and
          o0["memory_bytes"]["grads"] == o1["memory_bytes"]["grads"])
    m = o1["micro_batches"]
    check(f"1F1B keeps min(pp, M) = {min(4, m)} micro-batches in flight on stage 0",
          o1["memory_bytes"]["stage"] == 0 and o1["memory_bytes"]["in_flight"] == min(4, m), o1)
    g = [x for x in on if x["layout"]["schedule"] == "gpipe"][0]
    check(f"GPipe keeps all M = {m} in flight and has the same bubble as 1F1B",
          g["memory_bytes"]["in_flight"] == m and
          abs(g["time_s"]["bubble"] - o1["time_s"]["bubble"]) < 1e-12, g)
    full = [x for x in plan_json(common + sets + ["--zero1", "true", "--recompute", "full"])["layouts"]
            if x["layout"]["schedule"] == "1f1b"][0]
    check("full recompute keeps fewer activations and costs more compute",
          full["memory_bytes"]["activations"] < o1["memory_bytes"]["activations"] and
          full["time_s"]["compute"] > o1["time_s"]["compute"], (full, o1))
    # The simulator's ticks: 2 (M vpp + pp - 1) for every schedule, so interleaving with vpp=2
    # halves the bubble of the same stage (parallel/pipeline_schedule.h).
    inter = plan_json(common[:-1] + ["2"] + sets +
                      ["--zero1", "true", "--recompute", "none"])["layouts"][0]
    check("interleaving with vpp=2 halves the 1F1B bubble",
          inter["layout"]["schedule"] == "interleaved" and
          abs(inter["time_s"]["bubble"] / o1["time_s"]["bubble"] - 0.5) < 1e-9,
          (inter["time_s"], o1["time_s"]))
    # The table prints the same winner as the JSON.
    table = plan(common + sets).stdout
    j = plan_json(common + sets)
    first = [l for l in table.splitlines() if re.match(r"\s+1 ", l)]
    check("the table's first row is the JSON's first layout",
          bool(first) and "dp=8 tp=2 pp=4" in first[0] and
          ("%.3f" % j["layouts"][0]["time_s"]["step"]) in first[0], (first, j["layouts"][0]))
    check("the JSON states the MFU convention", "6*N_matmul" in j["mfu_convention"])
    check("the A100 cluster loads and ranks layouts",
          len(plan_json(["--model", BASE, "--cluster", A100, "--global-batch", "64",
                         "--gpus", "16"] + sets)["layouts"]) > 1)


def errors():
    with tempfile.TemporaryDirectory() as tmp:
        bad = os.path.join(tmp, "bad.yaml")
        text = open(H100).read()
        open(bad, "w").write(text + "\nflops_typo: 1\n")
        r = plan(["--model", BASE, "--cluster", bad, "--global-batch", "8"], expect_ok=False)
        check("an unknown cluster key is an error naming it",
              r.returncode == 1 and "flops_typo" in r.stderr and "bad.yaml" in r.stderr, r.stderr)
        open(bad, "w").write(text.replace("peak_tflops:", "# peak_tflops:"))
        r = plan(["--model", BASE, "--cluster", bad, "--global-batch", "8"], expect_ok=False)
        check("a missing cluster key is an error naming it",
              r.returncode == 1 and "peak_tflops" in r.stderr, r.stderr)
    r = plan(["--model", BASE, "--cluster", H100, "--global-batch", "7", "--gpus", "8",
              "--dp", "8"], expect_ok=False)
    check("no valid layout is an error naming the sizes",
          r.returncode == 1 and "global batch 7" in r.stderr, r.stderr)
    r = plan(["--model", BASE, "--cluster", os.path.join(SRC, "nonexistent.yaml"),
              "--global-batch", "8"], expect_ok=False)
    check("a missing cluster file is an error naming it",
          r.returncode == 1 and "nonexistent.yaml" in r.stderr, r.stderr)


def main():
    megatron_table()
    accounting()
    errors()
    print("FAILED: " + "; ".join(failures) if failures else "all planner checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
