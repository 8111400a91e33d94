#!/usr/bin/env python3
"""Tokenization throughput of `lattice prepare` vs the Hugging Face `tokenizers` library.

Side by side in one run on the same machine, alternating the two in every repeat (the order
flips each repeat so neither always runs on a cache the other warmed):

  (a) lattice:    build/lattice prepare --input data/kjv/kjv.txt --tokenizer data/kjv/tokenizer.json
                    --out TMPDIR/kjv --threads N --val-fraction 0.01
                  timed from Python around the subprocess (wall clock: process start, tokenizer
                  load, mmap + document split, encoding, writing + fsync of PREFIX_{train,val}
                  .bin/.idx). lattice's own figure (printed on stderr, from after the tokenizer
                  load to the end) is shown as well.
  (b) tokenizers: the same tokenizer.json, the same documents (the file split exactly as
                  launcher/prepare_command.cc splits text in its default --doc-split blank-line
                  mode), `Tokenizer.encode_batch(docs, add_special_tokens=False)` on N rayon
                  threads, then the ids with the EOT token after every document written to one
                  raw uint16 file (numpy tofile + fsync). The headline time is encode_batch + write,
                  as the comparison asks; reading/splitting and loading the tokenizer are timed
                  separately and an end-to-end figure is printed too.

MB/s = input bytes / 1e6 / seconds for both. Figures are medians over --repeats, after
--warmup untimed runs of each. A fresh `Tokenizer` is loaded every repeat, because the BPE word
cache inside a Tokenizer object would otherwise make later repeats faster than a real first pass
(lattice starts a fresh process every time).

Threads: RAYON_NUM_THREADS=N and TOKENIZERS_PARALLELISM=true are set in os.environ *before*
`tokenizers` is imported (rayon sizes its global pool from RAYON_NUM_THREADS when the pool is
first used); lattice gets --threads N. CPU seconds used (user+sys) are reported for both, so the
effective parallelism can be checked.

Correctness: after every repeat the ids lattice wrote (Megatron .bin, dtype from the .idx
header; documents split between PREFIX_train and PREFIX_val by lattice's rule, document i to
validation when (i*p) mod 1e6 < p, p = round(val_fraction*1e6)) are compared with the
tokenizers ids plus the appended EOT, including the per-document lengths from the .idx.

usage: .venv/bin/python tests/bench/prepare_vs_tokenizers.py [--repeats 5] [--threads 2]
exit status: 0 ok, 1 ids differ or a run failed, 2 missing input/binary.
"""
import argparse
import math
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# Megatron .idx header: magic, version u64, dtype code u8, sequence count u64, document count u64.
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_HEADER = struct.Struct("<9sQBQQ")
MEGATRON_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 8: "uint16"}
VAL_SCALE = 1000000
# The names lattice's BpeTokenizer tries, in order, for its end-of-text token.
EOT_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def split_blank_line_docs(data):
    """Documents of a text file as lattice prepare's default --doc-split blank-line cuts them.

    A line is the bytes up to and including '\\n' (the last one may lack it) with one trailing
    '\\n' and then one trailing '\\r' removed; it is blank when it holds only ' ', '\\t', '\\r'.
    A document is a maximal run of non-blank lines: the input bytes from the start of its first
    line to the end of its last line (inner line breaks kept, the last line's break dropped).
    Returns byte strings.
    """
    docs = []
    n = len(data)
    pos = 0
    begin = -1  # start of the open document, -1 when none
    end = 0     # end of its last non-blank line (without the break)
    while pos < n:
        nl = data.find(b"\n", pos)
        nxt = n if nl < 0 else nl + 1
        line_end = nxt
        if line_end > pos and data[line_end - 1] == 0x0A:
            line_end -= 1
        if line_end > pos and data[line_end - 1] == 0x0D:
            line_end -= 1
        blank = not data[pos:line_end].strip(b" \t\r")
        if not blank:
            if begin < 0:
                begin = pos
            end = line_end
        elif begin >= 0:
            docs.append(data[begin:end])
            begin = -1
        pos = nxt
    if begin >= 0:
        docs.append(data[begin:end])
    return docs


