#!/usr/bin/env python3
"""Checkpoint benchmark: gpt2-124m at (dp, tp, pp) = (2, 2, 2) under mpirun -np 8.

Measures, in one run on one disk (the checkpoint directory's):
  save GB/s     a sync checkpoint's bytes over the time from the start of the save to its
                commit (every rank writing its shard, fsync, index, renames), next to the
                faster of `dd if=/dev/zero of=<dir>/dd.bin bs=8M conv=fsync` and the same with
                `oflag=direct` (lattice writes with O_DIRECT), same byte count;
  load GB/s     the resume's read (every rank reading and CRC-checking the boxes it holds)
                over its wall time, next to the faster of `dd if=<shard> of=/dev/null bs=8M`
                over every shard and the same with `iflag=direct`; both cold: each file's pages
                are dropped from the page cache first (posix_fadvise DONTNEED, no root needed);
  dd x8         diagnostic only, not the targets' reference: the same dd run as one process
                per shard, all at once, as lattice's ranks write and read (on a disk that
                serves one stream best, this is what 8 concurrent streams get);
  async cost    the training loop's time per step (step_ms + checkpoint_ms of the metrics
                rows) with an async save every `--interval` steps: within the run (all steps
                over the steps with no save in flight and no pause), and over a run without any
                checkpoint (and with sync saves, for scale);
  host memory   the largest rank's peak resident memory over the run (VmHWM, which the trainer
                prints at the end) with sync and with async saves, above the run without
                checkpoints, against the largest rank's shard: an async save should cost its
                own shard (the host copy), a sync save nothing.

Rounds (--rounds, default 3) run the three training runs (no checkpoints, sync, async) in a
rotated order, then dd and the load, so the figures of one round share the machine's state;
each round prints its ratios and the load average, and the summary gives the medians.

The model keeps gpt2-124m's shape except model.seq_len (default 128, so a step takes seconds on
a CPU; the position table shrinks from 1024 to 128 rows, 0.6% of the bytes). Usage:
  tests/bench/checkpoint_bench.py [--lattice build/lattice] [--dir /tmp/ckbench] [--rounds 3]
      [--json out.json]
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
DIRECT_RE = re.compile(r"([\d.]+) MiB of it read by one rank alone, with direct I/O")


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


def load_average():
    return open("/proc/loadavg").read().split()[0]


def evict(paths):
    # Drops the files' pages from the page cache (after writing back any dirty ones), so a read
    # comes from the disk; unprivileged, unlike /proc/sys/vm/drop_caches.
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def dd(cmd):
    t0 = time.time()
    r = sh(cmd)
    if r.returncode != 0:
        sys.exit(r.stderr)
    return time.time() - t0


def dd_parallel(cmds):
    """Seconds for the dd commands run all at once (as lattice's 8 ranks do)."""
    t0 = time.time()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
             for c in cmds]
    for pr in procs:
        if pr.wait() != 0:
            sys.exit(pr.stderr.read().decode())
    return time.time() - t0


