"""Parity of lattice's byte-level BPE with Hugging Face `tokenizers` (the oracle).

Checks 1-4 each on the whole King James Bible and on a text of Unicode, digits, whitespace runs,
contractions and special tokens:
  1. a GPT-2 style tokenizer trained by `tokenizers` (merges rewritten to the "a b" string form),
     plus variants with add_prefix_space and with added tokens using lstrip/rstrip/single_word;
  2. a tokenizer trained by `lattice tokenizer train`, loaded by `tokenizers.Tokenizer.from_file`;
  3. a Llama-3 style tokenizer (Sequence[Split(Llama-3 regex, Isolated), ByteLevel(use_regex=False)],
     merges in the pair form, ignore_merges, special tokens appended after the model vocab);
  4. decode(encode(text)) == text, and lattice's decode equals `tokenizers`' decode;
  5. every Unicode scalar value (1,112,064 code points) in a few contexts, with the pre-tokenizers
     of tests/data/tokenizer/tiny_{gpt2,llama3}.json and with single_word / lstrip / rstrip
     added tokens: the character classes must be the library's (Unicode 14.0 in its Oniguruma
     split regexes, 16.0 in its added-token word boundaries), not the system's.
It also prints the KJV encode throughput of lattice (1 and 2 threads) and of `tokenizers`
encode_batch (all cores). Run alone: LATTICE_BIN=build/lattice python tokenizer_parity_test.py
(add --code-points-only for check 5 alone).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
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


# ---- 5. Every code point ------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "data", "tokenizer")
# Every Unicode scalar value: UTF-8 (and so a Python str that `tokenizers` accepts) cannot hold
# the surrogates.
SCALARS = np.array([c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF])
assert len(SCALARS) == 1_112_064
# Cases are joined into large documents, each case followed by this special token: `tokenizers`
# and lattice both cut the text at added tokens before pre-tokenizing, so every case is encoded
# on its own and its ids sit between two separator ids. No context below holds \x01 or \x02, so
# whatever the code point, the only occurrences of the separator are the ones put there.
SEPARATOR = "\x01\x02"
# The contexts around each code point c. Between them they put c at each place the two split
# regexes distinguish: at the start of the text before a contraction; after the optional space
# and before a digit (" ?\p{N}+", "\p{N}{1,3}"); at the end of a letter run and of the text;
# before a space and a letter (the whitespace back-off "\s+(?!\S)"); after an apostrophe (the
# case-folded Llama-3 contractions, the optional one-character prefix of "\p{L}+"). c alone adds
# nothing these do not cover.
SPLIT_CONTEXTS = ["{}'s", " {}1", "a{}", "{} x", "'{}a"]
# Around the added tokens of added_token_spec(): single_word "QQQ" after and before c (c a word
# character or not), lstrip "LLL" after c and rstrip "RRR" before it (c whitespace or not).
ADDED_CONTEXTS = ["{}QQQ", "QQQ{}", "{}LLL", "RRR{}"]
# `tokenizers` slows down on texts with many added tokens: measured on 1.2 M cases, documents of
# 256 cases encoded about twice as fast as documents of 4096 (32 to 256 were all about as fast).
CASES_PER_DOCUMENT = 256
DOCUMENTS_PER_BATCH = 64  # enough to keep both cores busy in `tokenizers`' encode_batch


def byte_symbols():
    """GPT-2's byte-to-unicode table: the byte-level symbol of each byte, in byte order."""
    out, n = [], 0
    for b in range(256):
        if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def boundary_model_spec(fixture, extra_added=()):
    """The fixture's pre-tokenizer, decoder and special tokens with a BPE model that makes every
    pre-tokenizer boundary next to an ASCII byte visible in the ids.

    The fixtures' 600-token vocabularies have almost no merges across the boundaries these cases
    probe (an ASCII byte next to the bytes of an arbitrary code point), so a character put in the
    wrong class would often give the same ids. Here every pair of an ASCII byte with any byte,
    either way round, is a token, and those pairs outrank all others: the two bytes at such a
    boundary merge if they are in one piece and cannot if they are not, so a boundary that one
    side has and the other lacks changes the ids. (Checked: a lattice built with U+3000, U+00B2,
    U+0301, U+2028 or U+200D moved to another class fails this sweep at those code points.)"""
    spec = json.load(open(os.path.join(FIXTURES, fixture), encoding="utf-8"))
    sym = byte_symbols()
    pairs = [(sym[a], sym[b]) for a in range(128) for b in range(256)]
    pairs += [(sym[a], sym[b]) for a in range(128, 256) for b in range(128)]
    vocab = {s: i for i, s in enumerate(sym)}
    for a, b in pairs:
        vocab[a + b] = len(vocab)
    pair_form = isinstance(spec["model"]["merges"][0], list)
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [[a, b] if pair_form else f"{a} {b}" for a, b in pairs]
    added = [dict(t) for t in spec["added_tokens"]]
    added.append({"content": SEPARATOR, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True})
    added += [dict(t) for t in extra_added]
    for i, token in enumerate(added):
        token["id"] = len(vocab) + i
    spec["added_tokens"] = added
    return spec


