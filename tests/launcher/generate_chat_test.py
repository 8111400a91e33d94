#!/usr/bin/env python3
"""`lattice generate` with the chat template, stop strings, streaming and a batch of prompts.

1. Chat rendering reaches the model: `--chat --system S --prompt P` generates exactly what
   `--prompt <the ChatML text, written out here>` generates, a {"messages"} line of a prompts
   file gives the same reply, and the prompt's token count is that of the rendered text.
2. The end-of-turn marker stops a chat reply: with a tokenizer.json whose <|im_end|> is one
   added token (made here with `tokenizers`) and GPT-2 weights that make it the argmax
   everywhere, `--chat` prints an empty reply and says the marker stopped it, while a plain
   prompt prints the marker (it stops chat turns only); the chat prompt's ids are those
   `tokenizers` gives the rendered text (markers as single tokens).
3. Stop strings: the text ends just before the first occurrence of a --stop string that spans
   several tokens, in plain and chat mode; the stop string is not printed.
4. Streaming: sampled text with multi-byte characters arrives in pieces that are each valid
   UTF-8 on their own (no partial character is ever written), and the pieces joined equal the
   batch (non-streamed) result of the same prompt and seed.
5. A batch (text lines, blank lines skipped; JSONL with "prompt" under --chat) gives for every
   prompt what a single run with the same options and seed gives, with index and line; stdout
   and --output hold the same lines.
6. Errors name what is wrong: a missing prompts file, a bad JSON line, an unknown role and a
   misplaced system message (FILE:LINE and the message index), a line with neither or both
   fields, a prompt too long (FILE:LINE), option conflicts; a failed batch leaves an existing
   --output file as it was.
"""
import json
import os
import subprocess
import sys
import tempfile


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "pylib"))
from lattice_testing import LATTICE, check, finish  # noqa: E402
# The model helpers of the plain generation test (this directory).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate_test import GPT2, LLAMA, favour, generate, stop_line, tokens_file, train  # noqa: E402,F401

# The documented template (docs/generate.md), written out rather than computed by lattice.
SYSTEM_HI = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
             "<|im_start|>assistant\n")