def read_megatron(prefix, np):
    """(tokens as int64 array, per-document lengths) of a Megatron PREFIX.bin/.idx."""
    with open(prefix + ".idx", "rb") as f:
        idx = f.read()
    magic, version, code, seqs, _docs = MEGATRON_HEADER.unpack_from(idx, 0)
    if magic != MEGATRON_MAGIC or version != 1:
        raise ValueError(f"{prefix}.idx: not a version-1 Megatron index")
    if code not in MEGATRON_DTYPES:
        raise ValueError(f"{prefix}.idx: unsupported dtype code {code}")
    sizes = np.frombuffer(idx, dtype="<i4", count=seqs, offset=MEGATRON_HEADER.size)
    tokens = np.fromfile(prefix + ".bin", dtype=np.dtype(MEGATRON_DTYPES[code]).newbyteorder("<"))
    return tokens.astype(np.int64), sizes.astype(np.int64), MEGATRON_DTYPES[code]


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


LATTICE_SELF_RE = re.compile(r"MB in ([0-9.]+) s = ([0-9.]+) MB/s on (\d+) threads")


def run_lattice(lattice, inp, tok_path, out_prefix, threads, val_fraction):
    cmd = [lattice, "prepare", "--input", inp, "--tokenizer", tok_path, "--out", out_prefix,
           "--threads", str(threads), "--val-fraction", repr(val_fraction)]
    c0 = children_cpu()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    cpu = children_cpu() - c0
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise RuntimeError(f"lattice prepare failed with exit status {p.returncode}: {' '.join(cmd)}")
    m = LATTICE_SELF_RE.search(p.stderr)
    own = float(m.group(1)) if m else float("nan")
    if m and int(m.group(3)) != threads:
        raise RuntimeError(f"lattice reports {m.group(3)} threads, asked for {threads}")
    return dict(wall=wall, own=own, cpu=cpu, cmd=cmd, stderr=p.stderr.strip())


def run_tokenizers(Tokenizer, np, inp, tok_path, out_path):
    """One full tokenizers pass; returns per-phase seconds and the per-document id lists."""
    t0 = time.perf_counter()
    with open(inp, "rb") as f:
        data = f.read()
    docs = [d.decode("utf-8") for d in split_blank_line_docs(data)]
    t1 = time.perf_counter()
    tok = Tokenizer.from_file(tok_path)
    eot = None
    for name in EOT_NAMES:
        eot = tok.token_to_id(name)
        if eot is not None:
            break
    if eot is None:
        raise RuntimeError(f"{tok_path}: no end-of-text token ({', '.join(EOT_NAMES)})")
    t2 = time.perf_counter()
    c2 = self_cpu()
    encs = tok.encode_batch(docs, add_special_tokens=False)
    t3 = time.perf_counter()
    if tok.get_vocab_size(with_added_tokens=True) > 0x10000:
        raise RuntimeError("ids do not fit uint16")
    eot_arr = np.array([eot], dtype=np.uint16)
    parts = []
    for e in encs:
        parts.append(np.array(e.ids, dtype=np.uint16))
        parts.append(eot_arr)
    arr = np.concatenate(parts) if parts else np.zeros(0, np.uint16)
    with open(out_path, "wb") as f:
        arr.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    t4 = time.perf_counter()
    cpu = self_cpu() - c2
    lengths = np.fromiter((len(e.ids) + 1 for e in encs), dtype=np.int64, count=len(encs))
    fast = float("nan")
    if hasattr(Tokenizer, "encode_batch_fast"):
        # Informational: the variant without offsets (tokenizers >= 0.20), fresh cache too.
        tok2 = Tokenizer.from_file(tok_path)
        t5 = time.perf_counter()
        encs2 = tok2.encode_batch_fast(docs, add_special_tokens=False)
        fast = time.perf_counter() - t5
        if [e.ids for e in encs2] != [e.ids for e in encs]:
            raise RuntimeError("encode_batch_fast ids differ from encode_batch")
    return dict(read_split=t1 - t0, load=t2 - t1, encode=t3 - t2, write=t4 - t3,
                enc_write=t4 - t2, e2e=t4 - t0, cpu=cpu, docs=len(docs), eot=eot,
                lengths=lengths, arr=arr, fast=fast)


