#!/usr/bin/env python3
"""`train.tensorboard_dir` read back by TensorBoard itself (issue 14, acceptance 4).

The tiny GPT-2 trains 4 steps with a checkpoint; then resumes (a second event file in the same
directory, the steps continuing), checkpoints at step 5, writes step 6 and is killed (SIGKILL)
before step 7; then resumes from step 5 again (a third file), repeating step 6, to step 8. The
`tensorboard` package's own readers load the directory: its EventFileLoader finds the
file_version record first in each file and, in a resumed file, SessionLog START at the first
step it runs; its EventAccumulator finds every scalar at every step 1..8 exactly once (the
killed run's step 6 dropped by TensorBoard's restart rule), equal (as float32, the type of
Summary.Value.simple_value) to the value in the JSONL metrics row of that step; val/loss exists
exactly at the evaluation steps.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
from tensorboard.backend.event_processing import event_accumulator, event_file_loader

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pylib"))
from lattice_testing import ENV, LATTICE, TINY, check, finish  # noqa: E402

# TensorBoard tag -> key of the JSONL metrics row (launcher/trainer.cc writes both).
TAGS = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm",
        "train/tokens_per_s": "tokens_per_s", "train/step_ms": "step_ms",
        "train/tflops": "tflops", "train/peak_rss_mib": "peak_rss_mib",
        "train/loss_scale": "loss_scale", "train/mfu": "mfu", "val/loss": "val_loss"}


def train(tmp, steps, extra=(), fault=None):
    data = os.path.join(tmp, "data.bin")
    cmd = [LATTICE, "train", "--config", TINY, "--set", f"data.train={data}",
           "--set", f"data.val={data}", "--set", f"train.steps={steps}",
           "--set", "train.warmup_steps=1", "--set", "train.threads=1",
           "--set", "train.eval_interval=2", "--set", "train.eval_iters=1",
           "--set", "train.log_interval=3",
           # Any positive peak makes MFU known; this one keeps the CPU's figure near 1.
           "--set", "train.peak_tflops=0.01",
           "--set", f"train.metrics_file={tmp}/metrics.jsonl",
           "--set", f"train.tensorboard_dir={tmp}/tb",
           "--set", f"checkpoint.dir={tmp}/ckpt"] + list(extra)
    env = dict(ENV)
    if fault:
        env["LATTICE_FAULT_INJECT"] = fault  # runtime/io/fault_injection.h
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        rng.integers(0, 256, size=20000, dtype=np.uint16).tofile(os.path.join(tmp, "data.bin"))
        r = train(tmp, 4)
        if not check("train to step 4", r.returncode == 0, r.stdout + r.stderr):
            return 1
        every5 = ["--set", "checkpoint.interval=5"]
        r = train(tmp, 8, every5, fault="train_step:*:7")
        check("the resumed run, killed before step 7, died of SIGKILL",
              r.returncode == -signal.SIGKILL, r.stdout + r.stderr)
        r = train(tmp, 8, every5)
        if not check("the run resumed from step 5 trains to step 8",
                     r.returncode == 0 and "resumed from" in r.stdout, r.stdout + r.stderr):
            return 1
        rows = {x["step"]: x for x in map(json.loads, open(f"{tmp}/metrics.jsonl"))}
        check("the JSONL has steps 1..8", sorted(rows) == list(range(1, 9)), sorted(rows))

        tb = f"{tmp}/tb"
        # Names sort by their 10-digit start time first: the order the runs wrote them.
        files = sorted(os.listdir(tb))
        check("three event files (each run starts its own)",
              len(files) == 3 and all(f.startswith("events.out.tfevents.") and
                                      f.endswith(".lattice") for f in files), files)
        for f, first_step in zip(files, (1, 5, 6)):
            events = list(event_file_loader.EventFileLoader(os.path.join(tb, f)).Load())
            body = events[1:]
            if first_step > 1:
                start = body[0] if body else None
                check(f"{f}: SessionLog START at step {first_step} after the file_version",
                      start is not None and start.HasField("session_log") and
                      start.session_log.status == start.session_log.START and
                      start.step == first_step, events[:2])
                body = body[1:]
            check(f"{f}: file_version first, then one event per step from {first_step}",
                  bool(events) and events[0].file_version == "brain.Event:2" and
                  all(e.HasField("summary") for e in body) and bool(body) and
                  body[0].step == first_step, events[:3])

        acc = event_accumulator.EventAccumulator(tb, size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        have = set(acc.Tags()["scalars"])
        check("every tag is there", have == set(TAGS), sorted(have))
        for tag, key in TAGS.items():
            if tag not in have:
                continue
            got = {e.step: e.value for e in acc.Scalars(tag)}
            want_steps = sorted(s for s, row in rows.items() if key in row)
            if key == "val_loss":
                check("val/loss at the evaluation steps (2, 4 = the first run's last, 6, 8)",
                      want_steps == [2, 4, 6, 8], want_steps)
            else:
                check(f"{key} in every JSONL row", want_steps == list(range(1, 9)), want_steps)
            steps = [e.step for e in acc.Scalars(tag)]
            check(f"{tag}: each step once", steps == want_steps, steps)
            bad = [(s, got.get(s), rows[s][key]) for s in want_steps
                   if got.get(s) is None or np.float32(got[s]) != np.float32(rows[s][key])]
            check(f"{tag} equals the JSONL's {key} (as float32) at every step", not bad, bad)
        # A directory that cannot be made (its parent is a file) is an error naming the key, on
        # every rank: rank 0 alone opens the file, and the others must not wait for it.
        bad = ["--set", f"train.tensorboard_dir={tmp}/data.bin/tb", "--set",
               "checkpoint.resume=none"]
        r = train(tmp, 1, bad)
        check("an unusable train.tensorboard_dir is an error naming it",
              r.returncode == 1 and "train.tensorboard_dir" in r.stderr, r.stdout + r.stderr)
        if shutil.which("mpirun"):
            cmd = [shutil.which("mpirun"), "-np", "2", "--bind-to", "none", LATTICE, "train",
                   "--config", TINY, "--set", f"data.train={tmp}/data.bin",
                   "--set", "train.steps=1", "--set", "train.warmup_steps=1",
                   "--set", "train.threads=1"] + bad
            env = dict(ENV, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                       OMPI_MCA_btl_vader_single_copy_mechanism="none",
                       OMPI_MCA_rmaps_base_oversubscribe="1")
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
            check("... and with 2 ranks both stop with it (no rank waits)",
                  r.returncode != 0 and "train.tensorboard_dir" in r.stderr, r.stdout + r.stderr)
    return finish("tensorboard_test")


if __name__ == "__main__":
    sys.exit(main())
