#!/usr/bin/env python3
"""`lattice generate` emits only ids its tokenizer decodes, streams, and says why it stopped.

1. A tiny GPT-2 with model.vocab_size=317 (320 padded rows) under the 257-token byte
   tokenizer, whose weights make id 301 the argmax at every position (Favour below): greedy,
   temperature, top-k and top-p generation all succeed, and the text is valid UTF-8 that
   starts with the prompt (generation used to end with "Decode: id 301 ... is not in the byte
   vocabulary" and print nothing).
2. Stop reasons on stderr: --max-new-tokens, model.seq_len (GPT-2's learned positions), a
   --stop string (not printed), and the end-of-text token (weights favouring id 256), which
   --stop-at-eot false prints instead.
3. Streaming: a tiny Llama generating 20000 tokens has printed generated text while it still
   runs (the text used to appear only at the end).
"""
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pylib"))
from lattice_testing import LATTICE, SRC, check, finish  # noqa: E402

GPT2 = os.path.join(SRC, "configs", "tiny-gpt2.yaml")
LLAMA = os.path.join(SRC, "configs", "tiny-llama.yaml")


def tokens_file(path, ids):
    with open(path, "wb") as f:
        f.write(struct.pack("<" + "H" * len(ids), *ids))
    return path


def train(config, data, weights, *sets, steps=30):
    args = [LATTICE, "train", "--config", config, "--set", f"data.train={data}", "--set",
            f"train.steps={steps}", "--set", "train.warmup_steps=0", "--set", "train.lr=1e-2",
            "--set", f"train.save_weights={weights}"]
    for s in sets:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)


def favour(weights, out, favourite):
    """GPT-2 weights whose logits favour one id whatever the context.

    With norm_f.weight = 0 the final LayerNorm outputs its bias b at every position, so the
    logit of id v is b . wte[v]. With wte[favourite] twice as long as any other row and b along
    it, b . wte[favourite] = |b| |wte[favourite]| > |b| |wte[v]| >= b . wte[v] for every v.
    """
    t = load_file(weights)
    wte = t["wte"].copy()
    longest = np.linalg.norm(wte, axis=1).max()
    row = wte[favourite] / np.linalg.norm(wte[favourite]) * 2 * longest
    wte[favourite] = row
    t["wte"] = wte
    t["norm_f.weight"] = np.zeros_like(t["norm_f.weight"])
    t["norm_f.bias"] = (row / np.linalg.norm(row) * 8).astype(np.float32)
    save_file(t, out, metadata={"format": "pt"})
    return out


def generate(config, weights, *args, sets=()):
    cmd = [LATTICE, "generate", "--config", config, "--weights", weights] + list(args)
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, timeout=300)


def stop_line(r):
    lines = r.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def main():
    with tempfile.TemporaryDirectory() as tmp:
        big = ["model.vocab_size=317"]
        ascii_text = os.path.join(tmp, "text.bin")
        tokens_file(ascii_text, list(b"the cat sat on the mat. " * 200))
        trained = os.path.join(tmp, "w317_trained.safetensors")
        train(GPT2, ascii_text, trained, *big, steps=2)
        weights = favour(trained, os.path.join(tmp, "w317.safetensors"), 301)

        # 1. Only decodable ids, in every mode.
        for mode in (["--greedy"], ["--temperature", "1", "--seed", "3"], ["--top-k", "5"],
                     ["--top-p", "0.5", "--temperature", "0.7"]):
            r = generate(GPT2, weights, "--prompt", "Hi", "--max-new-tokens", "20",
                         "--stop-at-eot", "false", *mode, sets=big)
            try:
                text = r.stdout.decode("utf-8")
            except UnicodeDecodeError as e:
                text = None
                check(f"{mode}: valid UTF-8", False, e)
            check(f"vocab 317 > tokenizer 257, {' '.join(mode)}: generates",
                  r.returncode == 0 and text is not None and text.startswith("Hi") and
                  "stopped: --max-new-tokens=20 reached" in stop_line(r),
                  (r.returncode, r.stdout[:80], r.stderr))

        # 2. Stop reasons.
        r = generate(GPT2, weights, "--prompt", "Hi", "--max-new-tokens", "1000", "--greedy", sets=big)
        # 64 positions: the 2-token prompt, then 62 fed back, and the last one predicted.
        check("seq_len stop", r.returncode == 0 and
              stop_line(r) == "lattice generate: 63 tokens, stopped: model.seq_len=64 reached",
              r.stderr)
        wtext = os.path.join(tmp, "wtext.safetensors")
        train(GPT2, ascii_text, wtext, steps=60)
        full = generate(GPT2, wtext, "--prompt", "the cat", "--max-new-tokens", "40", "--greedy")
        generated = full.stdout.decode()[len("the cat"):-1]
        check("greedy text generated", full.returncode == 0 and len(generated) == 40, full.stderr)
        stop = generated[10:13]
        r = generate(GPT2, wtext, "--prompt", "the cat", "--max-new-tokens", "40", "--greedy",
                     "--stop", stop)
        out = r.stdout.decode()
        check("--stop ends the text before the stop string",
              r.returncode == 0 and out == "the cat" + generated[:generated.index(stop)] + "\n" and
              "stopped: a --stop string" in stop_line(r), (repr(stop), out, r.stderr))
        weot = favour(wtext, os.path.join(tmp, "weot.safetensors"), 256)
        r = generate(GPT2, weot, "--prompt", "x", "--greedy")
        check("end-of-text stop", r.returncode == 0 and r.stdout == b"x\n" and
              stop_line(r) == "lattice generate: 0 tokens, stopped: end-of-text token 256", r.stderr)
        r = generate(GPT2, weot, "--prompt", "x", "--greedy", "--max-new-tokens", "2",
                     "--stop-at-eot", "false")
        check("--stop-at-eot false prints it", r.stdout == b"x<|endoftext|><|endoftext|>\n", r.stdout)

        # 3. Streaming: generated text arrives while the process still runs.
        wl = os.path.join(tmp, "llama.safetensors")
        train(LLAMA, ascii_text, wl, steps=5)
        p = subprocess.Popen([LATTICE, "generate", "--config", LLAMA, "--weights", wl, "--prompt",
                              "the", "--max-new-tokens", "20000", "--temperature", "1",
                              "--stop-at-eot", "false"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got = b""
        start = time.monotonic()
        try:
            while len(got) <= len("the") and time.monotonic() - start < 120:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                got += chunk
            time.sleep(0.5)
            running = p.poll() is None
        finally:
            p.kill()
            p.wait()
        check("streams text while generating", got.startswith(b"the") and len(got) > 3 and
              running, (got[:40], running))

    return finish("generate_test")


if __name__ == "__main__":
    sys.exit(main())
