"""Parity of lattice's byte-level BPE with Hugging Face `tokenizers` (the oracle).

Checks, each on the whole King James Bible and on a text of Unicode, digits, whitespace runs,
contractions and special tokens:
  1. a GPT-2 style tokenizer trained by `tokenizers` (merges rewritten to the "a b" string form),
     plus variants with add_prefix_space and with added tokens using lstrip/rstrip/single_word;
  2. a tokenizer trained by `lattice tokenizer train`, loaded by `tokenizers.Tokenizer.from_file`;
  3. a Llama-3 style tokenizer (Sequence[Split(Llama-3 regex, Isolated), ByteLevel(use_regex=False)],
     merges in the pair form, ignore_merges, special tokens appended after the model vocab);
  4. decode(encode(text)) == text, and lattice's decode equals `tokenizers`' decode.
It also prints the KJV encode throughput of lattice (1 and 2 threads) and of `tokenizers`
encode_batch (all cores). Run alone: LATTICE_BIN=build/lattice python tokenizer_parity_test.py
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

LATTICE = os.environ.get("LATTICE_BIN", "lattice")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TRICKY = "".join([
    "Café naïve Zürich résumé Ångström façade. ",
    "中文字符和日本語のテキスト、한국어 문장。",
    "Emoji: 👍🏽 👨‍👩‍👧 🇫🇷🇩🇪 ❤️ 🙂🙂🙂\n",
    "Combining: e\u0301 a\u0308\u0323 n\u0303o\u0302 \u0301leading mark, Z\u0335\u0321a\u0336lgo\n",
    "Digits: 0 12 123 1234 12345678 3.14159 1,000,000 -42 +7e10 ٣٤٥ ⅫⅣ ½¾ ²³ 𝟘𝟙\n",
    "Spaces:  two   three    four\ttab\t\ttwo tabs \t mixed\n\n\nthree newlines\r\nCRLF\r\r\n",
    "trailing spaces   \n   leading spaces\n \n  \n\t\n",
    "nbsp\u00a0here, ideographic\u3000space, line\u2028sep, nel\u0085x, thin\u2009space!\u00a0\u00a0x\n",
    "Contractions: don't I'M they'Re we'll you'VE she'd it's 's 't O'Neil rock'n'roll ''s x'ſy "
    "'LL 'Ll 'S' '''\n",
    "Specials: a<|endoftext|>b <|endoftext|><|endoftext|> <|endoftext| |endoftext|> "
    "<|end_of_text|> <|begin_of_text|>hi<|end_of_text|>\n",
    "Punct: ?!... \"quoted\" (paren) [brackets] {braces} --- ___ *** ~~~ @#$%^&\n",
    "Code: def f(x):\n\treturn x**2  # comment\n    if a==b: print('ok')\n",
    "URL https://example.com/a?b=c&d=e#frag user@mail.org\n",
    "Control \x00\x01\x07\x1b[0m\x7f chars and \ufeffBOM \u200bzwsp \u200d zwj\n",
    "Mixed scripts: Привет мир, Γειά σου, שלום, مرحبا, नमस्ते, ไทย, ქართული\n",
    "Long word: " + "supercalifragilisticexpialidocious" * 8 + " " + "a" * 300 + "\n",
    "ending with spaces and no newline   ",
])


def run(args, **kw):
    proc = subprocess.run([LATTICE] + args, capture_output=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"FAIL: lattice {' '.join(args[:3])}... exited {proc.returncode}: "
                 f"{proc.stderr.decode(errors='replace')}")
    return proc


def lattice_encode(tok_path, text_path, extra=()):
    proc = run(["tokenizer", "encode", "--tokenizer", tok_path, "--input", text_path, *extra])
    lines = proc.stdout.decode().split("\n")
    assert lines[-1] == ""
    return [[int(x) for x in line.split()] for line in lines[:-1]], proc.stderr.decode()


def lattice_decode(tok_path, ids, work):
    ids_path = os.path.join(work, "ids.txt")
    with open(ids_path, "w") as f:
        f.write(" ".join(map(str, ids)))
    return run(["tokenizer", "decode", "--tokenizer", tok_path, "--input", ids_path]).stdout


def kjv_chunks(text):
    # A line break followed by a letter is a split point of both regexes, so encoding these
    # chunks separately and concatenating equals encoding the whole text (and is much faster in
    # `tokenizers`, whose single-string encode is quadratic-ish on 4 MB).
    pieces, start = [], 0
    for m in re.finditer(r"\n(?=[A-Za-z])", text):
        if m.end() - start > 65536:
            pieces.append(text[start:m.end()])
            start = m.end()
    pieces.append(text[start:])
    assert "".join(pieces) == text
    return pieces


FAILURES = []


def check_equal(what, expected, got):
    if expected == got:
        print(f"  ok   {what}: {len(got)} ids")
        return
    n = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b),
             min(len(expected), len(got)))
    FAILURES.append(what)
    print(f"  FAIL {what}: {len(expected)} ids expected, {len(got)} from lattice; first "
          f"difference at {n}: tokenizers {expected[max(0, n - 3):n + 5]} vs lattice "
          f"{got[max(0, n - 3):n + 5]}")


def check_tokenizer(name, tok_path, kjv_path, kjv_text, tricky_path, work, lossless=True):
    """lossless: decode(encode(text)) == text (false with add_prefix_space or stripping tokens)."""
    t0 = time.time()
    print(f"{name} ({tok_path})")
    hf = Tokenizer.from_file(tok_path)
    ours, _ = lattice_encode(tok_path, kjv_path)
    if lossless:
        # The whole KJV as one document in lattice, against tokenizers on exact-boundary chunks.
        theirs = [i for enc in hf.encode_batch(kjv_chunks(kjv_text), add_special_tokens=False)
                  for i in enc.ids]
        check_equal("KJV, whole text", theirs, ours[0])
    else:
        # A prefix space is added per document, so the chunks would not add up: check a prefix.
        head_path = os.path.join(work, "kjv_head.txt")
        head = kjv_text[:300_000]
        with open(head_path, "w", encoding="utf-8", newline="") as f:
            f.write(head)
        ours, _ = lattice_encode(tok_path, head_path)
        check_equal("KJV, first 300 kB", hf.encode(head, add_special_tokens=False).ids, ours[0])
        kjv_text = head
    tricky = open(tricky_path, encoding="utf-8", newline="").read()
    expected = hf.encode(tricky, add_special_tokens=False).ids
    ours_tricky, _ = lattice_encode(tok_path, tricky_path)
    check_equal("tricky text", expected, ours_tricky[0])
    # Each line of the tricky text on its own exercises starts and ends of documents.
    lines = tricky.split("\n")[:-1] if tricky.endswith("\n") else tricky.split("\n")
    ours_lines, _ = lattice_encode(tok_path, tricky_path, ["--lines", "--threads", "2"])
    theirs_lines = [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]
    check_equal("tricky text, line by line", sum(theirs_lines, []), sum(ours_lines, []))
    for label, text, ids in (("KJV", kjv_text, ours[0]), ("tricky text", tricky, ours_tricky[0])):
        decoded = lattice_decode(tok_path, ids, work)
        hf_decoded = hf.decode(ids, skip_special_tokens=False)
        ok = decoded.decode("utf-8") == hf_decoded
        what = "decode == tokenizers' decode"
        if lossless:
            ok = ok and decoded == text.encode("utf-8")
            what = f"decode(encode({label})) == text, and == tokenizers' decode"
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            FAILURES.append(f"{name}: decode {label}")
    print(f"  ({time.time() - t0:.1f} s)")


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def main():
    work = tempfile.mkdtemp(prefix="lattice_tok_parity_")
    kjv = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, check=True).stdout
    kjv_text = kjv.decode("utf-8")
    assert len(kjv_text) > 4_000_000, "bible-kjv output is too short"
    kjv_path = os.path.join(work, "kjv.txt")
    with open(kjv_path, "wb") as f:
        f.write(kjv)
    tricky_path = os.path.join(work, "tricky.txt")
    with open(tricky_path, "w", encoding="utf-8", newline="") as f:
        f.write(TRICKY)
    t_start = time.time()

    # 1. GPT-2 style, trained by `tokenizers`.
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train([kjv_path], trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    gpt2_path = os.path.join(work, "gpt2_hf.json")
    hf.save(gpt2_path)
    spec = json.load(open(gpt2_path, encoding="utf-8"))
    assert isinstance(spec["model"]["merges"][0], list)
    spec["model"]["merges"] = [f"{a} {b}" for a, b in spec["model"]["merges"]]  # "a b" form
    write_json(gpt2_path, spec)
    check_tokenizer("1. GPT-2 style, trained by tokenizers, string merges", gpt2_path, kjv_path,
                    kjv_text, tricky_path, work)

    prefix_path = os.path.join(work, "gpt2_prefix.json")
    spec["pre_tokenizer"]["add_prefix_space"] = True
    write_json(prefix_path, spec)
    check_tokenizer("1b. GPT-2 style with add_prefix_space", prefix_path, kjv_path, kjv_text,
                    tricky_path, work, lossless=False)

    added = Tokenizer.from_file(gpt2_path)
    added.add_tokens([AddedToken("LORD", single_word=True), AddedToken(" God", lstrip=True),
                      AddedToken("Jesus", rstrip=True, normalized=False),
                      AddedToken("endoftext", normalized=True)])
    added.add_special_tokens(["<|end_of_text|>", "[SEP]"])
    added_path = os.path.join(work, "gpt2_added.json")
    added.save(added_path)
    check_tokenizer("1c. GPT-2 style with added tokens (single_word, lstrip, rstrip)", added_path,
                    kjv_path, kjv_text, tricky_path, work, lossless=False)

    # 2. Trained by lattice, loaded by tokenizers.
    lat_path = os.path.join(work, "lattice_trained.json")
    t0 = time.time()
    proc = run(["tokenizer", "train", "--input", kjv_path, "--vocab-size", "4096", "--out",
                lat_path])
    print(f"lattice train: {time.time() - t0:.2f} s: {proc.stderr.decode().strip()}")
    lat = json.load(open(lat_path, encoding="utf-8"))
    assert len(lat["model"]["vocab"]) == 4096, len(lat["model"]["vocab"])
    assert lat["model"]["vocab"]["<|endoftext|>"] == 4095
    check_tokenizer("2. trained by lattice tokenizer train", lat_path, kjv_path, kjv_text,
                    tricky_path, work)

    # 3. Llama-3 style.
    llama = Tokenizer(models.BPE(ignore_merges=True))
    llama.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    llama.decoder = decoders.ByteLevel()
    llama.train([kjv_path], trainers.BpeTrainer(
        vocab_size=4096, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    llama.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_0|>"])
    llama_path = os.path.join(work, "llama3.json")
    llama.save(llama_path)
    spec = json.load(open(llama_path, encoding="utf-8"))
    assert spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == LLAMA3_REGEX
    assert isinstance(spec["model"]["merges"][0], list), "expected the pair form"
    assert spec["model"]["ignore_merges"] is True
    assert llama.token_to_id("<|end_of_text|>") == len(spec["model"]["vocab"]) + 1
    check_tokenizer("3. Llama-3 style (Split + ByteLevel, pair merges, ignore_merges)",
                    llama_path, kjv_path, kjv_text, tricky_path, work)
    print(f"parity checks took {time.time() - t_start:.1f} s")

    # Throughput on the KJV, one document per line (31k documents), in one run.
    lines = kjv_text.split("\n")[:-1]
    hf = Tokenizer.from_file(gpt2_path)
    t0 = time.time()
    hf_ids = hf.encode_batch(lines, add_special_tokens=False)
    hf_s = time.time() - t0
    mb = len(kjv) / 1e6
    print(f"throughput, KJV {mb:.1f} MB as {len(lines)} documents, GPT-2 style vocab 4096:")
    print(f"  tokenizers {tokenizers.__version__} encode_batch ({os.cpu_count()} cores): "
          f"{hf_s:.3f} s, {mb / hf_s:.2f} MB/s")
    for threads in (1, 2):
        ours, log = lattice_encode(gpt2_path, kjv_path,
                                   ["--lines", "--threads", str(threads), "--time"])
        check_equal(f"KJV line by line, {threads} thread(s)", [e.ids for e in hf_ids], ours)
        print("  " + log.strip())

    if FAILURES:
        sys.exit(f"FAILED: {FAILURES}")
    print("all tokenizer parity checks passed")


if __name__ == "__main__":
    main()
