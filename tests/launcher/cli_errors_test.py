#!/usr/bin/env python3
"""Bad input to the lattice binary gets a clear error and a non-zero exit, never a crash.

Each case runs a real command and checks: exit status 1 or 2 (a signal would be negative),
a message on stderr naming the offending key / file / value, and no sanitizer or abort output.
"""
import os
import struct
import subprocess
import sys
import tempfile

LATTICE = os.environ.get("LATTICE_BIN", "build/lattice")
SRC = os.environ.get("LATTICE_SOURCE_DIR", ".")
TINY = os.path.join(SRC, "configs", "tiny-gpt2.yaml")

failures = []


def expect_error(label, args, fragments, code=None):
    r = subprocess.run([LATTICE] + args, capture_output=True, text=True, timeout=120)
    ok = r.returncode > 0 and (code is None or r.returncode == code)
    missing = [f for f in fragments if f not in r.stderr]
    crashed = any(s in r.stderr for s in ("AddressSanitizer", "runtime error", "Aborted", "terminate called"))
    status = "ok" if ok and not missing and not crashed else "FAIL"
    print(f"[{status}] {label}: exit {r.returncode}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    if status != "ok":
        failures.append(f"{label}: exit={r.returncode} missing={missing} stderr={r.stderr!r}")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        def path(name):
            return os.path.join(tmp, name)

        def write(name, data, mode="w"):
            with open(path(name), mode) as f:
                f.write(data)
            return path(name)

        # A valid small data file (nanoGPT raw uint16) and valid weights, to corrupt below.
        data = path("data.bin")
        with open(data, "wb") as f:
            f.write(struct.pack("<" + "H" * 2000, *[(i * 7) % 250 for i in range(2000)]))
        weights = path("w.safetensors")
        r = subprocess.run([LATTICE, "train", "--config", TINY, "--set", f"data.train={data}",
                            "--set", "train.steps=1", "--set", "train.warmup_steps=0",
                            "--set", f"train.save_weights={weights}"], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout, r.stderr)
            return 1

        # Config errors.
        expect_error("unknown key", ["train", "--config", TINY, "--set", "model.n_heads=4"],
                     ["model.n_heads"])
        bad = write("bad_key.yaml", "model:\n  arch: gpt2\n  d_modle: 64\n")
        expect_error("unknown key in file", ["train", "--config", bad], ["d_modle", bad])
        expect_error("ill-typed value", ["train", "--config", TINY, "--set", "model.n_layer=two"],
                     ["model.n_layer", "two"])
        expect_error("bad enum", ["train", "--config", TINY, "--set", "model.arch=gpt3"],
                     ["model.arch", "gpt3"])
        expect_error("inconsistent dims", ["train", "--config", TINY, "--set", "model.n_head=3"],
                     ["model.d_model=64", "model.n_head=3"])
        expect_error("override without =", ["train", "--config", TINY, "--set", "train.lr"],
                     ["train.lr"])
        expect_error("missing config", ["train", "--config", path("nope.yaml")], ["nope.yaml"])
        expect_error("malformed yaml", ["train", "--config", write("m.yaml", "model: [1, 2\n")],
                     ["m.yaml"])
        expect_error("unknown option", ["train", "--config", TINY, "--frobnicate"], ["frobnicate"])

        # Data errors.
        expect_error("missing data", ["train", "--config", TINY, "--set", f"data.train={path('none.bin')}"],
                     ["none.bin"])
        odd = write("odd.bin", b"\x01\x02\x03", "wb")
        expect_error("truncated data", ["train", "--config", TINY, "--set", f"data.train={odd}"],
                     ["odd.bin"])
        big = path("big.bin")
        with open(big, "wb") as f:
            f.write(struct.pack("<" + "H" * 1000, *[300 + i % 5 for i in range(1000)]))
        expect_error("token id >= vocab", ["eval", "--config", TINY, "--weights", weights, "--data", big],
                     ["big.bin", "300"])
        idx = write("mm.idx", b"MMIDIDX\x00\x00" + struct.pack("<Q", 1), "wb")
        write("mm.bin", b"", "wb")
        expect_error("truncated .idx", ["train", "--config", TINY, "--set", f"data.train={path('mm')}"],
                     ["mm.idx"])
        wrong = write("wrong.idx", b"NOTMAGIC\x00" + b"\x00" * 40, "wb")
        write("wrong.bin", b"", "wb")
        expect_error("wrong magic", ["train", "--config", TINY, "--set", f"data.train={path('wrong')}"],
                     ["wrong.idx"])

        # Weights errors.
        expect_error("missing weights", ["eval", "--config", TINY, "--weights", path("no.safetensors"),
                                         "--data", data], ["no.safetensors"])
        raw = open(weights, "rb").read()
        trunc = write("trunc.safetensors", raw[: len(raw) // 2], "wb")
        expect_error("truncated weights", ["eval", "--config", TINY, "--weights", trunc, "--data", data],
                     ["trunc.safetensors"])
        n = struct.unpack("<Q", raw[:8])[0]
        header = raw[8:8 + n].decode()
        liar_header = header.replace('"data_offsets":[0,', '"data_offsets":[0,9', 1)
        if liar_header == header:
            liar_header = header.replace('"data_offsets": [0,', '"data_offsets": [0, 9', 1)
        liar = write("liar.safetensors", struct.pack("<Q", len(liar_header)) + liar_header.encode() + raw[8 + n:], "wb")
        expect_error("header lies about sizes", ["eval", "--config", TINY, "--weights", liar, "--data", data],
                     ["liar.safetensors"])
        huge = write("huge.safetensors", struct.pack("<Q", 1 << 60) + b"{}", "wb")
        expect_error("absurd header length", ["eval", "--config", TINY, "--weights", huge, "--data", data],
                     ["huge.safetensors"])
        expect_error("weights of another shape", ["eval", "--config", TINY, "--set", "model.d_model=128",
                                                  "--weights", weights, "--data", data], ["w.safetensors"])
        expect_error("generate: bad top-p", ["generate", "--config", TINY, "--weights", weights,
                                             "--top-p", "0"], ["top_p"])
        expect_error("unknown command", ["frobnicate"], ["frobnicate"], code=2)

    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all bad-input cases gave a clear error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
