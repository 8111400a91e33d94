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
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pylib"))
from lattice_testing import CRASH_MARKS, LATTICE, SRC, TINY, failures, finish  # noqa: E402



def expect_error(label, args, fragments, code=None):
    r = subprocess.run([LATTICE] + args, capture_output=True, text=True, timeout=120)
    ok = r.returncode > 0 and (code is None or r.returncode == code)
    missing = [f for f in fragments if f not in r.stderr]
    crashed = any(s in r.stderr for s in CRASH_MARKS + ("Aborted",))
    status = "ok" if ok and not missing and not crashed else "FAIL"
    print(f"[{status}] {label}: exit {r.returncode}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    if status != "ok":
        failures.append(f"{label}: exit={r.returncode} missing={missing} stderr={r.stderr!r}")


def check_fast(label, seconds, limit):
    ok = seconds <= limit
    print(f"[{'ok' if ok else 'FAIL'}] {label}: {seconds:.1f} s (limit {limit} s)")
    if not ok:
        failures.append(f"{label}: took {seconds:.1f} s")


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
        # Sizes whose products overflow are refused by the config check; sizes that are merely
        # too large for this machine by the memory plan, in GiB, before anything is allocated.
        expect_error("d_model 2^40 (NumElements overflow)",
                     ["train", "--config", TINY, "--set", "model.d_model=1099511627776",
                      "--set", "model.n_head=1"], ["parameters", "model.d_model=1099511627776"])
        expect_error("n_layer 2^40", ["train", "--config", TINY, "--set", "model.n_layer=1099511627776"],
                     ["model.n_layer=1099511627776"])
        r_start = time.monotonic()
        expect_error("n_layer 100000 (does not fit)",
                     ["train", "--config", TINY, "--set", "model.n_layer=100000",
                      "--set", f"data.train={data}"],
                     ["GiB per rank", "available"])
        check_fast("n_layer 100000 refused before allocating", time.monotonic() - r_start, 30)
        expect_error("eval of a model that does not fit",
                     ["eval", "--config", TINY, "--set", "model.n_layer=300000", "--weights",
                      weights, "--data", data], ["GiB", "available"])
        expect_error("missing data.tokenizer", ["train", "--config", TINY, "--set",
                                                f"data.tokenizer={path('no-tokenizer.json')}",
                                                "--set", f"data.train={data}"],
                     ["data.tokenizer", "no-tokenizer.json"])

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
        write("mm.idx", b"MMIDIDX\x00\x00" + struct.pack("<Q", 1), "wb")
        write("mm.bin", b"", "wb")
        expect_error("truncated .idx", ["train", "--config", TINY, "--set", f"data.train={path('mm')}"],
                     ["mm.idx"])
        write("wrong.idx", b"NOTMAGIC\x00" + b"\x00" * 40, "wb")
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

        # Parser hardening (GitHub issue 8): crash inputs and inputs once accepted silently.
        def st_with_header(new_header, buffer):
            return struct.pack("<Q", len(new_header)) + new_header + buffer
        nul = write("nul.safetensors", st_with_header(header.encode() + b"\x00junk", raw[8 + n:]), "wb")
        expect_error("safetensors header + NUL + junk", ["eval", "--config", TINY, "--weights", nul,
                                                         "--data", data], ["nul.safetensors", "NUL byte"])
        deep_st = write("deep.safetensors", st_with_header(
            b'{"w":{"dtype":"F32","shape":' + b"[" * 100000 + b"]" * 100000 + b',"data_offsets":[0,0]}}', b""), "wb")
        expect_error("safetensors header nested 100000 deep", ["eval", "--config", TINY, "--weights", deep_st,
                                                               "--data", data],
                     ["deep.safetensors", "nested deeper than 16 levels"])
        import json as _json
        entries = _json.loads(header)
        name, first = next((k, v) for k, v in entries.items() if k != "__metadata__" and v["dtype"] == "F32")
        poisoned = bytearray(raw)
        at = 8 + n + first["data_offsets"][0] + 4 * 3
        poisoned[at:at + 4] = struct.pack("<f", float("nan"))
        nan_w = write("nan.safetensors", bytes(poisoned), "wb")
        expect_error("NaN in weights", ["eval", "--config", TINY, "--weights", nan_w, "--data", data],
                     ["nan.safetensors", f"tensor '{name}' holds NaN at element 3"])
        expect_error("weights of another architecture", ["eval", "--config", os.path.join(SRC, "configs", "tiny-llama.yaml"),
                                                         "--weights", weights, "--data", data],
                     ["w.safetensors", "arch = gpt2", "model.arch is llama"])
        deep_tok = write("deep_tok.json", '{"normalizer": ' + "[" * 100000 + "]" * 100000 + "}")
        expect_error("tokenizer.json nested 100000 deep", ["tokenizer", "encode", "--tokenizer", deep_tok,
                                                           "--text", "hi"],
                     ["deep_tok.json", "nested deeper than 64 levels at normalizer"])
        dup_tok = write("dup_tok.json", '{"model": {"vocab": {"a": 0, "a": 1}}}')
        expect_error("tokenizer.json duplicate key", ["tokenizer", "encode", "--tokenizer", dup_tok,
                                                      "--text", "hi"],
                     ["dup_tok.json", 'duplicate key "a" in model.vocab'])
        long_idx = path("long")
        with open(long_idx + ".idx", "wb") as f:
            f.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, 1, 2) + struct.pack("<iqqq", 1000, 0, 0, 1))
        with open(long_idx + ".bin", "wb") as f:
            f.write(struct.pack("<" + "H" * 1004, *range(1004)))
        expect_error("Megatron .bin longer than its .idx", ["train", "--config", TINY, "--set",
                                                            f"data.train={long_idx}"],
                     ["long.bin", "8 bytes at the end belong to no sequence"])
        shard = write("shard.bin", struct.pack("<3i", 20240520 ^ 0x10, 1, 1000) + b"\x00" * 1012
                      + struct.pack("<" + "H" * 1000, *[i % 250 for i in range(1000)]), "wb")
        expect_error("llm.c shard with a damaged magic", ["train", "--config", TINY, "--set",
                                                          f"data.train={shard}"],
                     ["shard.bin", "not read as raw nanoGPT tokens", "1 bit off 20240520"])
        deep_yaml = write("deep.yaml", "model: " + "[" * 100000 + "]" * 100000 + "\n")
        expect_error("YAML nested 100000 deep", ["train", "--config", deep_yaml],
                     ["deep.yaml", "nested deeper than 32 levels"])
        comma = write("comma.yaml", "- 1\n,")
        expect_error("YAML on which yaml-cpp never returned", ["train", "--config", comma],
                     ["comma.yaml", "YAML value starting with ','"])
        expect_error("weights of another shape", ["eval", "--config", TINY, "--set", "model.d_model=128",
                                                  "--weights", weights, "--data", data], ["w.safetensors"])
        expect_error("generate: bad top-p", ["generate", "--config", TINY, "--weights", weights,
                                             "--top-p", "0"], ["--top-p=0"])

        # Numeric options out of range: the message names the option and the value.
        gen = ["generate", "--config", TINY, "--weights", weights]
        for opt, value in [("--temperature", "-1"), ("--temperature", "nan"), ("--top-k", "-1"),
                           ("--top-p", "1.5"), ("--max-new-tokens", "-1"), ("--seed", "-1")]:
            expect_error(f"generate {opt} {value}", gen + [opt, value], [f"{opt}={value}"])
        expect_error("generate --stop ''", gen + ["--stop", ""], ["--stop"])
        expect_error("generate --top-k not a number", gen + ["--top-k", "many"], ["top-k", "many"])
        expect_error("eval --max-samples -1", ["eval", "--config", TINY, "--weights", weights,
                                               "--data", data, "--max-samples", "-1"],
                     ["--max-samples=-1"])
        text = write("corpus.txt", "a b c\n\nd e f\n")
        prep = ["prepare", "--input", text, "--tokenizer", "byte", "--out", path("prep")]
        for opt, value in [("--threads", "-1"), ("--threads", "100000"), ("--val-fraction", "1.5"),
                           ("--val-fraction", "nan")]:
            expect_error(f"prepare {opt} {value}", prep + [opt, value], [opt, value])
        expect_error("tokenizer encode --threads -2", ["tokenizer", "encode", "--tokenizer", "byte",
                                                       "--text", "x", "--lines", "--threads", "-2"],
                     ["--threads=-2"])
        tok_train = ["tokenizer", "train", "--input", text, "--out", path("tok.json")]
        expect_error("tokenizer train --vocab-size 10", tok_train + ["--vocab-size", "10"],
                     ["--vocab-size=10"])
        expect_error("tokenizer train --min-frequency 0",
                     tok_train + ["--vocab-size", "300", "--min-frequency", "0"],
                     ["--min-frequency=0"])
        expect_error("tokenizer train --threads -3",
                     tok_train + ["--vocab-size", "300", "--threads", "-3"], ["--threads=-3"])
        expect_error("bench --repeats 0", ["bench", "train-step", "--config", TINY, "--repeats", "0"],
                     ["--repeats=0"])
        expect_error("bench --warmup -1", ["bench", "train-step", "--config", TINY, "--warmup", "-1"],
                     ["--warmup=-1"])
        expect_error("unknown command", ["frobnicate"], ["frobnicate"], code=2)

    return finish("cli_errors_test")


if __name__ == "__main__":
    sys.exit(main())
