#!/usr/bin/env python3
"""lattice never destroys or loses a user's file (runtime/io/output_file.h, launcher/preflight.h).

1. `lattice train` whose train.save_weights cannot be written fails before step 1, naming the
   path: its parent is a regular file, or its directory is read-only. Root ignores permission
   bits, so the read-only directory is made the first way that works here: a read-only tmpfs
   in a private mount namespace (unshare -m), else an immutable directory (chattr +i), else the
   run gives up root (setpriv to nobody) in front of a mode 0555 directory; a plain chmod when
   not root. The test says which one it used and fails if none works.
2. train.save_weights naming the train.init_weights file (same path, another spelling, a
   symbolic link, a hard link) is refused before any work; train.overwrite_init_weights=true
   allows it.
3. Symbolic links planted at the temporary names earlier versions used (PATH.tmp.PID,
   PATH.tmp.PID.N, PREFIX.bin.tmp.PID: the shell plants them for its own pid, then execs
   lattice, which keeps the pid) are not followed by train, prepare or tokenizer train.
4. A train.metrics_file that is a symbolic link is refused before step 1 and its target kept.
5. Devices and FIFOs stay what they are: /dev/null as train.save_weights, a FIFO as
   train.metrics_file (which receives the JSON lines), /dev/stdout as tokenizer --out.
6. Outputs that would overwrite inputs are refused: eval --grads-out = --weights, prepare
   --out whose PREFIX_train.bin is the --input, tokenizer train --out = --input.
"""
import json
import os
import stat
import struct
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pylib"))
from lattice_testing import CRASH_MARKS, LATTICE, TINY, check, finish  # noqa: E402

CRASH = CRASH_MARKS + ("Aborted",)


def run(args, prefix=(), timeout=120):
    return subprocess.run(list(prefix) + [LATTICE] + args, capture_output=True, text=True,
                          timeout=timeout)


def train_args(data, *sets, steps=200):
    args = ["train", "--config", TINY, "--set", f"data.train={data}", "--set",
            f"train.steps={steps}", "--set", "train.warmup_steps=0", "--set", "train.log_interval=1"]
    for s in sets:
        args += ["--set", s]
    return args


def refused_before_work(label, r, fragments):
    """Exit 1, every fragment on stderr, no training step printed, no crash."""
    missing = [f for f in fragments if f not in r.stderr]
    stepped = " iteration " in r.stdout
    crashed = any(c in r.stderr for c in CRASH)
    check(label, r.returncode == 1 and not missing and not stepped and not crashed,
          f"exit={r.returncode} missing={missing} stepped={stepped} stderr={r.stderr!r}")


