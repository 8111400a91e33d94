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
    t = "json"
    write(out, t, "mixed", '{"a": [1, -2, 3.5e10, "x\\u00e9\\ud83d\\ude00", true, false, null],'
          ' "b": {"c": {}}, "d": []}')
    write(out, t, "nul_then_junk", '{"a": 1}\x00junk')
    write(out, t, "duplicate_key", '{"a": {"b": 1, "b": 2}}')
    write(out, t, "deep_array", "[" * deep + "]" * deep)
    write(out, t, "deep_object", '{"k":' * deep + "1" + "}" * deep)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("small", "large"):
        print(__doc__)
        return 2
    out = sys.argv[2]
    if sys.argv[1] == "small":
        # Past every limit (JSON 64, safetensors 16, YAML 32), yet small enough to commit.
        deep = 300
        safetensors_seeds(out, deep)
        token_seeds(out)
        tokenizer_seeds(out, deep)
        config_seeds(out, deep)
        json_seeds(out, deep)
    else:
        # The sizes that crashed before the fix (GitHub issue 8).
        deep = 100000
        safetensors_seeds(out, deep)
        tokenizer_seeds(out, deep)
        config_seeds(out, deep)
        json_seeds(out, deep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
