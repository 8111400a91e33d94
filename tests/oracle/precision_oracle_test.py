#!/usr/bin/env python3
# LATTICE_TEST_LABELS: numeric
"""Oracle parity of lattice's bf16 and fp16 training against PyTorch (issue 10's acceptance:
"bf16 and fp16 runs of the tiny GPT-2 and Llama configs over 50 steps track PyTorch's CPU
autocast (or an fp32 reference with bf16-rounded storage)").

The reference is the second one: torch_reference.forward_loss in fp32 torch ops, with every
activation lattice stores rounded to the compute dtype on the way forward and its gradient
rounded on the way back (StoreRounded below, passed as forward_loss's `store` hook), the ops
reading fp32 master weights rounded to the compute dtype after every update, and
torch.optim.AdamW on the fp32 masters with fp32 parameter gradients. Not autocast: torch 1.13's
CPU autocast refuses fp16 ("AutocastCPU only support Bfloat16"), and its bf16 is another scheme
than lattice's (kernels/storage_rounding_backend.h): it casts only around matmuls, so the
residual stream (bf16 + fp32 adds promote), the norms that read it and the loss stay fp32,
while the softmax and the GELU/SiLU after a matmul run in bf16 arithmetic instead of fp32 with
a rounded store; its distance to lattice would mix the two schemes' differences with the
implementations'. Where a lattice kernel is fused the reference follows it: the attention
backward reads the stored (rounded) output (rounded_attention), and GPT-2's GELU pass takes
the unrounded fc sum (forward_loss's store branch).

For the GPT-2-style and the Llama-style tiny models of decoder_oracle_test.py and a learnable
token stream (a fixed bigram map 90% of the time), 50 AdamW steps (warmup + cosine, clipping,
weight decay on matrices, 4 micro-batches of gradient accumulation, the whole data set every
step) in fp32, bf16 and fp16 (dynamic loss scaling from 2^10, growing every 10 clean steps):
  1. fp32: every step's loss within decoder_oracle_test's 1e-5 of torch's;
  2. bf16 and fp16, step 1 (the initial weights): the loss and the gradient norm are on torch's
     side of the precision effect, within half of torch's own distance from fp32;
  3. bf16 and fp16, every step: the loss within a tolerance derived from a control run (below);
     the largest lattice-vs-torch difference and the largest precision-vs-fp32 difference of
     torch's own training are printed side by side with their ratio, not compared (below);
  4. fp16: no step skipped or overflowed, and the loss scale reported as configured;
  5. the loss falls in every run.
"""
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decoder_oracle_test import CONFIGS, LATTICE, THREADS, TOL, run, write_config  # noqa: E402
from torch_reference import forward_loss, make_weights  # noqa: E402

# scripts/numeric-matrix.sh sets LATTICE_TEST_THREADS (decoder_oracle_test's THREADS); without
# it, one thread: these runs give the same bits on any thread count (checked with 1 and 2), and
# lattice's default (every core) on a 2-core machine that runs ctest -j2 spins against the
# other test and took 15-30 s instead of 0.3-1.3 s per run.
LATTICE_THREADS = THREADS or ["--set", "train.threads=1"]

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# 64 windows of seq_len tokens, all of them in every step's 4 micro-batches (full-batch
# training: no sampling noise between the runs).
STEPS, N_SAMPLES, MICRO = 50, 64, 16
LR, MIN_LR, WARMUP, WD, CLIP, BETA2 = 1e-2, 1e-3, 5, 0.1, 1.0, 0.99
# fp16: 2^10 instead of the 2^32 default, whose first steps would all overflow (the gradients
# of the 1024-token mean loss times 2^32 pass fp16's 65504); a window of 10 makes the scale
# double 5 times over 50 clean steps, so its growth is checked too.
INITIAL_SCALE, SCALE_WINDOW = 1024.0, 10

