#!/usr/bin/env python3
# LATTICE_TEST_LABELS: numeric
"""Instruction fine-tuning through `lattice train` (data.format: sft; issue 15, acceptance 3).

The test writes a small instruction set of three toy tasks in both JSONL forms
(prompt/completion and chat messages) and fine-tunes a tiny byte-level GPT-2 on it:

1. The masked loss falls (training and validation), packed and unpacked.
2. The prepared file is written once: a second run logs that it reuses it, and the file is not
   rewritten (same inode and mtime); an edited JSONL is prepared again.
3. Data (dp=2), tensor (tp=2) and pipeline (pp=2) parallelism under mpirun give the single-process
   per-step losses of packed rows within 1e-5 relative (the layouts only reorder fp32 sums:
   README "Tests"; the packed rows reach every rank and stage with the tokens).
4. train.init_from starts from a checkpoint directory (and from a safetensors file) with a fresh
   optimizer at iteration 0: its first loss is the trained model's, far below a fresh start's;
   a missing path and a model of another shape are errors naming the path.
5. Bad data is an error naming the file and line: an unknown chat role (and the role), invalid
   JSON, a missing field, an example longer than model.seq_len.

That prompt tokens contribute nothing (the loss is the hand-computed mean over completion
targets) and that packed rows give the unpacked loss and every gradient are checked inside the
model, where both are visible: tests/model/packing_test.cc; the reader's errors in detail:
tests/runtime/data/sft_test.cc.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pylib"))
from lattice_testing import ENV, LATTICE, SRC, check, clean, finish, mpirun_present  # noqa: E402

CONFIG = os.path.join(SRC, "configs", "sft-tiny.yaml")
TOL = 1e-5  # fp32 sums in other orders across layouts (README "Tests")

WORDS = ["apple", "river", "stone", "cloud", "bread", "light", "green", "music", "horse",
         "table", "paper", "night", "water", "dream", "smile", "train", "plant", "house"]


def write_dataset(path, n, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            w = rng.choice(WORDS)
            kind = rng.randrange(3)
            if kind == 0:
                row = {"prompt": f"Upper: {w}\n", "completion": w.upper()}
            elif kind == 1:
                row = {"prompt": f"Reverse: {w}\n", "completion": w[::-1]}
            else:
                row = {"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": f"Double: {w}"},
                                    {"role": "assistant", "content": w + w}]}
            f.write(json.dumps(row) + "\n")
    return path


def train(tmp, name, sets, np_=1, expect_ok=True):
    metrics = os.path.join(tmp, f"{name}.jsonl")
    cmd = ([shutil.which("mpirun"), "-np", str(np_), "--bind-to", "none"] if np_ > 1 else [])
    cmd += [LATTICE, "train", "--config", CONFIG,
            "--set", f"data.train={os.path.join(tmp, 'train.jsonl')}",
            "--set", f"data.val={os.path.join(tmp, 'val.jsonl')}",
            "--set", "train.threads=1", "--set", f"train.metrics_file={metrics}",
            "--set", f"train.save_weights={os.path.join(tmp, name + '.safetensors')}"]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    if expect_ok:
        check(f"{name}: exit 0", r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}")
    rows = [json.loads(l) for l in open(metrics)] if r.returncode == 0 and expect_ok else []
    return rows, r


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def main():
    tmp = tempfile.mkdtemp(prefix="lattice_sft_")
    try:
        write_dataset(os.path.join(tmp, "train.jsonl"), 240, 1)
        write_dataset(os.path.join(tmp, "val.jsonl"), 40, 2)
        prepared = os.path.join(tmp, "train.jsonl.lattice-sft")

        # 1. The masked loss falls, packed (the config's default) and unpacked.
        steps = ["train.steps=60", "train.warmup_steps=5", "train.eval_interval=60",
                 "train.log_interval=60"]
        packed, r = train(tmp, "packed", steps)
        check("first run prepares the JSONL", "sft: prepared " in r.stdout, r.stdout)
        check("packed rows hold several examples", "packed, document-masked attention" in r.stdout,
              r.stdout)
        st1 = os.stat(prepared) if os.path.exists(prepared) else None
        if packed:
            first, last = packed[0]["loss"], packed[-1]["loss"]
            check(f"packed: masked loss falls ({first:.3f} -> {last:.3f})", last < 0.6 * first)
            check(f"packed: validation loss {packed[-1].get('val_loss', 99):.3f} < 0.6 * first "
                  "training loss", packed[-1].get("val_loss", 99) < 0.6 * first)
        unpacked, r = train(tmp, "unpacked", steps + ["data.pack=false"])
        if unpacked:
            first, last = unpacked[0]["loss"], unpacked[-1]["loss"]
            check(f"unpacked: masked loss falls ({first:.3f} -> {last:.3f})", last < 0.6 * first)

        # 2. The prepared file is reused, not rewritten.
        check("second run reuses the prepared file", "sft: reusing prepared " + prepared in r.stdout,
              r.stdout)
        st2 = os.stat(prepared) if os.path.exists(prepared) else None
        check("the prepared file was not rewritten (inode, mtime)",
              st1 is not None and st2 is not None and st1.st_ino == st2.st_ino
              and st1.st_mtime_ns == st2.st_mtime_ns)

        # 3. dp=2 and tp=2 equal one process, step for step.
        few = ["train.steps=4", "train.warmup_steps=1", "train.log_interval=1"]
        ref, _ = train(tmp, "ref", few)
        if mpirun_present() and ref:
            for name, extra in (("dp2", []), ("tp2", ["parallel.tp=2"]), ("pp2", ["parallel.pp=2"])):
                rows, _ = train(tmp, name, few + extra, np_=2)
                if rows:
                    worst = max(rel(a["loss"], b["loss"]) for a, b in zip(rows, ref))
                    check(f"{name}: per-step losses equal one process's (worst {worst:.2e} <= "
                          f"{TOL})", len(rows) == len(ref) and worst <= TOL,
                          [(a["loss"], b["loss"]) for a, b in zip(rows, ref)])

        # 4. train.init_from: a checkpoint directory and a safetensors file.
        ckpt = os.path.join(tmp, "ckpt")
        base, _ = train(tmp, "base", ["train.steps=40", "train.warmup_steps=2",
                                      f"checkpoint.dir={ckpt}"])
        for name, src in (("from_ckpt", ckpt), ("from_file", os.path.join(tmp, "base.safetensors"))):
            rows, r = train(tmp, name, ["train.steps=2", "train.warmup_steps=1",
                                        f"train.init_from={src}"])
            check(f"{name}: logs where it starts from", "train.init_from: starting from" in r.stdout,
                  r.stdout)
            if rows and base and packed:
                check(f"{name}: iteration 1 (fresh optimizer, step count from 0)",
                      rows[0]["step"] == 1)
                check(f"{name}: first loss {rows[0]['loss']:.3f} is the trained model's "
                      f"(fresh start: {packed[0]['loss']:.3f})",
                      rows[0]["loss"] < 0.7 * packed[0]["loss"])
        missing = os.path.join(tmp, "no-such-ckpt")
        _, r = train(tmp, "missing", ["train.steps=1", "train.warmup_steps=0",
                                          f"train.init_from={missing}"],
                     expect_ok=False)
        check("init_from a missing path: exit 1 naming the key and the path",
              r.returncode == 1 and "train.init_from" in r.stderr and missing in r.stderr
              and clean(r.stderr), r.stderr)
        _, r = train(tmp, "shape", ["train.steps=1", "train.warmup_steps=0",
                                    f"train.init_from={ckpt}", "model.d_model=32"], expect_ok=False)
        check("init_from a model of another shape: exit 1 naming the path and the shapes",
              r.returncode == 1 and "train.init_from" in r.stderr and ckpt in r.stderr
              and clean(r.stderr), r.stderr)

        # 5. Bad data names the file and line.
        bad = os.path.join(tmp, "bad.jsonl")
        ok_line = json.dumps({"prompt": "a", "completion": "b"})
        cases = [
            (json.dumps({"messages": [{"role": "user", "content": "hi"},
                                      {"role": "wizard", "content": "x"}]}),
             ["bad.jsonl:2", "wizard", "messages[1]"]),
            ('{"prompt": "a", ', ["bad.jsonl:2", "invalid JSON"]),
            (json.dumps({"prompt": "a"}), ["bad.jsonl:2", "completion"]),
            (json.dumps({"prompt": "x" * 300, "completion": "y"}),
             ["bad.jsonl:2", "model.seq_len"]),
        ]
        for line, want in cases:
            with open(bad, "w") as f:
                f.write(ok_line + "\n" + line + "\n")
            cmd = [LATTICE, "train", "--config", CONFIG, "--set", f"data.train={bad}",
                   "--set", "data.val=", "--set", "train.steps=1", "--set", "train.warmup_steps=0",
                   "--set", "train.threads=1",
                   "--set", "train.metrics_file=", "--set", "train.save_weights="]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
            check(f"bad data ({want[-1]}): exit 1 naming {want}",
                  r.returncode == 1 and all(w in r.stderr for w in want) and clean(r.stderr),
                  r.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return finish("sft_test")


if __name__ == "__main__":
    sys.exit(main())
