#!/usr/bin/env python3
"""CPU training-step throughput of lattice vs PyTorch eager, side by side in one run.

Same model (a lattice config), same micro-batch and sequence length, same thread count, same
step (forward, backward, grad-norm clip, AdamW). The two are timed alternately, `--rounds` times,
each round reporting lattice's median step over `--repeats` steps; the figure is the median over
rounds. Prints one JSON line and a human summary with the ratio lattice/torch (>1 = lattice faster).

usage: tests/bench/cpu_train_step_vs_torch.py [--config configs/tiny-gpt2.yaml] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "oracle"))
from torch_reference import forward_loss, make_weights  # noqa: E402


def load_model_config(path, sets):
    with open(path) as f:
        raw = yaml.safe_load(f)
    m = raw["model"]
    t = raw.get("train", {})
    for s in sets:
        k, v = s.split("=", 1)
        sec, key = k.split(".", 1)
        (m if sec == "model" else t)[key] = yaml.safe_load(v)
    c = dict(arch=m.get("arch", "gpt2"), n_layer=m["n_layer"], d_model=m["d_model"],
             n_head=m["n_head"], n_kv_head=m.get("n_kv_head", 0), d_ff=m.get("d_ff", 0),
             vocab_size=m["vocab_size"], vocab_pad_multiple=m.get("vocab_pad_multiple", 64),
             seq_len=m["seq_len"], rope_theta=float(m.get("rope_theta", 10000.0)))
    tie = m.get("tie_embeddings", c["arch"] == "gpt2")
    c["tied"] = bool(tie) if tie != -1 else c["arch"] == "gpt2"
    return c, t.get("micro_batch_size", 4)


def torch_step_ms(c, batch, repeats, warmup):
    gen = torch.Generator().manual_seed(0)
    w = make_weights(c, gen)
    params = {k: v.clone().requires_grad_(True) for k, v in w.items()}
    opt = torch.optim.AdamW([{"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95))
    inputs = torch.randint(0, c["vocab_size"], (batch, c["seq_len"]), generator=gen)
    targets = torch.randint(0, c["vocab_size"], (batch, c["seq_len"]), generator=gen)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = forward_loss(params, c, inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def lattice_step_ms(binary, config, sets, threads, repeats, warmup):
    cmd = [binary, "bench", "train-step", "--config", config, "--repeats", str(repeats),
           "--warmup", str(warmup), "--set", f"train.threads={threads}"]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/tiny-gpt2.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lattice", default=os.environ.get("LATTICE_BIN", "build/lattice"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    c, batch = load_model_config(a.config, a.set)
    for s in a.set:
        if s.startswith("train.micro_batch_size="):
            batch = int(s.split("=")[1])
    lat, ref = [], []
    info = None
    for _ in range(a.rounds):
        info = lattice_step_ms(a.lattice, a.config, a.set, a.threads, a.repeats, a.warmup)
        lat.append(info["median_step_ms"])
        ref.append(torch_step_ms(c, batch, a.repeats, a.warmup))
    tokens = batch * c["seq_len"]
    lm, tm = statistics.median(lat), statistics.median(ref)
    result = {"bench": "cpu_train_step_vs_torch", "config": a.config, "sets": a.set,
              "threads": a.threads, "batch": batch, "seq_len": c["seq_len"],
              "params": info["params"], "torch": torch.__version__,
              "lattice_step_ms": lm, "torch_step_ms": tm,
              "lattice_tokens_per_s": tokens / lm * 1000, "torch_tokens_per_s": tokens / tm * 1000,
              "ratio": tm / lm, "rounds": a.rounds, "repeats": a.repeats}
    print(json.dumps(result))
    print(f"lattice {result['lattice_tokens_per_s']:.0f} tok/s vs torch {result['torch_tokens_per_s']:.0f} tok/s"
          f" -> ratio {result['ratio']:.2f}x (median of {a.rounds} rounds x {a.repeats} steps,"
          f" {a.threads} threads, batch {batch} x {c['seq_len']})")


if __name__ == "__main__":
    main()