# ---- Tolerances ----------------------------------------------------------------------------
# Two implementations that round at the same storage points still differ: their fp32 ops
# differ by a few fp32 ulps (summation orders, lattice's ExpF within 2 ulp), and a stored value
# within that distance k 2^-24 (relative) of a rounding boundary rounds the other way: an error
# of one whole bf16/fp16 ulp (2^-7 / 2^-10 relative at most; the unit roundoffs are 2^-8 and
# 2^-11). A fraction f ~ k 2^-24 / 2^-7 (bf16) or k 2^-24 / 2^-10 (fp16) of the values flips,
# so at step 1 the flips are a random sum of rms sqrt(12 f) of the precision's own effect on
# the loss (whose rounding errors are uniform in +-ulp/2): 0.02 for bf16, 0.05 for fp16 at
# k = 4. Measured: up to 0.09 for the loss, 0.26 for the gradient norm (a sum of squares, in
# which the precision's effect partly cancels, so the ratio is larger). STEP1_FRACTION = 1/2 of
# torch's fp32-vs-low-precision distance keeps a margin of 2 over that, and fails a lattice
# that rounds nothing (a fraction of 1) or rounds elsewhere than torch.
STEP1_FRACTION = 0.5
# Over the steps the flips compound: Adam moves an element whose gradient is rounding noise by
# ~lr whatever its size, and a master weight that moves across a rounding boundary of its
# compute copy changes by a whole bf16/fp16 ulp (Llama, bf16, after 5 steps: 18% of the compute
# copy differs between lattice and torch, and as many between torch with float64 ops and torch
# with fp32 ops). No closed form bounds that growth, so it is measured on the run
# itself: a control run of the same reference with the step's 64 windows in one batch instead
# of 4 accumulated micro-batches. It rounds the same stored values and differs only by the
# order of the fp32 parameter-gradient sums, the kind of difference lattice-vs-torch has
# (lattice also sums its GEMMs, norms and attention in other orders). The largest per-step loss
# distance of the control over the run is the yardstick (a per-step value is one draw of a
# random projection, and can be near 0 at any step): lattice and torch differ by more fp32
# errors than one reordering (every op, not only the gradient sums), so CONTROL_FACTOR = 4
# covers a few times the control's perturbation (flips, and so their effect, grow as the
# square root of the fp32 distance: 4 covers a 16 times larger one). Measured: lattice's
# largest gap is 0.7-1.9 times the control's. The resulting tolerances, 4e-3 to 6e-3 in bf16
# and 7e-4 in fp16, are 1 to 1.5 unit roundoffs of each (2^-8 = 3.9e-3, 2^-11 = 4.9e-4)
# relative to the loss: the two trajectories stay about one rounding of the loss apart.
# That bounds the disagreement; it does not tell bf16 (fp16) from fp32, which step 1 does: after
# a few steps the flips decorrelate two correct trajectories to a fraction of the precision's
# own effect, measured 0.28-0.45 for bf16 (by the largest per-step values) and 0.35-0.75 for
# fp16 over the four OpenBLAS core types (the one-batch control reaches 0.9 of it in fp16).
# The fraction grows like sqrt(fp32 distance / ulp): sqrt(8) larger in fp16 than in bf16, and
# it is no bound: on CI's machine torch's own bf16 effect on Llama came out smaller than
# lattice-vs-torch (ratio 1.17), so "below the precision effect" is printed, not asserted.
CONTROL_FACTOR = 4.0
# The early window whose lattice-vs-torch / precision-effect ratio is printed (not asserted).
EARLY = 3


class StoreRounded(torch.autograd.Function):
    """A stored activation: the value rounded to `dtype` (nearest even), and in the backward
    its gradient rounded the same way (lattice stores the activation gradients too)."""

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.dtype = dtype
        return x.to(dtype).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g.to(ctx.dtype).to(g.dtype), None