def dd_write(path, nbytes, ways):
    """GB/s of dd writing nbytes: (conv=fsync, oflag=direct, `ways` concurrent oflag=direct
    writers of nbytes/ways each)."""
    count = max(1, nbytes // (8 << 20))
    out = []
    for flags in (["conv=fsync"], ["oflag=direct", "conv=fsync"]):
        dt = dd(["dd", "if=/dev/zero", f"of={path}", "bs=8M", f"count={count}"] + flags)
        out.append(count * (8 << 20) / dt / 1e9)
        os.remove(path)
    part = max(1, count // ways)
    paths = [f"{path}.{i}" for i in range(ways)]
    dt = dd_parallel([["dd", "if=/dev/zero", f"of={p}", "bs=8M", f"count={part}",
                       "oflag=direct", "conv=fsync"] for p in paths])
    out.append(ways * part * (8 << 20) / dt / 1e9)
    for p in paths:
        os.remove(p)
    return out


def dd_read(paths):
    """GB/s of dd reading every file cold: (buffered, iflag=direct, all files at once buffered)."""
    total = sum(os.path.getsize(p) for p in paths)
    out = []
    for flags in ([], ["iflag=direct"]):
        evict(paths)
        dt = sum(dd(["dd", f"if={p}", "of=/dev/null", "bs=8M"] + flags) for p in paths)
        out.append(total / dt / 1e9)
    evict(paths)
    out.append(total / dd_parallel([["dd", f"if={p}", "of=/dev/null", "bs=8M"] for p in paths])
               / 1e9)
    return out


def run_round(args, k):
    """One round: the three runs (rotated order), dd, the load. Returns its figures."""
    rd = os.path.join(args.dir, f"round{k}")
    shutil.rmtree(rd, ignore_errors=True)
    os.makedirs(rd)
    sync_dir, async_dir = os.path.join(rd, "sync"), os.path.join(rd, "async")
    kinds = {
        "none": [],
        "sync": ["--set", f"checkpoint.dir={sync_dir}",
                 "--set", f"checkpoint.interval={args.interval}"],
        "async": ["--set", f"checkpoint.dir={async_dir}",
                  "--set", f"checkpoint.interval={args.interval}",
                  "--set", "checkpoint.async=true"],
    }
    order = ["none", "sync", "async"]
    order = order[k % 3:] + order[:k % 3]
    runs, loads = {}, [load_average()]
    for kind in order:
        runs[kind] = train(args, f"round{k}-{kind}", kinds[kind], args.steps)
        loads.append(load_average())
    saves = {kind: [m.groups() for m in SAVE_RE.finditer(runs[kind][0])]
             for kind in ("sync", "async")}
    if not saves["sync"] or not saves["async"]:
        sys.exit("no checkpoint lines in the output:\n" + runs["sync"][0] + runs["async"][0])

    ckpt = os.path.join(sync_dir, "step_%08d" % args.steps)
    index = json.load(open(os.path.join(ckpt, "index.json")))
    shards = [os.path.join(ckpt, f["name"]) for f in index["files"]]
    ckpt_bytes = sum(f["bytes"] for f in index["files"])
    dd_w = dd_write(os.path.join(rd, "dd.bin"), ckpt_bytes, len(shards))
    dd_r = dd_read(shards)
    # Load: resume the last sync checkpoint, cold, for one more step.
    evict(shards)
    load_out, _, _ = train(args, f"round{k}-load", ["--set", f"checkpoint.dir={sync_dir}"],
                           args.steps + 1)
    loads.append(load_average())
    m = LOAD_RE.search(load_out)
    read_mib, load_s = float(m.group(1)), float(m.group(2))
    d = DIRECT_RE.search(load_out)
    direct_mib = float(d.group(1)) if d else 0.0

    def loop_ms(rows, first=1):
        # Steps after the first (its warm-up allocations and page faults are in every run).
        return [r["step_ms"] + r.get("checkpoint_ms", 0.0) for r in rows[first:]]
    async_rows = runs["async"][1]
    sync_save = saves["sync"][-1]
    f = {
        "order": order, "loads": loads, "ckpt_bytes": ckpt_bytes, "shards": len(shards),
        "largest_shard": max(f["bytes"] for f in index["files"]),
        "save_s": float(sync_save[3]), "shard_write_s": float(sync_save[4]),
        "save_gbs": float(sync_save[1]) * 1048576 / float(sync_save[3]) / 1e9,
        "dd_write_fsync": dd_w[0], "dd_write_direct": dd_w[1], "dd_write_parallel": dd_w[2],
        "load_s": load_s, "read_mib": read_mib, "direct_mib": direct_mib,
        "load_gbs": ckpt_bytes / load_s / 1e9,
        "dd_read_cold": dd_r[0], "dd_read_direct": dd_r[1], "dd_read_parallel": dd_r[2],
        "none_ms": float(np.mean(loop_ms(runs["none"][1]))),
        "sync_ms": float(np.mean(loop_ms(runs["sync"][1]))),
        "async_ms": float(np.mean(loop_ms(async_rows))),
        "clean_ms": [r["step_ms"] for r in async_rows[1:]
                     if not r["checkpoint_in_flight"] and r["checkpoint_ms"] < 1.0],
        "in_flight_ms": [r["step_ms"] for r in async_rows[1:] if r["checkpoint_in_flight"]],
        "pauses_ms": [r["checkpoint_ms"] for r in async_rows if r["checkpoint_ms"] >= 1.0],
        "peaks": {kind: int(PEAK_RE.search(runs[kind][0]).group(1)) for kind in runs},
        "host_copy_mib": max(float(x[5]) for x in saves["async"]),
    }
    f["save_vs_dd"] = f["save_gbs"] / max(f["dd_write_fsync"], f["dd_write_direct"])
    f["load_vs_dd"] = f["load_gbs"] / max(f["dd_read_cold"], f["dd_read_direct"])
    f["async_over_none"] = f["async_ms"] / f["none_ms"] - 1
    f["sync_over_none"] = f["sync_ms"] / f["none_ms"] - 1
    c = np.mean(f["clean_ms"]) if f["clean_ms"] else float("nan")
    f["async_over_clean"] = f["async_ms"] / c - 1
    return f


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lattice", default=os.path.join(SRC, "build", "lattice"))
    p.add_argument("--dir", default="/tmp/lattice-ckpt-bench")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--interval", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="write every round's figures here")
    args = p.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    rng = np.random.default_rng(0)
    rng.integers(0, 50257, size=200_000, dtype=np.uint16).tofile(os.path.join(args.dir, "tokens.bin"))

    rounds = []
    for k in range(args.rounds):
        f = run_round(args, k)
        rounds.append(f)
        if k == 0:
            print(f"gpt2-124m (seq_len {args.seq_len}) at (dp,tp,pp)=(2,2,2) ZeRO-1, 8 ranks; "
                  f"checkpoint {f['ckpt_bytes'] / 1e9:.3f} GB in {f['shards']} shards "
                  f"(largest {f['largest_shard'] / 1e6:.1f} MB)")
        print(f"round {k} (order {'/'.join(f['order'])}; load average {' '.join(f['loads'])}):")
        print(f"  save {f['save_gbs']:.2f} GB/s ({f['save_s']:.2f} s, slowest shard write "
              f"{f['shard_write_s']:.2f} s); dd write conv=fsync {f['dd_write_fsync']:.2f}, "
              f"oflag=direct {f['dd_write_direct']:.2f} GB/s -> {100 * f['save_vs_dd']:.0f}% of "
              f"the faster; {f['shards']} concurrent dd oflag=direct "
              f"{f['dd_write_parallel']:.2f} GB/s")
        print(f"  load (cold) {f['load_gbs']:.2f} GB/s ({f['read_mib']:.0f} MiB read by all "
              f"ranks in {f['load_s']:.2f} s, {f['direct_mib']:.0f} MiB of it direct); dd read cold {f['dd_read_cold']:.2f}, "
              f"iflag=direct {f['dd_read_direct']:.2f} GB/s -> {100 * f['load_vs_dd']:.0f}%; "
              f"{f['shards']} concurrent dd {f['dd_read_parallel']:.2f} GB/s")
        print(f"  loop ms per step: none {f['none_ms']:.0f}, sync {f['sync_ms']:.0f} "
              f"({100 * f['sync_over_none']:+.1f}%), async {f['async_ms']:.0f} "
              f"({100 * f['async_over_none']:+.1f}%); async run: clean steps "
              f"{np.mean(f['clean_ms']):.0f}, in flight "
              f"{np.mean(f['in_flight_ms']) if f['in_flight_ms'] else 0:.0f}, pauses "
              f"{', '.join(f'{x:.0f}' for x in f['pauses_ms'])} ms "
              f"({100 * f['async_over_clean']:+.1f}% over its clean steps)")
        print(f"  peak RSS largest rank: none {f['peaks']['none']}, sync {f['peaks']['sync']}, "
              f"async {f['peaks']['async']} MiB (shard {f['largest_shard'] / 1048576:.0f} MiB, "
              f"host copy {f['host_copy_mib']:.0f} MiB)")
        sys.stdout.flush()
    def med(key):
        return float(np.median([f[key] for f in rounds]))

    def extra(kind):
        return float(np.median([f["peaks"][kind] - f["peaks"]["none"] for f in rounds]))
    print(f"median of {len(rounds)} rounds: save/dd {100 * med('save_vs_dd'):.0f}% "
          f"(target >= 80%), load/dd {100 * med('load_vs_dd'):.0f}% (target >= 80%), async "
          f"over none {100 * med('async_over_none'):+.1f}% and over its own clean steps "
          f"{100 * med('async_over_clean'):+.1f}% (target < 5%), sync over none "
          f"{100 * med('sync_over_none'):+.1f}%; extra peak RSS sync "
          f"{extra('sync'):+.0f} MiB, async {extra('async'):+.0f} MiB")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rounds, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