def read_only_directory_run(tmp, data):
    """Runs train with save_weights in a read-only directory; returns (how, path, result)."""
    ro = os.path.join(tmp, "ro")
    os.makedirs(ro, exist_ok=True)
    target = os.path.join(ro, "model.safetensors")
    args = train_args(data, f"train.save_weights={target}")
    if os.geteuid() != 0:
        os.chmod(ro, 0o555)
        try:
            return "chmod 0555", target, run(args)
        finally:
            os.chmod(ro, 0o755)
    # 1. A read-only tmpfs over the directory, in a mount namespace of this run only.
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro,size=64k tmpfs '{ro}'"],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        script = f"mount -t tmpfs -o ro,size=64k tmpfs '{ro}' && exec \"$@\""
        return "read-only tmpfs (unshare -m)", target, run(
            args, prefix=["unshare", "-m", "sh", "-c", script, "sh"])
    # 2. An immutable directory: not even root may create a file in it.
    if subprocess.run(["chattr", "+i", ro], capture_output=True).returncode == 0:
        try:
            return "chattr +i", target, run(args)
        finally:
            subprocess.run(["chattr", "-i", ro])
    # 3. Give up root: nobody may not write a 0555 directory (the rest must be readable).
    os.chmod(ro, 0o555)
    for d in (tmp, os.path.dirname(tmp)):
        os.chmod(d, os.stat(d).st_mode | 0o755)
    os.chmod(data, 0o644)
    try:
        return "setpriv to nobody, chmod 0555", target, run(
            args, prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
    finally:
        os.chmod(ro, 0o755)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        def path(name):
            return os.path.join(tmp, name)

        def write(name, data, mode="w"):
            with open(path(name), mode) as f:
                f.write(data)
            return path(name)

        data = path("data.bin")
        with open(data, "wb") as f:
            f.write(struct.pack("<" + "H" * 4000, *[(i * 7) % 250 for i in range(4000)]))
        weights = path("init.safetensors")
        r = run(train_args(data, f"train.save_weights={weights}", steps=1))
        if r.returncode != 0:
            print(r.stdout, r.stderr)
            return 1
        original = open(weights, "rb").read()

        # 1. Outputs that cannot be written fail before step 1.
        notdir = write("notadir", "a file")
        target = os.path.join(notdir, "model.safetensors")
        r = run(train_args(data, f"train.save_weights={target}"))
        refused_before_work("save_weights under a regular file", r,
                            ["train.save_weights", target, f"'{notdir}' is not a directory"])
        how, target, r = read_only_directory_run(tmp, data)
        print(f"     (read-only directory made with: {how})")
        refused_before_work(f"save_weights in a read-only directory ({how})", r,
                            ["train.save_weights", target])
        check("read-only directory: nothing was written", not os.path.exists(target))
        r = run(train_args(data, f"train.save_weights={tmp}"))
        refused_before_work("save_weights is a directory", r, [tmp, "is a directory"])
        r = run(train_args(data, f"train.metrics_file={path('missing/m.jsonl')}"))
        refused_before_work("metrics_file in a missing directory", r,
                            ["train.metrics_file", path("missing"), "does not exist"])

        # 2. save_weights == init_weights, under every spelling.
        link = path("init_link.safetensors")
        os.symlink(weights, link)
        hard = path("init_hard.safetensors")
        os.link(weights, hard)
        spellings = {"same path": weights,
                     "another spelling": os.path.join(tmp, ".", "sub", "..", "init.safetensors"),
                     "a symbolic link": link, "a hard link": hard}
        os.makedirs(path("sub"))
        for label, save in spellings.items():
            r = run(train_args(data, f"train.init_weights={weights}", f"train.save_weights={save}"))
            refused_before_work(f"save_weights = init_weights ({label})", r,
                                ["train.save_weights", "train.init_weights",
                                 "train.overwrite_init_weights=true"])
        check("init weights untouched", open(weights, "rb").read() == original)
        r = run(train_args(data, f"train.init_weights={weights}", f"train.save_weights={weights}",
                           "train.overwrite_init_weights=true", steps=2))
        check("train.overwrite_init_weights=true replaces them", r.returncode == 0 and
              open(weights, "rb").read() != original, r.stderr)
        check("the hard link keeps the old weights", open(hard, "rb").read() == original)

        # 3. Links planted at the old predictable temporary names are not followed.
        victim = write("victim", "precious")
        save = path("planted.safetensors")
        prefix = path("corpus")
        tok_out = path("tok.json")
        plant = " && ".join(
            [f"ln -s '{victim}' '{save}.tmp.'$$"] +
            [f"ln -s '{victim}' '{save}.tmp.'$$.{n}" for n in range(8)] +
            [f"ln -s '{victim}' '{prefix}_{s}.{e}.tmp.'$$" for s in ("train", "val") for e in ("bin", "idx")] +
            [f"ln -s '{victim}' '{tok_out}.tmp.'$$"])
        text = write("corpus.txt", "".join(f"line {i} of the corpus\n\n" for i in range(200)))
        for label, args in [
                ("train", train_args(data, f"train.save_weights={save}", steps=2)),
                ("prepare", ["prepare", "--input", text, "--tokenizer", "byte", "--out", prefix,
                             "--val-fraction", "0.1"]),
                ("tokenizer train", ["tokenizer", "train", "--input", text, "--vocab-size", "300",
                                     "--out", tok_out])]:
            for f in os.listdir(tmp):
                if ".tmp." in f:
                    os.unlink(path(f))
            r = run(args, prefix=["sh", "-c", plant + ' && exec "$@"', "sh"])
            check(f"{label}: links at the old temporary names are not followed",
                  r.returncode == 0 and open(victim, "rb").read() == b"precious", r.stderr)
        check("train wrote real weights", os.path.getsize(save) > 1000 and not os.path.islink(save))
        check("prepare wrote real files", all(os.path.getsize(f"{prefix}_{s}.{e}") > 0 and
                                              not os.path.islink(f"{prefix}_{s}.{e}")
                                              for s in ("train", "val") for e in ("bin", "idx")))
        check("tokenizer train wrote a tokenizer", json.load(open(tok_out))["model"]["type"] == "BPE")

        # 4. A metrics file that is a symbolic link is refused, its target kept.
        mlink = path("metrics_link.jsonl")
        os.symlink(victim, mlink)
        r = run(train_args(data, f"train.metrics_file={mlink}"))
        refused_before_work("metrics_file is a symbolic link", r,
                            ["train.metrics_file", mlink, "symbolic link"])
        check("metrics link target untouched", open(victim, "rb").read() == b"precious")
        dangling = path("dangling.jsonl")
        os.symlink(path("nowhere.jsonl"), dangling)
        r = run(train_args(data, f"train.metrics_file={dangling}"))
        refused_before_work("metrics_file is a dangling symbolic link", r, [dangling, "dangling"])
        check("nothing created through the dangling link", not os.path.exists(path("nowhere.jsonl")))

        # 5. Devices and FIFOs stay what they are.
        r = run(train_args(data, "train.save_weights=/dev/null", "train.metrics_file=/dev/null", steps=2))
        check("save_weights=/dev/null works", r.returncode == 0, r.stderr)
        check("/dev/null is still a character device", stat.S_ISCHR(os.lstat("/dev/null").st_mode))
        fifo = path("metrics.fifo")
        os.mkfifo(fifo)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(open(fifo).read().splitlines()))
        reader.start()
        r = run(train_args(data, f"train.metrics_file={fifo}", steps=3))
        reader.join(timeout=60)
        check("metrics to a FIFO", r.returncode == 0 and len(lines) == 3 and
              json.loads(lines[-1])["step"] == 3, (r.stderr, lines))
        check("the FIFO is still a FIFO", stat.S_ISFIFO(os.lstat(fifo).st_mode))
        r = run(["tokenizer", "encode", "--tokenizer", "byte", "--text", "AB", "--out", "/dev/stdout"])
        check("tokenizer encode --out /dev/stdout", r.returncode == 0 and r.stdout == "65 66\n",
              (r.stdout, r.stderr))

        # 6. Outputs that would overwrite inputs.
        r = run(["eval", "--config", TINY, "--weights", weights, "--data", data, "--grads-out", weights])
        refused_before_work("eval --grads-out = --weights", r, ["--grads-out", "--weights", weights])
        before = open(text, "rb").read()
        corpus_bin = write("alias_train.bin", before, "wb")  # a corpus named as prepare's output
        r = run(["prepare", "--input", corpus_bin, "--tokenizer", "byte", "--out", path("alias")])
        refused_before_work("prepare --out over its --input", r, ["--out", "--input", corpus_bin])
        check("prepare's input is untouched", open(corpus_bin, "rb").read() == before)
        r = run(["tokenizer", "train", "--input", text, "--vocab-size", "300", "--out", text])
        refused_before_work("tokenizer train --out = --input", r, ["--out", "--input", text])
        check("the corpus is untouched", open(text, "rb").read() == before)

    return finish("file_safety_test")


if __name__ == "__main__":
    sys.exit(main())