def rounded_attention(dtype):
    """Causal attention whose output is stored rounded to `dtype` and whose backward reads that
    stored output, as lattice's (flash-attention style) backward does: the softmax gradient's
    row term is dO . O with the rounded O (autograd of the plain softmax would use the exact one).
    k and v come repeated to all heads."""

    class Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, mask):
            scale = 1.0 / math.sqrt(q.shape[-1])
            p = ((q @ k.transpose(-1, -2)) * scale).masked_fill(~mask, float("-inf")).softmax(-1)
            o = (p @ v).to(dtype).to(q.dtype)
            ctx.save_for_backward(q, k, v, p, o)
            ctx.scale = scale
            return o

        @staticmethod
        def backward(ctx, do):
            q, k, v, p, o = ctx.saved_tensors
            dp = do @ v.transpose(-1, -2)
            ds = p * (dp - (do * o).sum(-1, keepdim=True)) * ctx.scale
            return ds @ k, ds.transpose(-1, -2) @ q, p.transpose(-1, -2) @ do, None

    return Attention.apply


def lr_at(s):
    """lattice's schedule (model/optimizer.h): linear warmup, then cosine to MIN_LR."""
    if s <= WARMUP:
        return LR * s / WARMUP
    ratio = (s - WARMUP) / (STEPS - WARMUP)
    return MIN_LR + 0.5 * (1 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def torch_run(c, w, inputs, targets, precision, micro=MICRO):
    """STEPS of the reference in `precision`, accumulating micro-batches of `micro` windows
    (N_SAMPLES: the control). Returns the per-step losses, gradient norms (before clipping)
    and loss scales."""
    dtype = DTYPES[precision]
    store = None if dtype is None else (lambda t: StoreRounded.apply(t, dtype))
    attend = None if dtype is None else rounded_attention(dtype)
    masters = {k: v.detach().clone().requires_grad_(True) for k, v in w.items()}
    opt = torch.optim.AdamW(
        [{"params": [p for p in masters.values() if p.dim() >= 2], "weight_decay": WD},
         {"params": [p for p in masters.values() if p.dim() < 2], "weight_decay": 0.0}],
        lr=LR, betas=(0.9, BETA2), eps=1e-8)
    scale = INITIAL_SCALE if precision == "fp16" else 1.0
    losses, norms, scales = [], [], []
    parts = len(inputs) // micro
    for s in range(1, STEPS + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        # The compute copy: the masters rounded to the compute dtype (fp32: the masters).
        wc = {k: (m.detach().to(dtype).float() if dtype else m.detach().clone())
              for k, m in masters.items()}
        for t in wc.values():
            t.requires_grad_(True)
        loss = 0.0
        # lattice's micro-batches, each weighted by its share of the step's tokens (a power of
        # two here: exact).
        for i in range(0, len(inputs), micro):
            part = forward_loss(wc, c, inputs[i:i + micro], targets[i:i + micro], store, attend)
            (part * (scale / parts)).backward()
            loss += part.item() / parts
        for k, m in masters.items():
            m.grad = wc[k].grad * (1.0 / scale)  # a power of two: exact
        if not all(torch.isfinite(m.grad).all() for m in masters.values()):
            raise RuntimeError(f"torch reference {precision} step {s}: a non-finite gradient")
        norms.append(torch.nn.utils.clip_grad_norm_(list(masters.values()), CLIP).item())
        opt.step()
        losses.append(loss)
        # Megatron's dynamic scaler without overflows: x2 after each SCALE_WINDOW clean steps.
        if precision == "fp16" and s % SCALE_WINDOW == 0:
            scale *= 2
        scales.append(scale)
    return losses, norms, scales


def lattice_run(name, cfg, wfile, data, precision, tmp):
    metrics = os.path.join(tmp, f"{name}_{precision}_metrics.jsonl")
    extra = []
    if precision == "fp16":
        extra = ["--set", f"train.initial_loss_scale={INITIAL_SCALE}",
                 "--set", f"train.loss_scale_window={SCALE_WINDOW}"]
    run([LATTICE, "train", "--config", cfg, "--set", f"train.init_weights={wfile}",
         "--set", f"data.train={data}", "--set", f"train.steps={STEPS}",
         "--set", f"train.micro_batch_size={MICRO}",
         "--set", f"train.global_batch_size={N_SAMPLES}",
         "--set", f"train.lr={LR}", "--set", f"train.min_lr={MIN_LR}",
         "--set", f"train.warmup_steps={WARMUP}", "--set", f"train.weight_decay={WD}",
         "--set", f"train.grad_clip={CLIP}", "--set", f"train.beta2={BETA2}",
         "--set", f"train.precision={precision}",
         "--set", f"train.metrics_file={metrics}"] + extra + LATTICE_THREADS)
    return [json.loads(l) for l in open(metrics)]


def token_stream(c, gen):
    """N_SAMPLES windows (+1) of a learnable stream: t' = 5 t + 3 mod V 90% of the time."""
    V, n = c["vocab_size"], N_SAMPLES * c["seq_len"] + 1
    noise = torch.randint(0, V, (n,), generator=gen)
    keep = torch.rand(n, generator=gen) < 0.9
    t = [int(noise[0])]
    for i in range(1, n):
        t.append((5 * t[-1] + 3) % V if keep[i] else int(noise[i]))
    return torch.tensor(t, dtype=torch.int64)


def rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))


