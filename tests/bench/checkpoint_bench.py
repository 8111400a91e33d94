#!/usr/bin/env python3
"""Checkpoint benchmark: gpt2-124m at (dp, tp, pp) = (2, 2, 2) under mpirun -np 8.

Measures, in one run on one disk (the checkpoint directory's):
  save GB/s     a sync checkpoint's bytes over the time from the start of the save to its
                commit (every rank writing its shard, fsync, index, renames), next to
                `dd if=/dev/zero of=<dir>/dd.bin bs=8M conv=fsync` of the same byte count;
  load GB/s     the resume's read (every rank reading and CRC-checking the boxes it holds)
                over its wall time, next to `dd if=<that file> of=/dev/null bs=8M`; both read
                files the page cache may hold (nothing drops caches: the machine is shared);
  async cost    the training loop's time per step (step_ms + checkpoint_ms of the metrics
                rows) with an async save every `--interval` steps: within the run (all steps
                over the steps with no save in flight and no pause), and over a run without any
                checkpoint (and with sync saves, for scale);
  host memory   the largest rank's peak resident memory over the run (VmHWM, which the trainer
                prints at the end) with sync and with async saves, above the run without
                checkpoints, against the largest rank's shard: an async save should cost its
                own shard (the host copy), a sync save nothing.

The model keeps gpt2-124m's shape except model.seq_len (default 128, so a step takes seconds on
a CPU; the position table shrinks from 1024 to 128 rows, 0.6% of the bytes). Usage:
  tests/bench/checkpoint_bench.py [--lattice build/lattice] [--dir /tmp/ckbench] [--steps 6]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_btl_vader_single_copy_mechanism="none",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
SAVE_RE = re.compile(r"checkpoint (\S+) committed: ([\d.]+) MiB from (\d+) rank\(s\) in ([\d.]+) s "
                     r"\(shard write ([\d.]+) s.*?host copy ([\d.]+) MiB")
PEAK_RE = re.compile(r"peak resident memory (\d+) MiB")
LOAD_RE = re.compile(r"resumed from .* read ([\d.]+) MiB in ([\d.]+) s")


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, **kw)


def train(args, tag, extra, steps):
    metrics = os.path.join(args.dir, f"{tag}.jsonl")
    cmd = ["mpirun", "-np", "8", "--bind-to", "none", args.lattice, "train",
           "--config", os.path.join(SRC, "configs", "gpt2-124m.yaml"),
           "--set", f"data.train={os.path.join(args.dir, 'tokens.bin')}",
           "--set", f"model.seq_len={args.seq_len}", "--set", "parallel.tp=2",
           "--set", "parallel.pp=2", "--set", "parallel.zero1=true",
           "--set", "train.micro_batch_size=1", "--set", "train.global_batch_size=2",
           "--set", f"train.steps={steps}", "--set", "train.warmup_steps=1",
           "--set", "train.threads=1", "--set", "train.log_interval=1000",
           "--set", f"train.metrics_file={metrics}"] + extra
    t0 = time.time()
    r = sh(cmd)
    if r.returncode != 0:
        sys.exit(f"{tag}: lattice train failed:\n{r.stdout}\n{r.stderr}")
    rows = [json.loads(l) for l in open(metrics)]
    return r.stdout, rows, time.time() - t0


def dd_write(path, nbytes):
    count = max(1, nbytes // (8 << 20))
    t0 = time.time()
    r = sh(["dd", "if=/dev/zero", f"of={path}", "bs=8M", f"count={count}", "conv=fsync"])
    dt = time.time() - t0
    if r.returncode != 0:
        sys.exit(r.stderr)
    return count * (8 << 20) / dt / 1e9


def dd_read(path):
    t0 = time.time()
    r = sh(["dd", f"if={path}", "of=/dev/null", "bs=8M"])
    dt = time.time() - t0
    if r.returncode != 0:
        sys.exit(r.stderr)
    return os.path.getsize(path) / dt / 1e9


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lattice", default=os.path.join(SRC, "build", "lattice"))
    p.add_argument("--dir", default="/tmp/lattice-ckpt-bench")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--interval", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    rng = np.random.default_rng(0)
    rng.integers(0, 50257, size=200_000, dtype=np.uint16).tofile(os.path.join(args.dir, "tokens.bin"))

    base_out, base_rows, _ = train(args, "none", [], args.steps)
    sync_dir = os.path.join(args.dir, "sync")
    sync_out, sync_rows, _ = train(args, "sync", ["--set", f"checkpoint.dir={sync_dir}",
                                                  "--set", f"checkpoint.interval={args.interval}"],
                                   args.steps)
    async_dir = os.path.join(args.dir, "async")
    async_out, async_rows, _ = train(args, "async", ["--set", f"checkpoint.dir={async_dir}",
                                                     "--set", f"checkpoint.interval={args.interval}",
                                                     "--set", "checkpoint.async=true"], args.steps)
    saves = {"sync": [m.groups() for m in SAVE_RE.finditer(sync_out)],
             "async": [m.groups() for m in SAVE_RE.finditer(async_out)]}
    if not saves["sync"] or not saves["async"]:
        sys.exit("no checkpoint lines in the output:\n" + sync_out + async_out)

    # Load: resume the last sync checkpoint for one more step.
    load_out, _, _ = train(args, "load", ["--set", f"checkpoint.dir={sync_dir}"], args.steps + 1)
    m = LOAD_RE.search(load_out)
    read_mib, load_s = float(m.group(1)), float(m.group(2))

    ckpt = os.path.join(sync_dir, "step_%08d" % args.steps)
    index = json.load(open(os.path.join(ckpt, "index.json")))
    ckpt_bytes = sum(f["bytes"] for f in index["files"])
    largest_shard = max(f["bytes"] for f in index["files"])
    dd_w = dd_write(os.path.join(args.dir, "dd.bin"), ckpt_bytes)
    dd_r = dd_read(os.path.join(ckpt, index["files"][0]["name"]))
    os.remove(os.path.join(args.dir, "dd.bin"))

    def loop_ms(rows, first=1):
        # Steps after the first (its warm-up allocations and page faults are in every run).
        return [r["step_ms"] + r.get("checkpoint_ms", 0.0) for r in rows[first:]]
    base = np.mean(loop_ms(base_rows))
    sync_ms = np.mean(loop_ms(sync_rows))
    async_ms = np.mean(loop_ms(async_rows))
    clean = [r["step_ms"] for r in async_rows[1:]
             if not r["checkpoint_in_flight"] and r["checkpoint_ms"] < 1.0]
    in_flight = [r["step_ms"] for r in async_rows[1:] if r["checkpoint_in_flight"]]
    pauses = [r["checkpoint_ms"] for r in async_rows if r["checkpoint_ms"] >= 1.0]
    sync_save = saves["sync"][-1]
    save_gbs = float(sync_save[1]) * 1048576 / float(sync_save[3]) / 1e9
    print(f"gpt2-124m (seq_len {args.seq_len}) at (dp,tp,pp)=(2,2,2) ZeRO-1, 8 ranks; "
          f"checkpoint {ckpt_bytes / 1e9:.3f} GB in {len(index['files'])} shards "
          f"(largest {largest_shard / 1e6:.1f} MB)")
    print(f"  save (sync, commit included): {save_gbs:.2f} GB/s "
          f"({float(sync_save[3]):.2f} s; slowest shard write {float(sync_save[4]):.2f} s) "
          f"vs dd conv=fsync {dd_w:.2f} GB/s -> {100 * save_gbs / dd_w:.0f}%")
    load_gbs = ckpt_bytes / load_s / 1e9
    print(f"  load: {load_gbs:.2f} GB/s of checkpoint ({read_mib * 1048576 / load_s / 1e9:.2f} "
          f"GB/s of boxes read by all ranks, {read_mib:.0f} MiB in {load_s:.2f} s) vs dd read "
          f"{dd_r:.2f} GB/s -> {100 * load_gbs / dd_r:.0f}%")
    print(f"  loop time per step over runs: none {base:.0f} ms, sync every {args.interval} "
          f"{sync_ms:.0f} ms ({100 * (sync_ms / base - 1):+.1f}%), async every {args.interval} "
          f"{async_ms:.0f} ms ({100 * (async_ms / base - 1):+.1f}%)")
    if clean:
        c = np.mean(clean)
        print(f"  within the async run: {len(clean)} clean steps {c:.0f} ms, {len(in_flight)} "
              f"steps with a save in flight {np.mean(in_flight) if in_flight else 0:.0f} ms, "
              f"pauses {', '.join(f'{x:.0f}' for x in pauses)} ms; all steps "
              f"{async_ms:.0f} ms = {100 * (async_ms / c - 1):+.1f}% over clean steps")
    peaks = {k: int(PEAK_RE.search(o).group(1)) for k, o in
             (("none", base_out), ("sync", sync_out), ("async", async_out))}
    for kind in ("sync", "async"):
        print(f"  peak resident memory with {kind} saves: {peaks[kind]} MiB on the largest rank, "
              f"{peaks[kind] - peaks['none']:+d} MiB over no checkpoints (largest shard "
              f"{largest_shard / 1048576:.0f} MiB; host copy reported "
              f"{max(float(x[5]) for x in saves[kind]):.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