def verify(np, out_prefix, val_fraction, tk):
    """Compares lattice's PREFIX_train/PREFIX_val with the tokenizers ids. Returns (ok, message)."""
    lengths = tk["lengths"]
    ids = tk["arr"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    ndocs = len(lengths)
    p = int(math.floor(val_fraction * VAL_SCALE + 0.5))
    is_val = np.zeros(ndocs, dtype=bool)
    if p > 0:
        is_val = (np.arange(ndocs, dtype=np.int64) * p) % VAL_SCALE < p
    parts = [("train", ~is_val)] + ([("val", is_val)] if p > 0 else [])
    msgs = []
    ok = True
    total = 0
    for name, mask in parts:
        sel = np.nonzero(mask)[0]
        exp_len = lengths[sel]
        exp = (np.concatenate([ids[starts[i]:starts[i + 1]] for i in sel]) if len(sel)
               else np.zeros(0, np.int64))
        got, got_len, dtype = read_megatron(f"{out_prefix}_{name}", np)
        total += len(got)
        if not np.array_equal(got_len, exp_len):
            ok = False
            msgs.append(f"{name}: {len(got_len)} documents / lengths differ from tokenizers' "
                        f"{len(exp_len)}")
        if not np.array_equal(got, exp):
            ok = False
            n = min(len(got), len(exp))
            diff = np.nonzero(got[:n] != exp[:n])[0]
            first = int(diff[0]) if len(diff) else n
            msgs.append(f"{name}: tokens differ (lattice {len(got)}, tokenizers {len(exp)}, "
                        f"first difference at token {first})")
        eots = got[np.cumsum(got_len) - 1] if len(got_len) else got[:0]
        if not np.all(eots == tk["eot"]):
            ok = False
            msgs.append(f"{name}: a document does not end in EOT {tk['eot']}")
        msgs.append(f"{name} {len(got_len)} docs {len(got)} tokens ({dtype})")
    if total != len(ids):
        ok = False
    return ok, "; ".join(msgs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each before timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input", default=os.path.join(REPO, "data/kjv/kjv.txt"))
    ap.add_argument("--tokenizer", default=os.path.join(REPO, "data/kjv/tokenizer.json"))
    ap.add_argument("--lattice", default=os.path.join(REPO, "build/lattice"))
    ap.add_argument("--val-fraction", type=float, default=0.01,
                    help="passed to lattice prepare (its default); only splits its output")
    args = ap.parse_args()
    if args.repeats < 1 or args.threads < 1 or args.warmup < 0:
        ap.error("--repeats and --threads must be >= 1, --warmup >= 0")

    if not os.path.isfile(args.input):
        print(f"{args.input} does not exist; create it with scripts/prepare-kjv.sh", file=sys.stderr)
        return 2
    for what, path in (("tokenizer", args.tokenizer), ("lattice binary", args.lattice)):
        if not os.path.isfile(path):
            print(f"{what} {path} does not exist", file=sys.stderr)
            return 2

    # Must happen before `tokenizers` is imported / first used: rayon reads it once.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    import numpy as np
    from tokenizers import Tokenizer
    import tokenizers

    size = os.path.getsize(args.input)
    mb = size / 1e6
    cpu = cpu_model()
    print(f"input {os.path.relpath(args.input, REPO)}: {mb:.2f} MB; tokenizer "
          f"{os.path.relpath(args.tokenizer, REPO)}; tokenizers {tokenizers.__version__}; "
          f"{args.threads} threads (lattice --threads {args.threads}; RAYON_NUM_THREADS="
          f"{args.threads}, TOKENIZERS_PARALLELISM=true); {os.cpu_count()} CPUs, {cpu}; "
          f"loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    tmp = tempfile.mkdtemp(prefix="prepare_vs_tokenizers.")
    out_prefix = os.path.join(tmp, "kjv")
    tk_out = os.path.join(tmp, "kjv_tokenizers.u16")
    rows = []
    all_ok = True
    verify_msg = ""
    try:
        def one(order_lattice_first):
            def do_lat():
                return run_lattice(args.lattice, args.input, args.tokenizer, out_prefix,
                                   args.threads, args.val_fraction)

            def do_tk():
                return run_tokenizers(Tokenizer, np, args.input, args.tokenizer, tk_out)

            if order_lattice_first:
                lat = do_lat()
                tk = do_tk()
            else:
                tk = do_tk()
                lat = do_lat()
            return lat, tk

        for w in range(args.warmup):
            one(w % 2 == 0)
        lat = None
        for r in range(args.repeats):
            lat, tk = one(r % 2 == 0)
            ok, verify_msg = verify(np, out_prefix, args.val_fraction, tk)
            all_ok &= ok
            rows.append((lat, tk))
            print(f"repeat {r + 1}/{args.repeats} ({'lattice first' if r % 2 == 0 else 'tokenizers first'}): "
                  f"lattice {lat['wall']:.3f} s wall ({mb / lat['wall']:.2f} MB/s, own {lat['own']:.3f} s, "
                  f"cpu {lat['cpu']:.2f} s) | tokenizers encode {tk['encode']:.3f} s + write "
                  f"{tk['write']:.3f} s = {tk['enc_write']:.3f} s ({mb / tk['enc_write']:.2f} MB/s, "
                  f"cpu {tk['cpu']:.2f} s; read+split {tk['read_split']:.3f} s, load {tk['load']:.3f} s) "
                  f"| ids {'match' if ok else 'DIFFER'}", flush=True)
        print(f"lattice command: {' '.join(os.path.relpath(a, REPO) if a.startswith(REPO) else a for a in lat['cmd'])}")
        print(f"lattice says: {lat['stderr'].splitlines()[0] if lat['stderr'] else ''}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = lambda xs: statistics.median(xs)  # noqa: E731
    lat_wall = med([l["wall"] for l, _ in rows])
    lat_own = med([l["own"] for l, _ in rows])
    lat_cpu = med([l["cpu"] for l, _ in rows])
    tk_ew = med([t["enc_write"] for _, t in rows])
    tk_enc = med([t["encode"] for _, t in rows])
    tk_e2e = med([t["e2e"] for _, t in rows])
    tk_cpu = med([t["cpu"] for _, t in rows])
    tk_fast = med([t["fast"] for _, t in rows])
    n = len(rows)
    print(f"medians of {n}: lattice wall {lat_wall:.3f} s = {mb / lat_wall:.2f} MB/s "
          f"(cpu {lat_cpu:.2f} s = {lat_cpu / lat_wall:.2f} cores; lattice's own timer {lat_own:.3f} s "
          f"= {mb / lat_own:.2f} MB/s) | tokenizers encode_batch+write {tk_ew:.3f} s = "
          f"{mb / tk_ew:.2f} MB/s (encode_batch alone {mb / tk_enc:.2f} MB/s; cpu {tk_cpu:.2f} s = "
          f"{tk_cpu / tk_ew:.2f} cores; end-to-end read+split+load+encode+write {tk_e2e:.3f} s = "
          f"{mb / tk_e2e:.2f} MB/s; info: encode_batch_fast alone {mb / tk_fast:.2f} MB/s)")
    print(f"ratio lattice/tokenizers (MB/s): headline {tk_ew / lat_wall:.2f} (lattice whole-process "
          f"wall vs tokenizers encode_batch+write); end-to-end {tk_e2e / lat_wall:.2f}; "
          f"lattice own timer vs encode_batch+write {tk_ew / lat_own:.2f}")
    print(f"token ids: {'IDENTICAL' if all_ok else 'DIFFERENT'} in all {n} repeats "
          f"({rows[-1][1]['docs']} documents, EOT {rows[-1][1]['eot']} after each; {verify_msg})")
    print(f"prepare: lattice {mb / lat_wall:.2f} MB/s, tokenizers {mb / tk_ew:.2f} MB/s, "
          f"ratio {tk_ew / lat_wall:.2f} (median of {n}, {args.threads} threads, {cpu})")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
