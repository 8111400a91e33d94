#!/usr/bin/env python3
"""Writes the token-file fixtures in this folder from the format descriptions alone (REFERENCE.md
section 2), with struct/numpy and no lattice code, so the C++ readers are checked against files
they did not write. Run it only to regenerate; the outputs are committed. expected.json lists
what a reader must see in each file (tokens and document start offsets)."""
import json
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def megatron(prefix, code, np_dtype, sequences, document_indices, modes=None):
    """One .bin with the sequences back to back, and its .idx."""
    arr = np.concatenate([np.asarray(s, dtype=np_dtype) for s in sequences]) if sequences else \
        np.zeros(0, dtype=np_dtype)
    write(prefix + ".bin", arr.astype(np.dtype(np_dtype).newbyteorder("<")).tobytes())
    item = np.dtype(np_dtype).itemsize
    lengths = [len(s) for s in sequences]
    pointers = np.concatenate([[0], np.cumsum(lengths)[:-1]]) * item if lengths else []
    idx = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, code, len(sequences), len(document_indices))
    idx += struct.pack("<%di" % len(lengths), *lengths)
    idx += struct.pack("<%dq" % len(lengths), *[int(p) for p in pointers])
    idx += struct.pack("<%dq" % len(document_indices), *document_indices)
    if modes is not None:
        idx += struct.pack("<%db" % len(modes), *modes)
    write(prefix + ".idx", idx)
    starts, flat = [], []
    offsets = np.concatenate([[0], np.cumsum(lengths)]) if lengths else [0]
    for d in document_indices:
        starts.append(int(offsets[d]))
    for s in sequences:
        flat.extend(int(t) for t in s)
    return {"tokens": flat, "document_starts": starts}


def llmc(name, magic, version, np_dtype, tokens):
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = magic, version, len(tokens)
    write(name, header.tobytes() + np.asarray(tokens, dtype=np_dtype).astype(
        np.dtype(np_dtype).newbyteorder("<")).tobytes())


def eot_starts(tokens, eot):
    starts = [0]
    for i, t in enumerate(tokens[:-1]):
        if t == eot:
            starts.append(i + 1)
    if tokens:
        starts.append(len(tokens))
    return starts


def main():
    expected = {}
    # Megatron int32, documents made of several sequences (lattice's writer never makes these).
    e = megatron("megatron_i32", 4, np.int32,
                 [[70001, 5, 6], [7, 70002], [100000, 1, 2, 3], [9]], [0, 2, 3, 4])
    expected["megatron_i32"] = dict(e, format="megatron", dtype="int32", eot=50256)
    # Megatron uint8 with the multimodal per-sequence modes appended (ignored by readers).
    e = megatron("megatron_u8_modes", 1, np.uint8, [[1, 2], [255], [0, 0, 7]], [0, 1, 2, 3],
                 modes=[0, 1, 0])
    expected["megatron_u8_modes"] = dict(e, format="megatron", dtype="uint8", eot=50256)
    # llm.c GPT-2 shard: EOT before each document, as llm.c's fineweb.py writes it.
    toks = [50256, 464, 3290, 13, 50256, 40, 716, 50256, 1, 2]
    llmc("llmc_v1.bin", 20240520, 1, np.uint16, toks)
    expected["llmc_v1.bin"] = {"format": "llm.c", "dtype": "uint16", "eot": 50256, "tokens": toks,
                               "document_starts": eot_starts(toks, 50256)}
    # llm.c Llama-3 shard: uint32 ids above 65535, EOT 128001.
    toks = [128000, 9906, 1917, 128001, 128000, 100000, 128001]
    llmc("llmc_v7.bin", 20240801, 7, np.uint32, toks)
    expected["llmc_v7.bin"] = {"format": "llm.c", "dtype": "uint32", "eot": 128001,
                               "tokens": toks, "document_starts": eot_starts(toks, 128001)}
    # nanoGPT: raw uint16, EOT after each document.
    toks = [15496, 995, 50256, 40, 50256, 65535, 0, 50256]
    write("nanogpt.bin", np.asarray(toks, dtype="<u2").tobytes())
    expected["nanogpt.bin"] = {"format": "nanogpt", "dtype": "uint16", "eot": 50256,
                               "tokens": toks, "document_starts": eot_starts(toks, 50256)}
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=None, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