def added_token_spec():
    def token(content, **flags):
        entry = {"content": content, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": True, "special": False}
        entry.update(flags)
        return entry
    # Three letters, so that no token of the model has the same content (`tokenizers` would
    # give an added token the model's id, and a match would not show in the ids).
    return boundary_model_spec("tiny_gpt2.json", [token("QQQ", single_word=True),
                                                  token("LLL", lstrip=True),
                                                  token("RRR", rstrip=True)])


def sweep_documents(contexts):
    """Case k is contexts[k // len(SCALARS)] around SCALARS[k % len(SCALARS)], + SEPARATOR."""
    chars = [chr(c) for c in SCALARS.tolist()]
    docs = []
    for ctx in contexts:
        before, after = ctx.split("{}")
        glue = after + SEPARATOR + before
        for i in range(0, len(chars), CASES_PER_DOCUMENT):
            docs.append(before + glue.join(chars[i:i + CASES_PER_DOCUMENT]) + after + SEPARATOR)
    return docs


def check_every_code_point(name, spec, contexts, work):
    t0 = time.time()
    path = os.path.join(work, "sweep.json")
    write_json(path, spec)
    hf = Tokenizer.from_file(path)
    for token in spec["added_tokens"]:
        assert hf.token_to_id(token["content"]) == token["id"], token
    sep_id = next(t["id"] for t in spec["added_tokens"] if t["content"] == SEPARATOR)
    docs = sweep_documents(contexts)
    theirs = []
    # An Encoding holds far more than its ids (token strings, offsets, masks): keeping them all
    # at once took 4.4 GB, so each batch is reduced to its ids before the next is encoded.
    for i in range(0, len(docs), DOCUMENTS_PER_BATCH):
        encodings = hf.encode_batch(docs[i:i + DOCUMENTS_PER_BATCH], add_special_tokens=False)
        theirs += [np.array(e.ids, dtype=np.int32) for e in encodings]
    theirs = np.concatenate(theirs)
    t_hf = time.time() - t0
    text_path = os.path.join(work, "sweep.txt")
    with open(text_path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(docs))  # the separators make one document encode as the pieces do
    ids_path = os.path.join(work, "sweep_ids.txt")
    run(["tokenizer", "encode", "--tokenizer", path, "--input", text_path, "--out", ids_path])
    ours = np.fromfile(ids_path, dtype=np.int32, sep=" ")
    for done in (text_path, ids_path):  # ~250 MB together: not left behind in /tmp
        os.remove(done)
    num_cases = len(SCALARS) * len(contexts)
    what = (f"{len(SCALARS)} code points x {len(contexts)} contexts "
            f"({sum(map(len, docs)) / 1e6:.0f} M characters)")
    if np.array_equal(theirs, ours):
        assert np.count_nonzero(ours == sep_id) == num_cases
        print(f"  ok   {name}: {what}, {len(ours)} ids "
              f"(tokenizers {t_hf:.1f} s, total {time.time() - t0:.1f} s)")
        return
    # Attribute the differences: the ids of case k lie between separators k-1 and k.
    FAILURES.append(name)
    print(f"  FAIL {name}: {what}: ids differ")
    split_ours = np.split(ours, np.flatnonzero(ours == sep_id) + 1)
    split_theirs = np.split(theirs, np.flatnonzero(theirs == sep_id) + 1)
    if len(split_ours) != len(split_theirs):
        print(f"    {len(split_theirs) - 1} separators from tokenizers, {len(split_ours) - 1} "
              f"from lattice")
    differ = 0
    for k, (a, b) in enumerate(zip(split_theirs, split_ours)):
        if not np.array_equal(a, b):
            differ += 1
            if differ <= 20:
                cp = int(SCALARS[k % len(SCALARS)])
                case = contexts[k // len(SCALARS)].format(chr(cp))
                print(f"    U+{cp:04X} in {ascii(case)}: tokenizers {a[:-1].tolist()} vs lattice "
                      f"{b[:-1].tolist()}")
    print(f"    {differ} cases differ")


def check_all_code_points(work):
    print("5. every Unicode scalar value, in context")
    t0 = time.time()
    for fixture, label in (("tiny_gpt2.json", "GPT-2 split"),
                           ("tiny_llama3.json", "Llama-3 split")):
        check_every_code_point(f"{label} ({fixture} pre-tokenizer)",
                               boundary_model_spec(fixture), SPLIT_CONTEXTS, work)
    check_every_code_point("single_word, lstrip, rstrip added tokens", added_token_spec(),
                           ADDED_CONTEXTS, work)
    print(f"  ({time.time() - t0:.1f} s)")


def main():
    work = tempfile.mkdtemp(prefix="lattice_tok_parity_")
    check_all_code_points(work)
    if sys.argv[1:] == ["--code-points-only"]:
        if FAILURES:
            sys.exit(f"FAILED: {FAILURES}")
        return
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
