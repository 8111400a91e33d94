#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/<name>_fuzz.cc).

    make_seeds.py small OUT   the committed seeds, tests/fuzz/corpus/<name>/ (< 200 KB in all):
                              valid files of every format, every corruption the unit tests
                              name, and small versions of the crash inputs of GitHub issue 8
    make_seeds.py large OUT   the crash inputs at full size (100,000 levels of nesting), which
                              scripts/fuzz.sh generates into its build dir and runs as
                              regression inputs rather than committing them

Everything is built from the format descriptions (REFERENCE.md sections 2 and 3) and the
repository's own fixtures; nothing here depends on lattice.
"""
import json
import os
import struct
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


# ---- safetensors -----------------------------------------------------------------------------

def safetensors(header, buffer=b"", pad=True):
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + buffer


def safetensors_seeds(out, deep):
    t = "safetensors"
    entries = {
        "__metadata__": {"format": "pt", "arch": "gpt2", "vocab_size": "257"},
        "wte": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "ln.w": {"dtype": "BF16", "shape": [3], "data_offsets": [24, 30]},
        "ln.b": {"dtype": "F16", "shape": [3], "data_offsets": [30, 36]},
        "ids": {"dtype": "I32", "shape": [2], "data_offsets": [36, 44]},
        "u": {"dtype": "U16", "shape": [1], "data_offsets": [44, 46]},
        "w": {"dtype": "U32", "shape": [], "data_offsets": [46, 50]},
        "d": {"dtype": "F64", "shape": [1], "data_offsets": [50, 58]},
        "e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [58, 58]},
    }
    buf = struct.pack("<6f", 0.5, -1, 2, 3, 4, 1e30) + b"\x80\x3f\x00\x40\xc0\x7f" + \
        b"\x00\x3c\x00\x7c\x00\xfe" + struct.pack("<iiHId", 1, -2, 7, 9, 1.5)
    write(out, t, "valid", safetensors(entries, buf))
    one = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    h = json.dumps(one, separators=(",", ":")).encode()
    write(out, t, "nan_inf", safetensors(one, struct.pack("<2f", float("nan"), float("inf"))))
    write(out, t, "nul_then_junk", safetensors(h + b"\x00junk", b"\x01" * 8, pad=False))
    write(out, t, "nul_padding", safetensors(h + b"\x00\x00\x00", b"\x01" * 8, pad=False))
    write(out, t, "space_padding", safetensors(h + b"     ", b"\x01" * 8, pad=False))
    write(out, t, "duplicate_key", safetensors(h[:-1] + b',"a":' + h[5:], b"\x01" * 8, pad=False))
    write(out, t, "huge_header_length", struct.pack("<Q", 1 << 60) + b"{}")
    write(out, t, "header_past_end", struct.pack("<Q", 100) + b"{}")
    for name, e in {
        "overlap": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
        "hole": {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
        "size_mismatch": {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
        "offsets_past_end": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
        "overflowing_shape": {"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 0],
                                    "data_offsets": [0, 0]}},
        "overflowing_bytes": {"a": {"dtype": "F32", "shape": [4611686018427387904],
                                    "data_offsets": [0, 8]}},
        "metadata_not_strings": {"__metadata__": {"step": 12},
                                 "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
    }.items():
        write(out, t, name, safetensors(e, b"\x00" * 8))
    write(out, t, "not_object", safetensors(b"[1, 2]"))
    # Found by safetensors_fuzz: u32 values >= 2^31 read into i32.
    write(out, t, "u32_past_int32", safetensors({"u": {"dtype": "U32", "shape": [1], "data_offsets": [0, 4]}},
                                                struct.pack("<I", 2605780000)))
    nest = b"[" * deep + b"]" * deep
    write(out, t, "deep_header",
          safetensors(b'{"w":{"dtype":"F32","shape":' + nest + b',"data_offsets":[0,0]}}'))


# ---- Megatron, llm.c, nanoGPT ----------------------------------------------------------------

def megatron(docs, code=8, item=2, fmt="<H"):
    idx = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, code, len(docs), len(docs) + 1)
    idx += b"".join(struct.pack("<i", len(d)) for d in docs)
    ptr = 0
    for d in docs:
        idx += struct.pack("<q", ptr)
        ptr += len(d) * item
    idx += b"".join(struct.pack("<q", i) for i in range(len(docs) + 1))
    binary = b"".join(struct.pack(fmt, t) for d in docs for t in d)
    return idx, binary


def megatron_input(idx, binary):
    # The fuzz target's layout: u32 .idx length, the .idx, then the .bin.
    return struct.pack("<I", len(idx)) + idx + binary


def token_seeds(out):
    t = "megatron"
    docs = [[1, 2], [3, 4, 50256], [6]]
    idx, binary = megatron(docs)
    write(out, t, "valid_u16", megatron_input(idx, binary))
    write(out, t, "bin_longer_than_idx", megatron_input(idx, binary + b"\x00\x00\x00\x00"))
    i32_idx, i32_bin = megatron(docs, code=4, item=4, fmt="<i")
    write(out, t, "valid_i32", megatron_input(i32_idx, i32_bin))
    wrong = bytearray(i32_idx)
    wrong[17] = 8  # the .idx says uint16, the .bin holds int32
    write(out, t, "dtype_code_disagrees", megatron_input(bytes(wrong), i32_bin))
    empty_idx, _ = megatron([])
    write(out, t, "empty", megatron_input(empty_idx, b""))
    write(out, t, "truncated_idx", megatron_input(idx[:20], binary))
    write(out, t, "fixture_u8_modes", megatron_input(read("tests/data/formats/megatron_u8_modes.idx"),
                                                     read("tests/data/formats/megatron_u8_modes.bin")))

    t = "llmc"
    def shard(magic, version, ntok, tokens, fmt):
        header = struct.pack("<3i", magic, version, ntok) + b"\x00" * (1024 - 12)
        return header + b"".join(struct.pack(fmt, x) for x in tokens)
    tokens = [50256, 10, 11, 50256, 12, 13]
    write(out, t, "valid_v1", shard(20240520, 1, 6, tokens, "<H"))
    write(out, t, "valid_v7", shard(20240801, 7, 4, [128000, 70000, 128001, 5], "<I"))
    write(out, t, "fixture_v1", read("tests/data/formats/llmc_v1.bin"))
    write(out, t, "magic_one_bit_off", shard(20240520 ^ 0x10, 1, 6, tokens, "<H"))
    write(out, t, "magic_mistyped_date", shard(20240615, 1, 6, tokens, "<H"))
    write(out, t, "magic_zeroed", shard(0, 1, 6, tokens, "<H"))
    write(out, t, "wrong_version", shard(20240520, 7, 6, tokens, "<H"))
    write(out, t, "count_mismatch", shard(20240520, 1, 9, tokens, "<H"))
    write(out, t, "negative_count", shard(20240520, 1, -5, [], "<H"))
    write(out, t, "raw_gpt2_tokens", b"".join(struct.pack("<H", (i * 7919) % 50257) for i in range(600)))

    t = "nanogpt"
    # First byte: sequence length and end-of-text choice; then the file.
    write(out, t, "fixture", b"\x83" + read("tests/data/formats/nanogpt.bin"))
    write(out, t, "documents", b"\x84" + b"".join(
        struct.pack("<H", x) for x in [15496, 11, 50256, 464, 50256, 7, 8, 9, 50256, 1, 2]))
    write(out, t, "text", b"\x02" + b"first doc\nline\n\nsecond doc\n\n\nthird")
    write(out, t, "odd_size", b"\x01\x01\x02\x03")
    write(out, t, "ids_past_vocab", b"\x81" + b"\xff\xff" * 40)


# ---- tokenizer.json --------------------------------------------------------------------------

def tokenizer_seeds(out, deep):
    t = "tokenizer"
    base_text = read("tests/data/tokenizer/tiny_gpt2.json").decode()
    write(out, t, "tiny_gpt2", base_text)
    base = json.loads(base_text)
    llama = json.loads(base_text)
    llama["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex":
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?"
            "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}
    llama["model"]["merges"] = [m.split(" ") for m in llama["model"]["merges"]]
    llama["added_tokens"].append({"id": 601, "content": "<|eot_id|>", "single_word": True,
                                  "lstrip": True, "rstrip": True, "normalized": True,
                                  "special": False})
    write(out, t, "llama3_style", json.dumps(llama))
    # The corrupted variants start from a small tokenizer, so that the corpus stays small and
    # the fuzzer's mutations land on structure rather than on a long vocabulary.
    mini = dict(base)
    mini["model"] = dict(base["model"], vocab={"a": 1, "b": 2, "ab": 3, "\u0120": 4, "\u0120ab": 5},
                         merges=["a b", "\u0120 ab"])
    text = json.dumps(mini)
    write(out, t, "mini", text)
    write(out, t, "nul_then_junk", text + "\x00junk")
    # A repeated key: in the vocab, at the top level.
    write(out, t, "duplicate_vocab_key", text.replace('"vocab": {', '"vocab": {"!": 5, ', 1))
    write(out, t, "duplicate_top_key", text.replace('"padding": null', '"padding": null, "padding": null', 1))
    nest = "[" * deep + "]" * deep
    for where, old, new in [
            ("normalizer", '"normalizer": null', '"normalizer": ' + nest),
            ("vocab", '"vocab": {', '"vocab": {"deep": ' + nest + ', '),
            ("merges", '"merges": [', '"merges": [' + nest + ', ')]:
        write(out, t, "deep_" + where, text.replace(old, new, 1))


# ---- config YAML and --set overrides ---------------------------------------------------------

def config_seeds(out, deep):
    t = "config"
    tiny = read("configs/tiny-gpt2.yaml").decode()
    write(out, t, "tiny_gpt2", tiny)
    write(out, t, "tiny_llama", read("configs/tiny-llama.yaml"))
    write(out, t, "kjv_demo", read("configs/kjv-demo.yaml"))
    # The --set of GitHub issue 8 that overflowed NumElements, and other overrides.
    write(out, t, "d_model_overflow", tiny + "\n%%\nmodel.d_model=1099511627776\n")
    write(out, t, "overrides", tiny + "\n%%\nmodel.n_layer=4\ntrain.lr=3e-4\n"
          "data.blend=[[0.7, a.bin], [0.3, b.bin]]\nparallel.tp=2\n")
    write(out, t, "blend", "data:\n  blend:\n    - [0.7, a.bin]\n    - [0.3, b.bin]\n")
    write(out, t, "deep_flow", "model: " + "[" * deep + "]" * deep + "\n")
    # Indentation costs quadratic bytes: 40 levels pass the limit of 32, 1000 pass yaml-cpp's.
    block = 40 if deep < 1000 else 1000
    write(out, t, "deep_block", "".join("  " * i + "k%d:\n" % i for i in range(block)))
    write(out, t, "deep_override", "\n%%\nmodel.n_layer=" + "[" * deep + "\n")
    write(out, t, "aliases", "a: &a [1, 2]\nb: &b [*a, *a]\nc: [*b, *b]\n")
    # Found by config_fuzz: yaml-cpp 0.7's LoadAll never returns on a stray ','.
    write(out, t, "comma_hang", "- 1\n,")
    write(out, t, "quotes_hang", '"omd""""""",')
    write(out, t, "utf32_comma_hang", "\0\0\0,")
    write(out, t, "block_scalar", "model:\n  arch: |\n    gpt2\n      [[[\n")


# ---- DataLoaderState JSON and plain JSON -----------------------------------------------------

def json_seeds(out, deep):
    state = {"version": 1, "consumed_samples": 1234, "seed": 4, "seq_len": 10,
             "sources": [{"path": "a.bin", "num_tokens": 500, "weight": 0.7},
                         {"path": "b.bin", "num_tokens": 100, "weight": 0.3}]}
    s = json.dumps(state)
    t = "loader_state"
    write(out, t, "valid", s)
    write(out, t, "nul_then_junk", s + "\x00junk")
    write(out, t, "duplicate_key", s.replace('"seed": 4', '"seed": 4, "seed": 5', 1))
    write(out, t, "huge_numbers", s.replace("1234", "18446744073709551615").replace("500", "-1"))
    write(out, t, "deep", "[" * deep + "]" * deep)
    # Skipped sample ranges of loss-spike rollbacks: merged, and touching (refused).
    write(out, t, "skipped", json.dumps(dict(state, skipped=[[80, 104], [200, 208]])))
    write(out, t, "skipped_touching", json.dumps(dict(state, skipped=[[80, 104], [104, 108]])))
    t = "json"
    write(out, t, "mixed", '{"a": [1, -2, 3.5e10, "x\\u00e9\\ud83d\\ude00", true, false, null],'
          ' "b": {"c": {}}, "d": []}')
    write(out, t, "nul_then_junk", '{"a": 1}\x00junk')
    write(out, t, "duplicate_key", '{"a": {"b": 1, "b": 2}}')
    write(out, t, "deep_array", "[" * deep + "]" * deep)
    write(out, t, "deep_object", '{"k":' * deep + "1" + "}" * deep)


# ---- checkpoint index.json and shards ----------------------------------------------------------

def crc32c(data):
    # CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, initial and final ~0.
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def checkpoint(boxes, shapes, header_pad=True, meta=True):
    """An index and its one shard (docs/checkpoints.md, "The format"): `boxes` lists
    (key, offset, shape) in file order, `shapes` the global shape per key; element k of box j
    holds the float j + k / 64."""
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720's check value
    header = {}
    if meta:
        header["__metadata__"] = {"format": "pt", "lattice_checkpoint_format_version": "1",
                                  "rank": "0", "world": "1", "iteration": "4"}
    payload, at, names = b"", 0, []
    for j, (key, off, shp) in enumerate(boxes):
        n = 1
        for d in shp:
            n *= d
        data = struct.pack("<%df" % n, *[j + k / 64 for k in range(n)])
        name = key + "@" + ",".join(str(o) for o in off)
        header[name] = {"dtype": "F32", "shape": shp, "data_offsets": [at, at + len(data)]}
        names.append((name, at, data))
        payload += data
        at += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    if header_pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    shard = struct.pack("<Q", len(h)) + h + payload
    tensors = {k: {"dtype": "F32", "shape": v, "boxes": []} for k, v in shapes.items()}
    for (key, off, shp), (name, begin, data) in zip(boxes, names):
        if key not in tensors:
            continue  # in the shard only (a shard that holds more than its index says)
        tensors[key]["boxes"].append({
            "offset": off, "shape": shp, "file": 0, "name": name,
            "byte_offset": 8 + len(h) + begin, "nbytes": len(data),
            "crc32c": "%08x" % crc32c(data)})
    index = {
        "format": "lattice-checkpoint", "format_version": 1,
        "iteration": 4, "optimizer_step": 4, "skipped_iterations": 0, "nan_iterations": 0,
        "seed": 1234,
        "layout": {"world": 1, "tp": 1, "dp": 1, "pp": 1, "vpp": 1, "zero1": False,
                   "sequence_parallel": False, "schedule": "1f1b"},
        "data_state": {"version": 1, "consumed_samples": 32, "seed": 1234, "seq_len": 16,
                       "sources": [{"path": "data.bin", "num_tokens": 20000, "weight": 1.0}]},
        "config": "version: 1\nmodel:\n  arch: gpt2\n  n_layer: 1\n",
        "files": [{"name": "shard_00000_of_00001.safetensors", "bytes": len(shard), "rank": 0}],
        "tensors": tensors,
    }
    return index, shard


# Every kind of split lattice writes: a tensor in two row boxes, a 1-D tensor whole, columns
# split (tensor parallelism), and a ZeRO-1 chunk cutting a row (partial row, partial row, rows).
CKPT_SHAPES = {"model/w": [4, 3], "model/b": [5], "model/c": [2, 4],
               "optimizer/exp_avg/w": [4, 3]}
CKPT_BOXES = [("model/w", [0, 0], [1, 3]), ("model/w", [1, 0], [3, 3]),
              ("model/b", [0], [5]),
              ("model/c", [0, 0], [2, 2]), ("model/c", [0, 2], [2, 2]),
              ("optimizer/exp_avg/w", [0, 0], [1, 2]), ("optimizer/exp_avg/w", [0, 2], [1, 1]),
              ("optimizer/exp_avg/w", [1, 0], [3, 3])]


def checkpoint_seeds(out, deep):
    t = "checkpoint_index"

    def dump(index):
        # Compact, so that the corpus stays small and mutations land on structure.
        return json.dumps(index, separators=(",", ":")).encode()

    def both(index, shard):
        return dump(index) + b"\x00" + shard

    index, shard = checkpoint(CKPT_BOXES, CKPT_SHAPES)
    # The layout of CheckpointIndex::ToJson (nlohmann's dump(1)) once.
    write(out, t, "valid_as_written", json.dumps(index, indent=1).encode() + b"\x00" + shard)
    write(out, t, "valid", both(index, shard))
    write(out, t, "valid_index_only", dump(index))
    write(out, t, "valid_no_data_state", both(dict(index, data_state=None), shard))

    # The damaged indexes fail before any shard is read: without one, the corpus stays small.
    def variant(name, edit, with_shard=False):
        i = json.loads(json.dumps(index))
        edit(i)
        write(out, t, name, both(i, shard) if with_shard else dump(i))

    # Deep nesting: past the index's bound of 16, in the data state and in a box's offsets.
    nest = "[" * deep + "]" * deep
    text = dump(index).decode()
    write(out, t, "deep_data_state", text.replace('"data_state":{', '"data_state":{"x":' + nest + ',', 1))
    write(out, t, "deep_offset", text.replace('"offset":[', '"offset":[' + nest + ',', 1))
    write(out, t, "deep_array", nest)

    # Huge numbers.
    def huge_layout(i):
        i["layout"].update(world=1 << 24, tp=1 << 24, dp=1 << 24, pp=1 << 24)
    variant("huge_layout", huge_layout)
    variant("huge_counters", lambda i: i.update(iteration=18446744073709551615,
                                                optimizer_step=9223372036854775807,
                                                seed=18446744073709551615))
    variant("negative_counters", lambda i: i.update(iteration=-1, optimizer_step=-2))
    variant("float_counter", lambda i: i.update(iteration=4.0))

    def huge_shape(i):
        # 2^62 elements: 4 * 2^62 bytes wraps to 0 in 64 bits.
        i["tensors"]["model/b"] = {"dtype": "F32", "shape": [4611686018427387904], "boxes": [
            {"offset": [0], "shape": [4611686018427387904], "file": 0, "name": "model/b@0",
             "byte_offset": 0, "nbytes": 0, "crc32c": "00000000"}]}
    variant("huge_shape_wrapping_bytes", huge_shape)

    def covered_overflow(i):
        big = 4611686018427387904
        i["tensors"]["model/b"] = {"dtype": "F32", "shape": [big], "boxes": [
            {"offset": [0], "shape": [big], "file": 0, "name": "model/b@%d" % k,
             "byte_offset": 0, "nbytes": 0, "crc32c": "00000000"} for k in range(5)]}
    variant("covered_overflow", covered_overflow)

    def huge_offset(i):
        i["tensors"]["model/b"]["boxes"][0]["offset"] = [9223372036854775807]
        i["tensors"]["model/b"]["boxes"][0]["shape"] = [9223372036854775807]
    variant("huge_offset", huge_offset)

    def huge_byte_offset(i):
        b = i["tensors"]["model/b"]["boxes"][0]
        b["byte_offset"] = 18446744073709551615
        i["files"][0]["bytes"] = 18446744073709551615
    variant("huge_byte_offset", huge_byte_offset)
    variant("huge_dims", lambda i: i["tensors"]["model/c"].update(
        shape=[4294967296, 4294967296, 4294967296]))

    # Boxes that overlap or leave gaps.
    def overlap_2d(i):
        i["tensors"]["model/c"]["boxes"][1]["offset"] = [0, 1]  # columns 1:3 meet 0:2
    variant("overlap_columns", overlap_2d)

    def overlap_same_start(i):
        i["tensors"]["model/c"]["boxes"][1]["offset"] = [0, 0]
    variant("overlap_same_box", overlap_same_start)

    def overlap_rows(i):
        i["tensors"]["model/w"]["boxes"][1]["offset"] = [0, 0]  # rows 0:3 meet row 0:1
    variant("overlap_rows", overlap_rows)

    def overlap_1d(i):
        b = i["tensors"]["model/b"]["boxes"][0]
        i["tensors"]["model/b"]["boxes"] = [
            dict(b, offset=[0], shape=[3], nbytes=12, name="model/b@0"),
            dict(b, offset=[2], shape=[3], nbytes=12, name="model/b@2")]
    variant("overlap_1d", overlap_1d)

    def overlap_far(i):
        # Partial rows that only meet a box of another row band (not its sweep neighbour).
        bs = i["tensors"]["optimizer/exp_avg/w"]["boxes"]
        bs[2]["offset"] = [0, 0]
    variant("overlap_partial_rows", overlap_far)

    def gap(i):
        i["tensors"]["model/w"]["boxes"].pop()
    variant("gap", gap)
    variant("outside_shape", lambda i: i["tensors"]["model/w"]["boxes"][1].update(offset=[2, 0]))
    variant("empty_box", lambda i: i["tensors"]["model/b"]["boxes"][0].update(shape=[0]))
    variant("dims_mismatch", lambda i: i["tensors"]["model/b"]["boxes"][0].update(offset=[0, 0]))
    variant("wrong_nbytes", lambda i: i["tensors"]["model/b"]["boxes"][0].update(nbytes=16))
    variant("scalar_tensor", lambda i: i["tensors"]["model/b"].update(shape=[]))
    variant("zero_size_tensor", lambda i: i["tensors"].update(
        {"model/z": {"dtype": "F32", "shape": [0, 3], "boxes": []}}))
    variant("bf16_tensor", lambda i: i["tensors"]["model/b"].update(dtype="BF16"))

    # Files.
    variant("file_escapes", lambda i: i["files"][0].update(name="../shard_00000_of_00001.safetensors"))
    variant("file_absolute", lambda i: i["files"][0].update(name="/etc/passwd"))
    variant("file_dot", lambda i: i["files"][0].update(name="."))
    variant("file_is_index", lambda i: i["files"][0].update(name="index.json"))
    variant("file_twice", lambda i: i["files"].append(dict(i["files"][0])))
    variant("file_missing", lambda i: i["files"].append(
        {"name": "shard_00001_of_00002.safetensors", "bytes": 8, "rank": 0}))
    variant("file_index_out_of_range", lambda i: i["tensors"]["model/b"]["boxes"][0].update(file=3))
    variant("file_rank_outside_world", lambda i: i["files"][0].update(rank=1))
    variant("name_twice", lambda i: i["tensors"]["model/w"]["boxes"][1].update(name="model/w@0,0"))
    variant("crc_not_hex", lambda i: i["tensors"]["model/b"]["boxes"][0].update(crc32c="xyz01234"))

    # Not this format.
    variant("format_version_2", lambda i: i.update(format_version=2))
    variant("foreign_format", lambda i: i.update(format="torch-dcp"))
    variant("layout_product", lambda i: i["layout"].update(world=2))
    variant("steps_exceed_iteration", lambda i: i.update(optimizer_step=5))
    write(out, t, "truncated_index", dump(index)[: len(dump(index)) // 2])
    write(out, t, "duplicate_key", text.replace('"seed":1234,', '"seed":1234,"seed":1,', 1))
    write(out, t, "not_object", "[1, 2, 3]")

    # The shard does not match its index.
    flipped = bytearray(shard)
    flipped[-5] ^= 0x10
    write(out, t, "shard_flipped_byte", both(index, bytes(flipped)))
    write(out, t, "shard_truncated", both(index, shard[:-7]))
    _, fewer = checkpoint(CKPT_BOXES[:-1], CKPT_SHAPES)
    write(out, t, "shard_missing_tensor", both(index, fewer))
    _, more = checkpoint(CKPT_BOXES + [("model/x", [0], [2])], CKPT_SHAPES)
    write(out, t, "shard_extra_tensor", both(index, more))
    # An unpadded header (legal safetensors): the boxes are not 4-byte aligned in the file.
    write(out, t, "shard_unaligned", both(*checkpoint(CKPT_BOXES[:3], {
        "model/w": [4, 3], "model/b": [5]}, header_pad=False)))
    write(out, t, "shard_no_metadata", both(*checkpoint(CKPT_BOXES, CKPT_SHAPES, meta=False)))
    write(out, t, "shard_garbage", dump(index) + b"\x00" + b"\x07" * 64)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("small", "large"):
        print(__doc__)
        return 2
    out = sys.argv[2]
    if sys.argv[1] == "small":
        # Past every limit (JSON 64, safetensors 16, YAML 32, checkpoint index 16), yet small
        # enough to commit.
        deep = 300
        safetensors_seeds(out, deep)
        token_seeds(out)
        tokenizer_seeds(out, deep)
        config_seeds(out, deep)
        json_seeds(out, deep)
        checkpoint_seeds(out, deep)
    else:
        # The sizes that crashed before the fix (GitHub issue 8).
        deep = 100000
        safetensors_seeds(out, deep)
        tokenizer_seeds(out, deep)
        config_seeds(out, deep)
        json_seeds(out, deep)
        checkpoint_seeds(out, deep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