def check(name, c, tmp, rows):
    failures = []
    gen = torch.Generator().manual_seed(11 if name == "gpt2" else 12)
    w = make_weights(c, gen)
    T = c["seq_len"]
    tokens = token_stream(c, gen)
    data = os.path.join(tmp, f"{name}.bin")  # nanoGPT raw uint16: samples are stride-T windows
    tokens.numpy().astype(np.uint16).tofile(data)
    inputs = torch.stack([tokens[i * T: i * T + T] for i in range(N_SAMPLES)])
    targets = torch.stack([tokens[i * T + 1: i * T + T + 1] for i in range(N_SAMPLES)])
    wfile = os.path.join(tmp, f"{name}_init.safetensors")
    save_file(w, wfile)
    cfg = os.path.join(tmp, f"{name}.yaml")
    write_config(cfg, c)

    lat, ref, ctl = {}, {}, {}
    for p in DTYPES:
        t0 = time.time()
        lat[p] = lattice_run(name, cfg, wfile, data, p, tmp)
        t1 = time.time()
        ref[p] = torch_run(c, w, inputs, targets, p)
        t2 = time.time()
        if p != "fp32":
            ctl[p] = torch_run(c, w, inputs, targets, p, micro=N_SAMPLES)
        print(f"{name} {p}: lattice {t1 - t0:.1f} s, torch {t2 - t1:.1f} s, "
              f"one-batch control {time.time() - t2:.1f} s")
        if len(lat[p]) != STEPS:
            failures.append(f"{name} {p}: {len(lat[p])} metrics lines, expected {STEPS}")
            return failures
        losses = [m["loss"] for m in lat[p]]
        if not all(math.isfinite(x) for x in losses):
            failures.append(f"{name} {p}: non-finite lattice losses {losses}")
            return failures
        # The loss falls: ln(61) = 4.1 at the start, the bigram map's entropy (0.72) is the
        # floor; measured ~0.2 after 50 steps (windows are memorised too). Half is a clear fall.
        for who, l in (("lattice", losses), ("torch", ref[p][0])):
            if not l[-1] < 0.5 * l[0]:
                failures.append(f"{name} {p}: {who}'s loss did not fall ({l[0]:.4f} -> "
                                f"{l[-1]:.4f}); the test is not meaningful")

    # 1. fp32: the 10-step test's tolerance holds over 50 steps (measured <= 5e-7).
    d32 = rel([m["loss"] for m in lat["fp32"]], ref["fp32"][0])
    for s in np.nonzero(d32 > TOL)[0]:
        failures.append(f"{name} fp32 step {s + 1}: loss rel diff {d32[s]:.2e} > {TOL:.0e}")
    rows.append((name, "fp32", d32.max(), TOL, float("nan"), lat["fp32"][-1]["loss"],
                 ref["fp32"][0][-1]))

    for p in ("bf16", "fp16"):
        losses = np.array([m["loss"] for m in lat[p]])
        norms = np.array([m["grad_norm"] for m in lat[p]])
        t_loss, t_norm, t_scale = (np.array(x) for x in ref[p])
        f_loss, f_norm = np.array(ref["fp32"][0]), np.array(ref["fp32"][1])
        gap = rel(losses, t_loss)              # lattice vs torch, same precision
        effect = rel(t_loss, f_loss)           # what the precision does to torch's training
        control = rel(ctl[p][0], t_loss).max()  # one batch vs 4 micro-batches, same precision

        # 2. Step 1: on torch's side of the precision effect.
        for what, a, b, f in (("loss", losses[0], t_loss[0], f_loss[0]),
                              ("grad norm", norms[0], t_norm[0], f_norm[0])):
            if not abs(a - b) <= STEP1_FRACTION * abs(b - f):
                failures.append(
                    f"{name} {p} step 1 {what}: lattice {a:.9g} vs torch {b:.9g} differs by "
                    f"{abs(a - b):.3g}, more than {STEP1_FRACTION} of torch's distance "
                    f"{abs(b - f):.3g} from fp32 ({f:.9g})")
        # 3. Every step within the control's yardstick.
        tol = CONTROL_FACTOR * control
        for s in np.nonzero(gap > tol)[0]:
            failures.append(f"{name} {p} step {s + 1}: loss lattice {losses[s]:.9g} torch "
                            f"{t_loss[s]:.9g} rel diff {gap[s]:.2e} > tolerance {tol:.2e} "
                            f"({CONTROL_FACTOR} x the one-batch control's {control:.2e})")
        # Not asserted over the run: that lattice-vs-torch stays below the precision's effect.
        # After ~10 steps both are saturated draws of the same chaotic divergence (two correct
        # trajectories whose rounding flips have decorrelated), so their largest values are
        # of one size and either can be the larger: CI's torch gave Llama bf16 a ratio of 1.17
        # (2.04e-3 vs 1.74e-3), this machine 0.39-0.40 over four OpenBLAS core types. Step 1
        # (check 2) is what tells the precision from fp32; the run's ratio is in the summary
        # table, the early window's (steps 1-3, rms; measured 0.10-0.35) is printed here.
        early = float(np.sqrt(np.mean(gap[:EARLY] ** 2)) / np.sqrt(np.mean(effect[:EARLY] ** 2)))
        print(f"{name} {p}: lattice-vs-torch / precision effect, steps 1-{EARLY} rms: "
              f"{early:.3f}")
        # 4. fp16's loss scaler: no overflow at these scales, growth every SCALE_WINDOW steps.
        if p == "fp16":
            bad = [m["step"] for m in lat[p] if m["skipped"] or m["overflow"]]
            if bad:
                failures.append(f"{name} fp16: steps {bad} skipped or overflowed, expected none")
            got = [m["loss_scale"] for m in lat[p]]
            if got != list(t_scale):
                failures.append(f"{name} fp16: loss scales {got}, expected {list(t_scale)}")
        worst = int(gap.argmax())
        print(f"{name} {p}: worst step {worst + 1} lattice {losses[worst]:.8f} torch "
              f"{t_loss[worst]:.8f}; step 1 loss gap {gap[0]:.2e}, grad norm gap "
              f"{abs(norms[0] - t_norm[0]) / t_norm[0]:.2e} (effect {effect[0]:.2e}, "
              f"{abs(t_norm[0] - f_norm[0]) / f_norm[0]:.2e})")
        rows.append((name, p, gap.max(), tol, effect.max(), losses[-1], t_loss[-1]))
    return failures


def main():
    torch.set_num_threads(1)
    failures, rows = [], []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name, c in CONFIGS.items():
            failures += check(name, c, tmp, rows)
    print(f"\n{'config':6s} {'prec':4s} {'worst |lat-torch|/torch':>24s} {'tolerance':>10s} "
          f"{'prec-vs-fp32 (torch)':>21s} {'ratio':>6s} {'final lattice':>14s} "
          f"{'final torch':>12s}")
    for name, p, gap, tol, effect, fl, ft in rows:
        print(f"{name:6s} {p:4s} {gap:24.2e} {tol:10.2e} {effect:21.2e} {gap / effect:6.2f} "
              f"{fl:14.6f} {ft:12.6f}")
    print(f"({time.time() - start:.0f} s)")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("precision oracle: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
