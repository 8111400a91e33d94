#!/usr/bin/env python3
# LATTICE_TEST_LABELS: numeric
"""Bitwise resume in bf16 and fp16 (docs/precision.md, docs/checkpoints.md; issue "device-neutral
compute", acceptance 8).

With train.precision bf16 or fp16 a checkpoint holds, besides the weights (the compute copy:
bf16/fp16 values) and Adam's moments, the optimizer's fp32 master weights
("optimizer/master/<param>", each element written by its ZeRO-1 owner) and, for fp16, the loss
scaler's state (scale, growth and hysteresis trackers) in the index. A run killed with SIGKILL on
every rank and resumed continues bit for bit: the metrics rows (loss, grad norm, lr, consumed
samples, skipped, loss scale) equal the straight run's and the final shards are byte for byte
the same, at (1,1,1) in bf16 and at (2,2,2) with sequence parallelism, ZeRO-1 and async saves
in fp16, whose loss scale grows during the run (loss_scale_window=3) so that the scaler's
trackers matter. In the bf16 checkpoint every weight is exactly its master rounded to bf16 (round
to nearest even), and the masters hold more than bf16 bits (they are not a copy of the weights).
Control: an fp16 checkpoint whose loss-scaler state is reset resumes with another scale and
differs.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pylib"))
import checkpoint_test as ck  # noqa: E402
import lattice_testing  # noqa: E402
from lattice_testing import check, finish, mpirun_present, write_random_tokens  # noqa: E402

BF16 = ["--set", "train.precision=bf16"]
# fp16 with a scale that does not overflow these gradients and grows every 3 clean steps.
FP16 = ["--set", "train.precision=fp16", "--set", "train.initial_loss_scale=1024",
        "--set", "train.loss_scale_window=3"]
# The resumed rows must also carry the same loss scale.
lattice_testing.EXACT = lattice_testing.EXACT + ("loss_scale", "overflow")
ck.EXACT = lattice_testing.EXACT


def control(tmp, straight, ref, extra, name, edit):
    """Resume from a copy of step 4 whose index `edit` changed: the rows must then differ."""
    root = os.path.join(tmp, f"control-{name}")
    shutil.copytree(ck.step_dir(straight, 4), ck.step_dir(root, 4))
    path = os.path.join(ck.step_dir(root, 4), "index.json")
    idx = json.load(open(path))
    edit(idx)
    json.dump(idx, open(path, "w"))
    r = ck.train(tmp, 1, extra + ["--set", f"checkpoint.dir={root}",
                                  "--set", f"train.metrics_file={root}.jsonl"])
    diff = ck.same_rows(ck.rows_of(f"{root}.jsonl"), ref, range(5, ck.STEPS + 1))
    check(f"control ({name}): the resume runs ({r.returncode}) and the bitwise comparison "
          f"fails ({diff})", r.returncode == 0 and diff != "", r.stdout + r.stderr)


def stored(ckpt):
    """{key: uint32 bits} of a one-rank checkpoint's tensors (one box each)."""
    idx = ck.index_of(ckpt)
    out = {}
    for key, t in idx["tensors"].items():
        (b,) = t["boxes"]
        raw = open(os.path.join(ckpt, idx["files"][b["file"]]["name"]), "rb").read()
        out[key] = np.frombuffer(raw[b["byte_offset"]:b["byte_offset"] + b["nbytes"]],
                                 dtype=np.uint32)
    return out


def round_to_bf16_bits(u):
    """fp32 bits rounded to bf16 (nearest, ties to even) and back, for finite values."""
    u = u.astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32)


def check_masters(ckpt):
    t = stored(ckpt)
    masters = {k[len("optimizer/master/"):]: v for k, v in t.items()
               if k.startswith("optimizer/master/")}
    models = {k[len("model/"):]: v for k, v in t.items() if k.startswith("model/")}
    check("bf16: the checkpoint holds an fp32 master for every weight",
          sorted(masters) == sorted(models) and masters, sorted(t)[:6])
    bad = [k for k in models if not np.array_equal(models[k], round_to_bf16_bits(masters[k]))]
    check("bf16: every weight is its master rounded to bf16", not bad, bad[:5])
    wide = sum(int(np.count_nonzero(v & 0xFFFF)) for v in masters.values())
    check(f"bf16: the masters carry bits beyond bf16 ({wide} elements do)", wide > 0)


def reset_scaler(idx):
    idx["loss_scaler"]["scale"] = 1024.0
    idx["loss_scaler"]["growth_tracker"] = 0


def main():
    if not mpirun_present():
        return finish("precision_resume_test")
    with tempfile.TemporaryDirectory() as tmp:
        write_random_tokens(os.path.join(tmp, "data.bin"))
        got = ck.bitwise_resume(tmp, "bf16 (1,1,1) sync", 1, BF16, [], kills=[5])
        if got is not None:
            straight, ref = got
            check_masters(ck.step_dir(straight, 4))
            idx = ck.index_of(ck.step_dir(straight, 4))
            check("bf16: no loss scaler in the index", "loss_scaler" not in idx, idx.keys())
            # eval honours train.precision: bf16 storage gives another loss than fp32 on the
            # same (bf16-valued) weights.
            losses = {}
            for p in ("bf16", "fp32"):
                r = ck.run([ck.LATTICE, "eval", "--config", ck.TINY, "--weights",
                            ck.step_dir(straight, 8), "--data", os.path.join(tmp, "data.bin"),
                            "--set", "model.n_layer=4", "--set", f"train.precision={p}",
                            "--max-samples", "16"])
                out = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {}
                losses[p] = (out.get("precision"), out.get("loss"))
            check(f"eval in bf16 and fp32 on the bf16 checkpoint: {losses}",
                  losses["bf16"][0] == "bf16" and losses["fp32"][0] == "fp32" and
                  losses["bf16"][1] is not None and losses["fp32"][1] is not None and
                  losses["bf16"][1] != losses["fp32"][1] and
                  abs(losses["bf16"][1] - losses["fp32"][1]) < 1e-2 * losses["fp32"][1], losses)
        got = ck.bitwise_resume(tmp, "fp16 (2,2,2) sp zero1 async", 8, FP16 + ck.LAYOUT_222,
                                ["--set", "checkpoint.async=true"], kills=[5])
        if got is not None:
            straight, ref = got
            scales = [r["loss_scale"] for r in ref]
            check(f"fp16: the loss scale grows during the run ({scales}) and no step overflows",
                  scales[0] == 1024 and scales[-1] > scales[0] and
                  not any(r["skipped"] for r in ref), scales)
            idx = ck.index_of(ck.step_dir(straight, 4))
            check("fp16: the index carries the loss scaler's state",
                  idx.get("loss_scaler", {}).get("scale") == scales[3], idx.get("loss_scaler"))
        got = ck.bitwise_resume(tmp, "fp16 (1,1,1) sync", 1, FP16, [], kills=[5])
        if got is not None:
            straight, ref = got
            control(tmp, straight, ref, FP16, "fp16 loss scaler reset", reset_scaler)
    return finish("precision_resume_test")


if __name__ == "__main__":
    sys.exit(main())
