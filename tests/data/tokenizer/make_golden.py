"""Regenerates the golden files of tests/runtime/text/tokenizer_test.cc with Hugging Face `tokenizers`.

  .venv/bin/python tests/data/tokenizer/make_golden.py

Writes tiny_gpt2.json and tiny_llama3.json (vocab 600, trained on Genesis 1-3 of the KJV plus
golden_text.txt), and the ids `tokenizers` gives golden_text.txt with each of them.
"""
import json
import os
import subprocess
import tempfile

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def main():
    text = open(os.path.join(HERE, "golden_text.txt"), encoding="utf-8", newline="").read()
    genesis = subprocess.run(["bible", "-f", "Gen1:1-3:24"], capture_output=True,
                             check=True).stdout.decode()
    with tempfile.TemporaryDirectory() as work:
        corpus = os.path.join(work, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write(genesis + text)
        alphabet = pre_tokenizers.ByteLevel.alphabet()

        gpt2 = Tokenizer(models.BPE())
        gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        gpt2.decoder = decoders.ByteLevel()
        gpt2.train([corpus], trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                 initial_alphabet=alphabet, show_progress=False))
        llama = Tokenizer(models.BPE(ignore_merges=True))
        llama.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        llama.decoder = decoders.ByteLevel()
        llama.train([corpus], trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet,
                                                  show_progress=False))
        llama.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])

    for name, tok in (("gpt2", gpt2), ("llama3", llama)):
        path = os.path.join(HERE, f"tiny_{name}.json")
        tok.save(path)
        spec = json.load(open(path, encoding="utf-8"))
        if name == "gpt2":  # exercise the older "a b" merge form too
            spec["model"]["merges"] = [f"{a} {b}" for a, b in spec["model"]["merges"]]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(spec, f, ensure_ascii=False, indent=None)
        ids = tok.encode(text, add_special_tokens=False).ids
        with open(os.path.join(HERE, f"golden_ids_{name}.txt"), "w") as f:
            f.write(" ".join(map(str, ids)) + "\n")
        print(name, len(ids), "ids")


if __name__ == "__main__":
    main()
