#!/usr/bin/env python3
"""CPU training-step throughput: lattice against a current PyTorch 2.x in its fastest CPU form.

Never run by CI. The PyTorch side needs the benchmark-only environment made by
scripts/setup-bench-venv.sh; run this script with its Python:

    bash scripts/setup-bench-venv.sh
    .venv-bench/bin/python tests/bench/cpu_train_step_vs_torch.py            # the whole suite
    .venv-bench/bin/python tests/bench/cpu_train_step_vs_torch.py --only kjv-demo --rounds 3

The suite measures the shapes of docs/performance.md and prints its tables (markdown):
  1. lattice vs PyTorch per shape and thread count: the same GPT-2 (a lattice config: layers,
     width, heads, padded vocabulary, tied embeddings), the same micro-batch and sequence length,
     the same threads, and the same step: forward, backward, gradient-norm clip 1.0, AdamW.
     PyTorch runs a minimal GPT-2 of nn.Linear / nn.LayerNorm / nn.Embedding with
     F.scaled_dot_product_attention(is_causal=True), tanh GELU, fused AdamW (foreach where fused
     is missing), clip_grad_norm_(foreach), zero_grad(set_to_none), and lattice's (GPT-2's)
     initialisation; both eager and under torch.compile (the model's forward and backward).
     fp32 everywhere, default matmul precision.
     Rounds interleave: each round times lattice (`lattice bench train-step`, median of its
     steps), then PyTorch eager, then compiled, in a PyTorch process that stays up across
     rounds (compiled once). The ratio is per round, lattice / the faster PyTorch of that round;
     the table gives its median and range over rounds.
  2. lattice alone: 1 thread against 2 threads per shape (no contention: 2 must be faster).
  3. lattice on the demo: one process with 2 threads against `mpirun -np 2` with dp=2 (one
     thread per rank), both through `lattice train` on the same synthetic text.
Every figure has the 1-minute load average beside it (os.getloadavg() when it was measured):
figures taken at a load above the core count are not a quiet machine's.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

# (name, config, batch, seq_len, threads) — docs/performance.md's shapes.
SUITE = [
    ("tiny-gpt2", "configs/tiny-gpt2.yaml", 4, 64, 2),
    ("kjv-demo", "configs/kjv-demo.yaml", 8, 128, 2),
    ("gpt2-124m", "configs/gpt2-124m.yaml", 1, 256, 2),
    ("gpt2-124m", "configs/gpt2-124m.yaml", 4, 64, 2),
    ("kjv-demo", "configs/kjv-demo.yaml", 8, 128, 1),
]


def load():
    return os.getloadavg()[0]


# ---- The PyTorch worker (runs in its own process, under .venv-bench's Python) ----------------

def torch_worker(a):
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    os.environ["MKL_NUM_THREADS"] = str(a.threads)
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    m = json.loads(a.model)
    C, H, L, Vp, V, T, Fd = (m["d_model"], m["n_head"], m["n_layer"], m["padded_vocab"],
                             m["vocab_size"], a.seq, m["d_ff"])

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(C)
            self.qkv = nn.Linear(C, 3 * C)
            self.proj = nn.Linear(C, C)
            self.ln2 = nn.LayerNorm(C)
            self.fc = nn.Linear(C, Fd)
            self.mlp_proj = nn.Linear(Fd, C)

        def forward(self, x):
            B, T_, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(B, T_, 3, H, C // H).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T_, C))
            return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(Vp, C)
            self.wpe = nn.Embedding(T, C)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, targets):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for blk in self.blocks:
                x = blk(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied head over the padded vocab
            # The padding columns take no part in the softmax, as in lattice.
            return F.cross_entropy(logits.view(-1, Vp)[:, :V], targets.view(-1))

    def init_like_lattice(model):
        # GPT-2's initialisation, as lattice's (model/decoder_params.cc): N(0, 0.02) weights and
        # embeddings, residual-branch projections / sqrt(2 n_layer), zero biases. PyTorch's
        # default nn.Embedding init N(0, 1) would make the tied head's logits so large that the
        # softmax underflows into denormals, which slows MKL several-fold: not a fair step.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif name.startswith("ln") or ".ln" in name:
                    p.fill_(1.0)
                elif name.endswith("proj.weight"):
                    p.normal_(0.0, 0.02 / (2 * L) ** 0.5)
                else:
                    p.normal_(0.0, 0.02)

    def make(compiled):
        torch.manual_seed(0)
        model = GPT()
        init_like_lattice(model)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        try:
            opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=True)
            kind = "fused"
        except (RuntimeError, TypeError, ValueError):
            opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), foreach=True)
            kind = "foreach"
        fwd = torch.compile(model) if compiled else model
        return model, fwd, opt, kind

    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, V, (a.batch, T), generator=gen)
    tgt = torch.randint(0, V, (a.batch, T), generator=gen)

    def step(model, fwd, opt, *_):
        opt.zero_grad(set_to_none=True)
        loss = fwd(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()

    def median_ms(runner, n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            step(*runner)
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    eager = make(False)
    compiled, compile_error = None, None
    try:
        compiled = make(True)
        t0 = time.perf_counter()
        median_ms(compiled, 2)  # compiles forward and backward
        compile_s = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - any failure just means "no compiled figure"
        compiled, compile_error, compile_s = None, f"{type(e).__name__}: {e}"[:300], 0.0
    params = sum(p.numel() for p in eager[0].parameters())
    print(json.dumps({"ready": True, "torch": torch.__version__, "params": params,
                      "adamw": eager[3], "compile_error": compile_error,
                      "compile_s": compile_s, "mkl": torch.backends.mkl.is_available(),
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        r = {}
        median_ms(eager, a.warmup)
        r["eager_load"] = load()
        r["eager_ms"] = median_ms(eager, a.repeats)
        if compiled is not None:
            median_ms(compiled, a.warmup)
            r["compiled_load"] = load()
            r["compiled_ms"] = median_ms(compiled, a.repeats)
        print(json.dumps(r), flush=True)


# ---- The driver ------------------------------------------------------------------------------

def lattice_bench(binary, config, batch, seq, threads, warmup, repeats):
    cmd = [binary, "bench", "train-step", "--config", config, "--warmup", str(warmup),
           "--repeats", str(repeats), "--set", f"train.threads={threads}",
           "--set", f"train.micro_batch_size={batch}", "--set", f"model.seq_len={seq}"]
    before = load()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    j = json.loads(out.strip().splitlines()[-1])
    j["load"] = max(before, j.get("loadavg_1m", before))
    return j


def model_dims(config, seq):
    import yaml
    with open(os.path.join(ROOT, config)) as f:
        m = yaml.safe_load(f)["model"]
    assert m.get("arch", "gpt2") == "gpt2", "the PyTorch side is GPT-2 only"
    v, mult = m["vocab_size"], m.get("vocab_pad_multiple", 64)
    d_ff = m.get("d_ff", 0) or 4 * m["d_model"]
    return {"d_model": m["d_model"], "n_head": m["n_head"], "n_layer": m["n_layer"],
            "vocab_size": v, "padded_vocab": (v + mult - 1) // mult * mult, "d_ff": d_ff,
            "seq_len": seq}


def fmt_load(loads):
    return f"{statistics.mean(loads):.1f} (max {max(loads):.1f})"


def run_shape(a, name, config, batch, seq, threads):
    dims = model_dims(config, seq)
    worker = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", "--model", json.dumps(dims),
         "--threads", str(threads), "--batch", str(batch), "--seq", str(seq),
         "--warmup", str(a.warmup), "--repeats", str(a.repeats)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    info = json.loads(worker.stdout.readline())
    rows = []
    for r in range(a.rounds):
        lat = lattice_bench(a.lattice, config, batch, seq, threads, a.warmup, a.repeats)
        worker.stdin.write("round\n")
        worker.stdin.flush()
        t = json.loads(worker.stdout.readline())
        tokens = batch * seq
        row = {"lattice_tps": lat["tokens_per_s"], "lattice_load": lat["load"],
               "lattice_cpu_s_per_s": lat.get("cpu_s_per_s"), "lattice_params": lat["params"],
               "eager_tps": tokens / t["eager_ms"] * 1e3, "eager_load": t["eager_load"]}
        if "compiled_ms" in t:
            row["compiled_tps"] = tokens / t["compiled_ms"] * 1e3
            row["compiled_load"] = t["compiled_load"]
        best = max(row["eager_tps"], row.get("compiled_tps", 0.0))
        row["ratio"] = row["lattice_tps"] / best
        rows.append(row)
        print(f"  {name} {batch}x{seq} threads={threads} round {r + 1}/{a.rounds}: lattice "
              f"{row['lattice_tps']:,.0f} tok/s (load {row['lattice_load']:.1f}) | torch eager "
              f"{row['eager_tps']:,.0f} (load {row['eager_load']:.1f})"
              + (f" | compiled {row['compiled_tps']:,.0f} (load {row['compiled_load']:.1f})"
                 if "compiled_tps" in row else " | compiled: -")
              + f" | ratio {row['ratio']:.2f}", file=sys.stderr, flush=True)
    worker.stdin.close()
    worker.wait()
    if rows[0]["lattice_params"] != info["params"]:
        raise SystemExit(f"{name}: lattice has {rows[0]['lattice_params']} parameters, the "
                         f"PyTorch model {info['params']}: not the same model")
    return info, rows


def lattice_threads(a, config, batch, seq):
    """Per round: 1 thread then 2 threads, lattice alone."""
    out = {1: [], 2: []}
    for _ in range(a.rounds):
        for th in (1, 2):
            out[th].append(lattice_bench(a.lattice, config, batch, seq, th, a.warmup, a.repeats))
    return out


def train_tps(a, extra, nproc, workdir):
    """Median tokens/s of `lattice train` steps 4.. on synthetic text (one run)."""
    metrics = os.path.join(workdir, f"metrics_np{nproc}.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = [os.path.abspath(os.path.join(ROOT, a.lattice)), "train", "--config",
           "configs/kjv-demo.yaml", "--set", "data.tokenizer=byte",
           "--set", f"data.train={os.path.join(workdir, 'text.txt')}", "--set", "data.val=",
           "--set", f"train.steps={a.train_steps}", "--set", "train.warmup_steps=1",
           "--set", "train.eval_interval=0",
           "--set", "train.save_weights=", "--set", f"train.metrics_file={metrics}",
           "--set", "train.log_interval=1000"] + extra
    env = dict(os.environ)
    if nproc > 1:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            return None
        cmd = [mpirun, "-np", str(nproc), "--bind-to", "none"] + cmd
        if os.geteuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    before = load()
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    with open(metrics) as f:
        steps = [json.loads(line) for line in f if line.strip()]
    tps = statistics.median(s["tokens_per_s"] for s in steps[3:])
    return tps, max(before, load())


def dp_comparison(a):
    with tempfile.TemporaryDirectory() as workdir:
        # ~1.5 MB of pseudo-random words (the byte tokenizer: content does not change the speed).
        import random
        rng = random.Random(0)
        words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                 for _ in range(2000)]
        with open(os.path.join(workdir, "text.txt"), "w") as f:
            for _ in range(6000):
                f.write(" ".join(rng.choice(words) for _ in range(40)) + "\n\n")
        one, two = [], []
        for _ in range(a.rounds):
            one.append(train_tps(a, ["--set", "train.threads=2"], 1, workdir))
            r = train_tps(a, ["--set", "parallel.dp=2"], 2, workdir)
            if r is None:
                return None
            two.append(r)
        return one, two


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT).stdout.strip() + (
            "+changes" if subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                         text=True, cwd=ROOT).stdout.strip() else "")
    except OSError:
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--only", action="append", default=[],
                    help="run only these suite shapes (tiny-gpt2, kjv-demo, gpt2-124m)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per runner per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per runner per round")
    ap.add_argument("--train-steps", type=int, default=20, help="steps of each dp comparison run")
    ap.add_argument("--no-dp", action="store_true", help="skip the mpirun dp=2 comparison")
    ap.add_argument("--lattice", default=os.environ.get("LATTICE_BIN", "build/lattice"))
    ap.add_argument("--json", help="also write every measurement here")
    a = ap.parse_args()
    if a.worker:
        return torch_worker(a)

    try:
        import torch  # noqa: F401 - only to refuse a too-old PyTorch before any work
        if int(torch.__version__.split(".")[0]) < 2:
            raise ImportError(f"torch {torch.__version__}")
    except ImportError as e:
        raise SystemExit(f"needs PyTorch 2.x ({e}): run scripts/setup-bench-venv.sh and use "
                         ".venv-bench/bin/python")
    suite = [s for s in SUITE if not a.only or s[0] in a.only]
    started = datetime.datetime.now().astimezone()
    results, threads_cmp = [], {}
    for name, config, batch, seq, threads in suite:
        info, rows = run_shape(a, name, config, batch, seq, threads)
        results.append((name, config, batch, seq, threads, info, rows))
    for name, config, batch, seq, threads in suite:
        if (config, batch, seq) not in threads_cmp:
            threads_cmp[(config, batch, seq)] = (name, lattice_threads(a, config, batch, seq))
    dp = None if a.no_dp or (a.only and "kjv-demo" not in a.only) else dp_comparison(a)

    torch_version = results[0][5]["torch"] if results else "?"
    probe = json.loads(subprocess.run([a.lattice, "bench", "train-step", "--config",
                                       "configs/tiny-gpt2.yaml", "--repeats", "1", "--warmup", "0"],
                                      capture_output=True, text=True, cwd=ROOT).stdout
                       .strip().splitlines()[-1])
    blas = (f"GEMMs {probe.get('gemm', '?')}, OpenBLAS {probe.get('blas', '?')}, "
            f"kernels {probe.get('kernels', '?')}")
    print(f"Measured {started:%Y-%m-%d %H:%M %Z} on {cpu_model()}, {os.cpu_count()} cores "
          f"(load average when started: {os.getloadavg()[0]:.1f}); lattice {git_commit()} "
          f"({blas}); PyTorch {torch_version}; {a.rounds} interleaved rounds of "
          f"{a.warmup} warm-up + {a.repeats} timed steps per runner.")
    print(f"Command: `.venv-bench/bin/python tests/bench/cpu_train_step_vs_torch.py"
          + "".join(f" --only {o}" for o in a.only) + f" --rounds {a.rounds}`\n")
    print("| shape (batch x seq) | threads | lattice tok/s | PyTorch eager | PyTorch compiled "
          "| lattice / faster PyTorch, median [min, max] of rounds | load avg |")
    print("|---|---|---|---|---|---|---|")
    for name, config, batch, seq, threads, info, rows in results:
        med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
        ratios = [r["ratio"] for r in rows]
        loads = [r[k] for r in rows for k in ("lattice_load", "eager_load", "compiled_load") if k in r]
        compiled = (f"{med('compiled_tps'):,.0f}" if "compiled_tps" in rows[0]
                    else f"- ({info['compile_error'] or 'n/a'})")
        print(f"| {name} ({batch}x{seq}) | {threads} | {med('lattice_tps'):,.0f} | "
              f"{med('eager_tps'):,.0f} | {compiled} | {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}, {max(ratios):.2f}] | {fmt_load(loads)} |")
    print(f"\nPyTorch: AdamW {results[0][5]['adamw'] if results else '?'}, SDPA is_causal, "
          f"MKL {results[0][5]['mkl'] if results else '?'}.\n")
    print("| shape (batch x seq) | lattice 1 thread tok/s | 2 threads tok/s | speed-up, median "
          "[min, max] | CPU-s per s at 2 threads | load avg |")
    print("|---|---|---|---|---|---|")
    for (config, batch, seq), (name, t) in threads_cmp.items():
        one = [r["tokens_per_s"] for r in t[1]]
        two = [r["tokens_per_s"] for r in t[2]]
        sp = [b / a_ for a_, b in zip(one, two)]
        loads = [r["load"] for r in t[1] + t[2]]
        cpu = statistics.median(r.get("cpu_s_per_s", 0) for r in t[2])
        print(f"| {name} ({batch}x{seq}) | {statistics.median(one):,.0f} | "
              f"{statistics.median(two):,.0f} | {statistics.median(sp):.2f} [{min(sp):.2f}, "
              f"{max(sp):.2f}] | {cpu:.2f} | {fmt_load(loads)} |")
    if dp is not None:
        one, two = dp
        r = [b[0] / a_[0] for a_, b in zip(one, two)]
        print(f"\nDemo (kjv-demo, global batch 16), `lattice train` on synthetic text, median "
              f"tokens/s of steps 4-{a.train_steps}:\n")
        print("| one process, 2 threads | mpirun -np 2, dp=2, 1 thread each | mpirun / one "
              "process, median [min, max] | load avg |")
        print("|---|---|---|---|")
        print(f"| {statistics.median(x[0] for x in one):,.0f} | "
              f"{statistics.median(x[0] for x in two):,.0f} | {statistics.median(r):.2f} "
              f"[{min(r):.2f}, {max(r):.2f}] | {fmt_load([x[1] for x in one + two])} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": [dict(name=n, config=c, batch=b, seq=s, threads=t, info=i,
                                        rounds=rw) for n, c, b, s, t, i, rw in results],
                       "threads": [dict(name=n, config=c, batch=b, seq=s, runs=t)
                                   for (c, b, s), (n, t) in threads_cmp.items()],
                       "dp": dp}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
