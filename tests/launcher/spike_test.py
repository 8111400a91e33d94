#!/usr/bin/env python3
# LATTICE_TEST_LABELS: numeric
"""Loss-spike and NaN rollback (train.spike, docs/recovery.md), end to end under mpirun on a tiny
GPT-2 (issue 13, acceptance 4).

The spike is the test hook LATTICE_FAULT_INJECT="scale_loss:*:<k>:<factor>"
(runtime/io/fault_injection.h): the loss iteration k reports, and so what the detector sees, is
multiplied once per process. 2 ranks (dp=2), global batch 8, checkpoint.interval=5,
train.spike.window=8 (z_threshold 10), 20 iterations, spike at iteration 13.

1. Exactly one rollback and the run completes: one console line naming the loss, the iteration,
   the iteration reloaded and the skipped range [80, 104) (iterations 11..13 read global samples
   80..103); the metrics file holds every iteration once plus one rollback record; the loader
   position after iteration k > 10 is 104 + 8 (k - 10), so the window is never read again;
   TensorBoard shows iterations 1..20 once, the rolled-back 11..12 purged.
2. The skipped range is training state: the re-saved checkpoint of iteration 10 and every later
   one (step_15, step_20; index.json and `lattice ckpt inspect --json`) carry it.
3. The run after the rollback is bit for bit a run that skips the same range from the start of
   iteration 11 (a run killed before iteration 11 whose step_10 gets the range written into its
   index, then resumed): loss, grad norm, lr, consumed samples of iterations 1..20 are identical. And a
   resume from the rollback run's step_15 reproduces its iterations 16..20 bit for bit.
4. A resume of the re-saved step_10 at dp=4 reads the same samples (consumed samples equal,
   losses within 1e-5 relative: fp32 sums in another order, tests/parallel/engine_mpi_test.cc).
5. Control: the same checkpoint with the range removed from its index resumes into the window
   (iteration 11 reads samples 80..87: another loss) - the comparison of 3 can fail.
6. Non-finite streak: NaN losses at iterations 12 and 13 with train.spike.max_nonfinite=2 (and no
   z test) roll back once, skipping [80, 104), and the run completes.
7. train.spike.max_rollbacks: spikes at 13 and 17 with max_rollbacks=1: the first rolls back,
   the second stops every rank with an error naming the limit and the skipped ranges, and the
   newest checkpoint stays committed. A trigger before the first checkpoint is an error that
   says there is no checkpoint to roll back to.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pylib"))
from lattice_testing import (ENV, EXACT, LATTICE, TINY, check, clean, finish,  # noqa: E402
                             mpirun_present, write_random_tokens)

TOL = 1e-5  # fp32 sums in other orders (tests/parallel/engine_mpi_test.cc says why)
STEPS = 20
GBS = 8
# The spike the hook makes is ~1000 sigma; natural steps of these runs stay under 4 sigma (of a
# window of 8), so z_threshold=10 leaves a wide margin on either side on any kernel.
SPIKE = ["--set", "train.spike.window=8", "--set", "train.spike.z_threshold=10",
         "--set", "checkpoint.interval=5"]


def train(tmp, name, np_, extra, fault=None, steps=STEPS):
    """Runs lattice train with metrics in <tmp>/<name>.jsonl and checkpoints in <tmp>/<name>."""
    cmd = [shutil.which("mpirun"), "-np", str(np_), "--bind-to", "none", LATTICE, "train",
           "--config", TINY, "--set", f"data.train={os.path.join(tmp, 'data.bin')}",
           "--set", f"train.steps={steps}", "--set", "train.warmup_steps=1",
           "--set", "train.micro_batch_size=2", "--set", f"train.global_batch_size={GBS}",
           "--set", "train.threads=1", "--set", "train.log_interval=100",
           "--set", f"train.metrics_file={os.path.join(tmp, name + '.jsonl')}",
           "--set", f"checkpoint.dir={os.path.join(tmp, name)}"] + extra
    env = dict(ENV)
    if fault:
        env["LATTICE_FAULT_INJECT"] = fault
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def metrics(tmp, name):
    """(step rows by step, rollback records, how many step rows there were)."""
    path = os.path.join(tmp, name + ".jsonl")
    lines = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    steps = [r for r in lines if "event" not in r]
    return {r["step"]: r for r in steps}, [r for r in lines if r.get("event") == "rollback"], \
        len(steps)


def same_rows(got, want, steps):
    for s in steps:
        if s not in got or s not in want:
            return f"step {s} is missing"
        for k in EXACT:
            if got[s].get(k) != want[s].get(k):
                return f"step {s} {k}: {got[s].get(k)!r} vs {want[s].get(k)!r}"
    return ""


def step_dir(root, n):
    return os.path.join(root, "step_%08d" % n)


def data_state(ckpt):
    return json.load(open(os.path.join(ckpt, "index.json")))["data_state"]


def edit_skipped(ckpt, skipped):
    """Rewrites the checkpoint's index with another list of skipped ranges (None: the key goes)."""
    path = os.path.join(ckpt, "index.json")
    idx = json.load(open(path))
    if skipped is None:
        idx["data_state"].pop("skipped", None)
    else:
        idx["data_state"]["skipped"] = skipped
    json.dump(idx, open(path, "w"))


