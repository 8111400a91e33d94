#!/usr/bin/env python3
"""`lattice prepare` end to end, checked by a reader written here from the Megatron format
description alone (REFERENCE.md section 2), with struct and numpy:

  .idx = b"MMIDIDX\\0\\0", u64 version 1, u8 dtype code, u64 sequence_count, u64 document_count,
         i32 sizes[sequence_count], i64 pointers[sequence_count] (byte offsets into .bin),
         i64 document_indices[document_count] (0, then one entry per document end)
  .bin = the tokens, back to back.

For text and JSONL inputs it checks every .idx field, the .bin size, that the tokens are the
expected encoding (byte tokenizer: UTF-8 bytes, EOT 256 after each document; a BPE
tokenizer.json: what Hugging Face `tokenizers` produces), the train/val assignment rule
(document i is validation iff (i * p) mod 1e6 < p, p = round(fraction * 1e6)), that the output
does not depend on --threads, and that bad inputs fail with a message naming file and line.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

LATTICE = os.environ.get("LATTICE_BIN", "build/lattice")
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
CHECKS = {}  # what was checked -> how many times



# What a sanitizer build or a crash leaves on stderr: an expected failure must be a clean one.
CRASH_MARKS = ("Sanitizer", "runtime error:", "Segmentation fault", "terminate called")


def clean(output):
    return not any(m in output for m in CRASH_MARKS)

def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)
    CHECKS[what] = CHECKS.get(what, 0) + 1


def read_megatron(prefix):
    """Returns (dtype code, list of documents as token lists) after checking every field."""
    with open(prefix + ".idx", "rb") as f:
        idx = f.read()
    check(idx[:9] == b"MMIDIDX\x00\x00", f"{prefix}.idx magic")
    version, code, nseq, ndoc = struct.unpack_from("<QBQQ", idx, 9)
    check(version == 1, f"{prefix}.idx version 1")
    check(code in DTYPES, f"{prefix}.idx dtype code {code} is an integer dtype")
    off = 9 + 8 + 1 + 8 + 8
    check(len(idx) == off + 4 * nseq + 8 * nseq + 8 * ndoc,
          f"{prefix}.idx size matches its counts ({nseq} sequences, {ndoc} document indices)")
    sizes = struct.unpack_from("<%di" % nseq, idx, off)
    pointers = struct.unpack_from("<%dq" % nseq, idx, off + 4 * nseq)
    doc_idx = struct.unpack_from("<%dq" % ndoc, idx, off + 12 * nseq)
    item = np.dtype(DTYPES[code]).itemsize
    expect_ptr = 0
    for s, p in zip(sizes, pointers):
        check(p == expect_ptr, f"{prefix}.idx pointers are cumulative byte offsets")
        expect_ptr += s * item
    check(list(doc_idx) == list(range(nseq + 1)),
          f"{prefix}.idx document_indices = [0, 1, ..., {nseq}] (one sequence per document)")
    bin_bytes = open(prefix + ".bin", "rb").read()
    check(len(bin_bytes) == expect_ptr, f"{prefix}.bin holds exactly the indexed tokens")
    tokens = np.frombuffer(bin_bytes, dtype=np.dtype(DTYPES[code]).newbyteorder("<"))
    docs = []
    for s, p in zip(sizes, pointers):
        docs.append([int(t) for t in tokens[p // item: p // item + s]])
    return code, docs


def run(args, expect_ok=True):
    r = subprocess.run([LATTICE, "prepare"] + args, capture_output=True, text=True)
    if expect_ok:
        check(r.returncode == 0, f"prepare {' '.join(args)} succeeds: {r.stderr}")
    return r


def blank(line):
    return all(c in " \t\r" for c in line)


def split_blank_line(text):
    """The documented blank-line rule: maximal runs of non-blank lines, joined by their original
    line breaks, without the break after the last line."""
    docs, cur = [], []
    lines = text.split("\n")
    # Re-attach the breaks: every line but the last had a "\n" after it.
    for i, line in enumerate(lines):
        if blank(line):
            if cur:
                docs.append(cur)
                cur = []
        else:
            cur.append((line, i < len(lines) - 1))
    if cur:
        docs.append(cur)
    out = []
    for run_lines in docs:
        s = "\n".join(l for l, _ in run_lines)
        if s.endswith("\r"):
            s = s[:-1]
        out.append(s)
    return out


def val_flags(n, fraction):
    p = int(np.floor(fraction * 1e6 + 0.5))
    return [p > 0 and (i * p) % 1000000 < p for i in range(n)]


def expect_split(prefix, encoded_docs, fraction, label):
    flags = val_flags(len(encoded_docs), fraction)
    want_train = [d for d, v in zip(encoded_docs, flags) if not v]
    want_val = [d for d, v in zip(encoded_docs, flags) if v]
    code, train = read_megatron(prefix + "_train")
    check(train == want_train, f"{label}: train documents are the expected encodings "
                               f"({len(want_train)} documents)")
    if fraction > 0:
        _, val = read_megatron(prefix + "_val")
        check(val == want_val, f"{label}: val documents are every document i with "
                               f"(i*p) mod 1e6 < p ({len(want_val)} documents)")
    else:
        check(not os.path.exists(prefix + "_val.idx"), f"{label}: no val files for fraction 0")
    return code


def byte_encode(s):
    return list(s.encode("utf-8")) + [256]


def main():
    tmp = tempfile.mkdtemp(prefix="lattice_prepare_test_")
    p = lambda name: os.path.join(tmp, name)

    # --- Text, blank-line documents, byte tokenizer -------------------------------------------
    text = ("First paragraph, line one.\nLine two of the first.\n\n\n"
            "  \t \nSecond: caf\u00e9 \u2014 \u65e5\u672c\r\nwith CRLF\r\n\r\n"
            "Third\n \nFourth without a final newline")
    with open(p("a.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(text)
    docs = split_blank_line(text)
    check(len(docs) == 4, "the test text holds four blank-line documents")
    run(["--input", p("a.txt"), "--tokenizer", "byte", "--out", p("a"), "--val-fraction", "0.5"])
    code = expect_split(p("a"), [byte_encode(d) for d in docs], 0.5, "text/blank-line")
    check(code == 8, "vocab 257 is stored as uint16 (code 8)")

    # --- --doc-split line and file, --append-eot false ----------------------------------------
    run(["--input", p("a.txt"), "--tokenizer", "byte", "--out", p("l"), "--doc-split", "line",
         "--val-fraction", "0"])
    lines = [l[:-1] if l.endswith("\r") else l for l in text.split("\n") if not blank(l)]
    expect_split(p("l"), [byte_encode(l) for l in lines], 0, "text/line")
    run(["--input", p("a.txt"), "--input", p("a.txt"), "--tokenizer", "byte", "--out", p("f"),
         "--doc-split", "file", "--append-eot", "false", "--val-fraction", "0"])
    expect_split(p("f"), [list(text.encode("utf-8"))] * 2, 0, "text/file without EOT")

    # --- JSONL ---------------------------------------------------------------------------------
    records = [{"text": "alpha \u00fcber", "id": 1}, {"text": "", "id": 2},
               {"text": "line\nbreaks\tand \"quotes\"", "meta": {"x": [1, 2]}},
               {"text": "\U0001F600 emoji"}, {"text": "last"}]
    with open(p("b.jsonl"), "w", encoding="utf-8") as f:
        for i, r in enumerate(records):
            f.write(json.dumps(r, ensure_ascii=(i % 2 == 0)) + "\n")
            if i == 1:
                f.write("   \n")  # whitespace-only lines are skipped
    run(["--input", p("b.jsonl"), "--tokenizer", "byte", "--out", p("b"), "--val-fraction", "0.34"])
    expect_split(p("b"), [byte_encode(r["text"]) for r in records], 0.34, "jsonl")
    # --json-key, --jsonl on another extension, several inputs numbered across files.
    with open(p("c.data"), "w") as f:
        for r in records:
            f.write(json.dumps({"body": r["text"]}) + "\n")
    # --jsonl applies to every input, so plain text fails on its first line.
    r = run(["--input", p("c.data"), "--input", p("a.txt"), "--jsonl", "--json-key", "body",
             "--tokenizer", "byte", "--out", p("c"), "--val-fraction", "0.25"], expect_ok=False)
    check(r.returncode != 0 and "a.txt:1: invalid JSON" in r.stderr and clean(r.stderr),
          f"--jsonl on a text file fails at its line 1: {r.stderr.strip()}")
    r = run(["--input", p("c.data"), "--jsonl", "--json-key", "body", "--tokenizer", "byte",
             "--out", p("c"), "--val-fraction", "0.25"])
    expect_split(p("c"), [byte_encode(r["text"]) for r in records], 0.25, "jsonl --json-key")
    run(["--input", p("a.txt"), "--input", p("b.jsonl"), "--tokenizer", "byte", "--out", p("m"),
         "--val-fraction", "0.2"])
    expect_split(p("m"), [byte_encode(d) for d in docs] + [byte_encode(r["text"]) for r in records],
                 0.2, "text + jsonl inputs, numbered across files")

    # --- Many chunks: order preserved, output independent of --threads ------------------------
    rng = np.random.default_rng(5)
    words = ["lorem", "ipsum", "dolores", "sitting", "ametist", "\u00e9t\u00e9", "na\u00efve", "x"]
    big_docs = []
    for i in range(6000):  # about 5 MB
        n = int(rng.integers(1, 300))
        big_docs.append(" ".join(words[int(k)] for k in rng.integers(0, len(words), n)) + f" #{i}")
    with open(p("big.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(big_docs) + "\n")
    check(os.path.getsize(p("big.txt")) > 4 * (1 << 20), "the big input spans several 1 MiB chunks")
    outs = []
    for threads in ("1", "4"):
        r = run(["--input", p("big.txt"), "--tokenizer", "byte", "--out", p("big" + threads),
                 "--threads", threads])
        check("MB/s" in r.stderr and "6000 documents" in r.stderr,
              f"summary line reports documents and MB/s: {r.stderr.strip()}")
        outs.append([open(p("big" + threads) + s, "rb").read()
                     for s in ("_train.bin", "_train.idx", "_val.bin", "_val.idx")])
    check(outs[0] == outs[1], "--threads 1 and --threads 4 write identical files")
    expect_split(p("big1"), [byte_encode(d) for d in big_docs], 0.01, "6000 documents")
    _, val = read_megatron(p("big1") + "_val")
    check(len(val) == 60, "0.01 of 6000 documents is 60 validation documents (0, 100, ...)")

    # --- A BPE tokenizer.json, against Hugging Face tokenizers --------------------------------
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(big_docs[:2000], trainer=trainer)
    tok.save(p("tok.json"))
    eot = tok.token_to_id("<|endoftext|>")
    run(["--input", p("a.txt"), "--input", p("b.jsonl"), "--tokenizer", p("tok.json"),
         "--out", p("bpe"), "--val-fraction", "0.2"])
    want = [tok.encode(d).ids + [eot] for d in docs + [r["text"] for r in records]]
    expect_split(p("bpe"), want, 0.2, "BPE tokenizer.json (ids from HF tokenizers)")

    # --- Errors --------------------------------------------------------------------------------
    with open(p("bad.jsonl"), "w") as f:
        f.write('{"text": "fine"}\n\n{"text": "broken\n{"text": "x"}\n')
    with open(p("nokey.jsonl"), "w") as f:
        f.write('{"text": "fine"}\n{"content": "x"}\n')
    cases = [
        (["--input", p("missing.txt")], ["missing.txt", "no such file"]),
        (["--input", p("bad.jsonl")], ["bad.jsonl:3", "invalid JSON"]),
        (["--input", p("nokey.jsonl")], ["nokey.jsonl:2", 'no key "text"', '"content"']),
        (["--input", p("a.txt"), "--val-fraction", "1.5"], ["--val-fraction"]),
        (["--input", p("a.txt"), "--doc-split", "chapters"], ["--doc-split"]),
    ]
    for args, fragments in cases:
        r = run(args + ["--tokenizer", "byte", "--out", p("err")], expect_ok=False)
        check(r.returncode != 0 and all(fr in r.stderr for fr in fragments) and clean(r.stderr),
              f"error for {args[-1]} names {fragments}: {r.stderr.strip()}")
    check(not os.path.exists(p("err_train.idx")), "a failed prepare leaves no .idx behind")

    for c, n in CHECKS.items():
        print("ok:", c if n == 1 else f"{c} (x{n})")
    print(f"prepare_format_test: {sum(CHECKS.values())} checks passed")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