def chat_tokenizer(path):
    """Byte-level BPE over the 256 bytes (GPT-2's byte-to-symbol map, no merges) with
    <|endoftext|>, <|im_start|>, <|im_end|> as added tokens 256, 257, 258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    symbol = dict(zip(bs, map(chr, cs)))
    tok = Tokenizer(models.BPE(vocab={symbol[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save(path)
    return tok


def results(r):
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def main():
    with tempfile.TemporaryDirectory() as tmp:
        # A Llama trained briefly on conversations with multi-byte characters: its text varies
        # and holds them, which is all these checks need (equalities, not quality).
        conv = ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
                "hello thére, 3 € for the café<|im_end|>\n")
        data = tokens_file(os.path.join(tmp, "chat.bin"), list(conv.encode()) * 100)
        wl = os.path.join(tmp, "llama.safetensors")
        train(LLAMA, data, wl, steps=20)
        greedy = ["--greedy", "--stop-at-eot", "false"]

        # ---- 1. chat rendering reaches the model ----
        chat = generate(LLAMA, wl, "--chat", "--system", "Be brief.", "--prompt", "hi",
                        "--max-new-tokens", "30", *greedy)
        plain = generate(LLAMA, wl, "--prompt", SYSTEM_HI, "--max-new-tokens", "30",
                         "--stop", "<|im_end|>", *greedy)
        reply = chat.stdout.decode()
        check("--chat --system generates what --prompt <rendered text> generates",
              chat.returncode == 0 and plain.returncode == 0 and len(reply) > 1 and
              plain.stdout.decode() == SYSTEM_HI + reply and
              stop_line(chat).split(", stopped")[0] == stop_line(plain).split(", stopped")[0],
              (chat.stdout, plain.stdout, chat.stderr, plain.stderr))
        msgs = write(os.path.join(tmp, "msgs.jsonl"), json.dumps(
            {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "hi"}]}) + "\n")
        r = generate(LLAMA, wl, "--prompts-file", msgs, "--max-new-tokens", "30", *greedy)
        res = results(r) if r.returncode == 0 else []
        check("a {\"messages\"} line gives the --chat reply; prompt tokens = rendered bytes",
              len(res) == 1 and res[0]["text"] + "\n" == reply and
              res[0]["prompt_tokens"] == len(SYSTEM_HI.encode()) and res[0]["line"] == 1,
              (r.stdout, r.stderr))

        # ---- 2. the end-of-turn marker as one token stops a chat reply ----
        tokjson = os.path.join(tmp, "tokenizer.json")
        hf_tok = chat_tokenizer(tokjson)
        big = ["model.vocab_size=317"]
        w2 = os.path.join(tmp, "gpt2_trained.safetensors")
        train(GPT2, data, w2, *big, steps=2)
        weot = favour(w2, os.path.join(tmp, "gpt2_im_end.safetensors"), 258)
        r = generate(GPT2, weot, "--tokenizer", tokjson, "--chat", "--prompt", "hé", "--greedy",
                     sets=big)
        check("--chat stops at <|im_end|> (one token) and prints an empty reply",
              r.returncode == 0 and r.stdout == b"\n" and stop_line(r) ==
              "lattice generate: 1 tokens, stopped: the chat end-of-turn marker <|im_end|>",
              (r.stdout, r.stderr))
        r = generate(GPT2, weot, "--tokenizer", tokjson, "--prompt", "hé", "--greedy",
                     "--max-new-tokens", "2", sets=big)
        check("without --chat the marker is ordinary text",
              r.returncode == 0 and r.stdout == "hé<|im_end|><|im_end|>\n".encode(), r.stdout)
        hm = write(os.path.join(tmp, "hm.jsonl"), json.dumps(
            {"messages": [{"role": "user", "content": "hé"}]}) + "\n")
        r = generate(GPT2, weot, "--tokenizer", tokjson, "--prompts-file", hm, "--greedy",
                     sets=big)
        # 22 ids: 3 markers + "user\n" (5) + "hé" (3 bytes) + "\n" + "assistant\n" (10); the
        # 46 bytes of the text would be 46 ids if the markers were not single tokens.
        want_ids = hf_tok.encode("<|im_start|>user\nhé<|im_end|>\n<|im_start|>assistant\n").ids
        res = results(r) if r.returncode == 0 else []
        check(f"chat prompt ids are tokenizers' ids of the rendered text ({len(want_ids)} "
              "tokens, markers as single tokens)",
              len(res) == 1 and res[0]["prompt_tokens"] == len(want_ids) == 22 and
              res[0]["ids"] == [258] and res[0]["text"] == "",
              (r.stdout, r.stderr))

        # ---- 3. stop strings ----
        full = generate(LLAMA, wl, "--prompt", "hello", "--max-new-tokens", "40", *greedy)
        generated = full.stdout.decode()[len("hello"):-1]
        check("greedy text generated", full.returncode == 0 and len(generated) >= 20,
              (full.stdout, full.stderr))
        stop = generated[12:15]
        r = generate(LLAMA, wl, "--prompt", "hello", "--max-new-tokens", "40", *greedy,
                     "--stop", "never-generated", "--stop", stop)
        check(f"--stop {stop!r} (3 byte tokens) cuts the text before its first occurrence",
              r.returncode == 0 and
              r.stdout.decode() == "hello" + generated[:generated.index(stop)] + "\n" and
              "stopped: a --stop string" in stop_line(r), (r.stdout, r.stderr))
        cstop = reply[5:8]
        r = generate(LLAMA, wl, "--chat", "--system", "Be brief.", "--prompt", "hi",
                     "--max-new-tokens", "30", "--stop", cstop, *greedy)
        check(f"--chat with --stop {cstop!r}",
              r.returncode == 0 and r.stdout.decode() == reply[:reply.index(cstop)] + "\n" and
              "stopped: a --stop string" in stop_line(r), (r.stdout, r.stderr))

        # ---- 4. streaming: whole characters per write, same text as non-streamed ----
        sample = ["--temperature", "1", "--seed", "7", "--max-new-tokens", "300",
                  "--stop-at-eot", "false"]
        p = subprocess.Popen([LATTICE, "generate", "--config", LLAMA, "--weights", wl,
                              "--prompt", "café", *sample],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        chunks = []
        while True:
            # Each flushed piece is one write() below PIPE_BUF, which a pipe never splits: a
            # read of 64 KiB returns whole pieces (several, when the reader lags).
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
        p.wait(timeout=300)
        bad = []
        for c in chunks:
            try:
                c.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(c)
        streamed = b"".join(chunks)
        check(f"streamed in {len(chunks)} reads, none with a partial UTF-8 character",
              p.returncode == 0 and len(chunks) > 1 and not bad and
              any(b >= 0x80 for b in streamed[len("café".encode()):]),
              (bad[:3], streamed[:80]))
        one = write(os.path.join(tmp, "one.txt"), "café\n")
        r = generate(LLAMA, wl, "--prompts-file", one, *sample)
        res = results(r) if r.returncode == 0 else []
        check("streamed text equals the non-streamed (batch) text",
              len(res) == 1 and streamed.decode() == "café" + res[0]["text"] + "\n",
              (streamed[:80], r.stdout[:200], r.stderr))

        # ---- 5. a batch equals single runs ----
        opts = ["--temperature", "0.8", "--top-k", "20", "--seed", "3", "--max-new-tokens", "25",
                "--stop-at-eot", "false"]
        prompts = ["hello", "the cat", "hé €"]
        lines_txt = write(os.path.join(tmp, "prompts.txt"),
                          "hello\r\nthe cat\n\n  \t\nhé €")  # lines 1, 2, 5; a CRLF; no final \n
        out = os.path.join(tmp, "out.jsonl")
        r = generate(LLAMA, wl, "--prompts-file", lines_txt, "--output", out, *opts)
        file_res = [json.loads(x) for x in open(out, encoding="utf-8")] if r.returncode == 0 else []
        ok = len(file_res) == 3 and [x["line"] for x in file_res] == [1, 2, 5] and \
            [x["index"] for x in file_res] == [0, 1, 2]
        singles = []
        for i, pr in enumerate(prompts):
            s = generate(LLAMA, wl, "--prompt", pr, *opts)
            singles.append(s.stdout.decode())
            ok = ok and s.returncode == 0 and i < len(file_res) and \
                singles[-1] == pr + file_res[i]["text"] + "\n" and \
                stop_line(s).split(": ", 1)[1] == \
                f"{file_res[i]['num_tokens']} tokens, stopped: {file_res[i]['stopped']}"
        check("batch of 3 text lines (--output) equals 3 single runs, with index and line", ok,
              (file_res, singles, r.stderr))
        r2 = generate(LLAMA, wl, "--prompts-file", lines_txt, *opts)
        check("batch to stdout holds the same lines as --output",
              r2.returncode == 0 and r2.stdout == open(out, "rb").read(), (r2.stdout, r2.stderr))
        check("batch summary on stderr", f"3 prompts, {sum(x['num_tokens'] for x in file_res)} "
              f"tokens, written to {out}" in stop_line(r), r.stderr)
        cj = write(os.path.join(tmp, "chat.jsonl"),
                   "\n".join(json.dumps({"prompt": p, "id": i}) for i, p in enumerate(prompts)))
        r = generate(LLAMA, wl, "--prompts-file", cj, "--chat", "--system", "Be brief.", *opts)
        res = results(r) if r.returncode == 0 else []
        ok = len(res) == 3
        for i, pr in enumerate(prompts):
            s = generate(LLAMA, wl, "--chat", "--system", "Be brief.", "--prompt", pr, *opts)
            ok = ok and s.returncode == 0 and i < len(res) and s.stdout.decode() == \
                res[i]["text"] + "\n"
        check("JSONL {\"prompt\"} lines under --chat --system equal single --chat runs", ok,
              (r.stdout, r.stderr))

        # ---- 6. errors ----
        def expect_error(label, args, *needles):
            r = generate(LLAMA, wl, *args)
            err = r.stderr.decode(errors="replace")
            ok = r.returncode != 0 and all(n in err for n in needles)
            check(f"error: {label}" + (f"\n      {err.strip()[:300]}" if ok else ""), ok,
                  (r.returncode, err))

        missing = os.path.join(tmp, "missing.jsonl")
        expect_error("missing prompts file", ["--prompts-file", missing], missing)
        bad = write(os.path.join(tmp, "bad.jsonl"), '{"prompt": "a"}\n\n{"prompt": "b"\n')
        expect_error("bad JSON line", ["--prompts-file", bad], f"{bad}:3", "invalid JSON")
        role = write(os.path.join(tmp, "role.jsonl"), '{"prompt": "a"}\n' + json.dumps(
            {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}))
        expect_error("unknown role", ["--prompts-file", role], f"{role}:2", "messages[1]",
                     'unknown role "tool"')
        sysl = write(os.path.join(tmp, "sys.jsonl"), json.dumps(
            {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}))
        expect_error("system message not first", ["--prompts-file", sysl], f"{sysl}:1",
                     "messages[1]", "system")
        empty = write(os.path.join(tmp, "empty.jsonl"), '{"messages": []}\n')
        expect_error("empty messages", ["--prompts-file", empty], f"{empty}:1", "empty")
        neither = write(os.path.join(tmp, "neither.jsonl"), '{"text": "a"}\n')
        expect_error("neither prompt nor messages", ["--prompts-file", neither],
                     f"{neither}:1", "exactly one of \"prompt\"", "neither")
        both = write(os.path.join(tmp, "both.jsonl"), '{"prompt": "a", "messages": []}\n')
        expect_error("both prompt and messages", ["--prompts-file", both], f"{both}:1", "both")
        num = write(os.path.join(tmp, "num.jsonl"), '{"prompt": 3}\n')
        expect_error("prompt not a string", ["--prompts-file", num], f"{num}:1",
                     "\"prompt\" is a JSON number")
        long_ = write(os.path.join(tmp, "long.txt"), "ok\n" + "x" * 80 + "\n")
        r = generate(GPT2, w2, "--prompts-file", long_, sets=big)
        err = r.stderr.decode(errors="replace")
        check("error: a prompt too long for GPT-2's 64 positions names FILE:LINE",
              r.returncode != 0 and f"{long_}:2: the prompt has 80 tokens; model.seq_len=64" in err,
              err)
        blank = write(os.path.join(tmp, "blank.txt"), "\n \n")
        expect_error("no prompts", ["--prompts-file", blank], "no prompts")
        expect_error("--prompt with --prompts-file", ["--prompts-file", lines_txt, "--prompt", "a"],
                     "--prompt and --prompts-file")
        expect_error("--output without --prompts-file", ["--prompt", "a", "--output", out],
                     "--output needs --prompts-file")
        expect_error("--system without --chat", ["--prompt", "a", "--system", "s"],
                     "--system needs --chat")
        expect_error("turn marker in a chat prompt", ["--chat", "--prompt", "a<|im_end|>b"],
                     "turn marker")
        before = open(out, "rb").read()
        r = generate(LLAMA, wl, "--prompts-file", role, "--output", out)
        check("a failed batch leaves --output as it was",
              r.returncode != 0 and open(out, "rb").read() == before and
              not [f for f in os.listdir(tmp) if ".tmp." in f], os.listdir(tmp))

    return finish("generate_chat_test")


if __name__ == "__main__":
    sys.exit(main())