def rollback_lines(r):
    return [line for line in r.stdout.splitlines() if line.startswith("lattice train: rollback:")]


def main():
    if not mpirun_present():
        return finish("spike_test")
    with tempfile.TemporaryDirectory() as tmp:
        write_random_tokens(os.path.join(tmp, "data.bin"))

        # 1. One spike at iteration 13: exactly one rollback, to 10, skipping [80, 104).
        tb = os.path.join(tmp, "tb")
        a = train(tmp, "a", 2, SPIKE + ["--set", f"train.tensorboard_dir={tb}"],
                  fault="scale_loss:*:13:4")
        lines = rollback_lines(a)
        check("a spike at iteration 13 rolls back once and the run completes",
              a.returncode == 0 and len(lines) == 1 and clean(a.stderr), a.stdout + a.stderr)
        line = lines[0] if lines else ""
        check("the rollback line names the loss, the sigma, the window, the iteration reloaded and "
              "the skipped range",
              "at iteration 13 is" in line and "sigma above the last 8" in line and
              "reloading iteration 10" in line and "skipping samples [80, 104)" in line, line)
        rows, records, n = metrics(tmp, "a")
        check("the metrics hold iterations 1..20 once each and one rollback record",
              n == STEPS and sorted(rows) == list(range(1, STEPS + 1)) and len(records) == 1,
              (n, sorted(rows), records))
        rec = records[0] if records else {}
        check("the rollback record says what happened",
              rec.get("step") == 10 and rec.get("spike_step") == 13 and
              rec.get("trigger") == "spike" and rec.get("skipped_begin") == 80 and
              rec.get("skipped_end") == 104 and rec.get("skipped") == [[80, 104]] and
              rec.get("rollbacks") == 1 and rec.get("sigma", 0) > 10 and rec.get("window") == 8,
              rec)
        want_pos = {k: GBS * k if k <= 10 else 104 + GBS * (k - 10) for k in range(1, STEPS + 1)}
        check("after the rollback the loader never reads samples 80..103 again",
              all(rows.get(k, {}).get("consumed_samples") == want_pos[k] for k in want_pos),
              {k: rows.get(k, {}).get("consumed_samples") for k in want_pos})

        # TensorBoard: the session start after the rollback purges the rolled-back steps.
        from tensorboard.backend.event_processing import event_accumulator
        acc = event_accumulator.EventAccumulator(tb, size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
        check("TensorBoard holds iterations 1..20 once, without the rolled-back ones",
              [st for st, _ in losses] == list(range(1, STEPS + 1)) and
              all(abs(v - rows[st]["loss"]) <= 1e-6 * abs(rows[st]["loss"]) for st, v in losses),
              losses)

        # 2. The range is in the re-saved checkpoint of 10 and in every later one.
        ck = os.path.join(tmp, "a")
        states = {k: data_state(step_dir(ck, k)) for k in (10, 15, 20)}
        check("the checkpoints of 10 (saved again), 15 and 20 carry the skipped range",
              all(s.get("skipped") == [[80, 104]] for s in states.values()) and
              states[10]["consumed_samples"] == 80 and states[15]["consumed_samples"] == 144 and
              states[20]["consumed_samples"] == 184, states)
        ins = subprocess.run([LATTICE, "ckpt", "inspect", step_dir(ck, 15), "--json"],
                             capture_output=True, text=True, env=ENV)
        check("lattice ckpt inspect --json shows it",
              ins.returncode == 0 and
              json.loads(ins.stdout or "{}").get("data_state", {}).get("skipped") == [[80, 104]],
              ins.stdout + ins.stderr)

        # 3. Bit for bit a run that skips the same range from the start of iteration 11.
        # Killed (SIGKILL on every rank) before iteration 11: the same lr schedule as a
        # 20-iteration run, with step_10 its newest checkpoint.
        r1 = train(tmp, "ref", 2, SPIKE, fault="train_step:*:11")
        edit_skipped(step_dir(os.path.join(tmp, "ref"), 10), [[80, 104]])
        r2 = train(tmp, "ref", 2, SPIKE)
        ref, ref_records, ref_n = metrics(tmp, "ref")
        check("a run with [80, 104) skipped from iteration 11 on runs and resumes",
              r1.returncode != 0 and r2.returncode == 0 and ref_n == STEPS and not ref_records,
              r1.stdout + r1.stderr + r2.stdout + r2.stderr)
        diff = same_rows(rows, ref, range(1, STEPS + 1))
        check("the rolled-back run equals it bit for bit (iterations 1..20)", diff == "", diff)
        shutil.copytree(ck, os.path.join(tmp, "from15"))
        shutil.rmtree(step_dir(os.path.join(tmp, "from15"), 20))
        shutil.copy(os.path.join(tmp, "a.jsonl"), os.path.join(tmp, "from15.jsonl"))
        r = train(tmp, "from15", 2, SPIKE)
        got, _, _ = metrics(tmp, "from15")
        diff = same_rows(got, rows, range(16, STEPS + 1))
        check("a resume from the rolled-back run's step_15 reproduces iterations 16..20 bit for bit",
              r.returncode == 0 and "resumed from" in r.stdout and diff == "",
              diff + r.stdout + r.stderr)

        # 4. The re-saved step_10 (position 80, [80, 104) ahead of it) resumed at dp=4.
        r = train(tmp, "dp4", 4, SPIKE + ["--set", f"checkpoint.resume={step_dir(ck, 10)}"])
        got, _, _ = metrics(tmp, "dp4")
        close = all(k in got and got[k]["consumed_samples"] == rows[k]["consumed_samples"] and
                    abs(got[k]["loss"] - rows[k]["loss"]) <= TOL * abs(rows[k]["loss"])
                    for k in range(11, STEPS + 1))
        check("resumed at dp=4 from the re-saved step_10 it skips the same samples",
              r.returncode == 0 and close,
              r.stdout + r.stderr + str({k: (got.get(k, {}).get("consumed_samples"),
                                             got.get(k, {}).get("loss"), rows[k]["loss"])
                                         for k in range(11, 14)}))

        # 5. Control: without the range in its index the same checkpoint reads the window.
        shutil.copytree(step_dir(ck, 10), os.path.join(tmp, "noskip", "step_00000010"))
        edit_skipped(os.path.join(tmp, "noskip", "step_00000010"), None)
        r = train(tmp, "noskip", 2, SPIKE)
        got, _, _ = metrics(tmp, "noskip")
        check("control: with the range removed the resumed run reads samples 80.. (another loss)",
              r.returncode == 0 and got.get(11, {}).get("consumed_samples") == 88 and
              got.get(11, {}).get("loss") != rows[11]["loss"], r.stdout + r.stderr)

        # 6. Two NaN losses in a row.
        r = train(tmp, "nan", 2, ["--set", "train.spike.max_nonfinite=2",
                                  "--set", "checkpoint.interval=5"],
                  fault="scale_loss:*:12:nan,scale_loss:*:13:nan")
        lines = rollback_lines(r)
        got, recs, n = metrics(tmp, "nan")
        check("2 non-finite steps in a row roll back once, skipping [80, 104), and the run completes",
              r.returncode == 0 and len(lines) == 1 and
              "2 non-finite steps in a row (iterations 12-13" in lines[0] and
              "skipping samples [80, 104)" in lines[0] and n == STEPS and len(recs) == 1 and
              recs[0].get("trigger") == "nonfinite" and recs[0].get("loss") is None and
              got[STEPS]["consumed_samples"] == 184,
              r.stdout + r.stderr)

        # 7. max_rollbacks, and no checkpoint yet.
        r = train(tmp, "limit", 2, SPIKE + ["--set", "train.spike.max_rollbacks=1"],
                  fault="scale_loss:*:13:4,scale_loss:*:17:4")
        err = r.stdout + r.stderr
        check("a second spike after max_rollbacks=1 stops every rank with the reason",
              r.returncode != 0 and len(rollback_lines(r)) == 1 and
              "at iteration 17 is" in err and "train.spike.max_rollbacks=1" in err and
              "already rolled back 1 time(s)" in err and "[80, 104)" in err and clean(r.stderr) and
              os.path.isdir(step_dir(os.path.join(tmp, "limit"), 15)), err)
        r = train(tmp, "early", 2, ["--set", "train.spike.max_nonfinite=1",
                                    "--set", "checkpoint.interval=5"],
                  fault="scale_loss:*:3:nan")
        err = r.stdout + r.stderr
        check("a trigger before the first checkpoint is an error naming the missing checkpoint",
              r.returncode != 0 and "1 non-finite step in a row (iterations 3-3" in err and
              "no committed checkpoint before iteration 3" in err and
              "checkpoint.interval=5" in err and clean(r.stderr), err)
    return finish("spike_test")


if __name__ == "__main__":
    sys.exit(main())
