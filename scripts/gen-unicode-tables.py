#!/usr/bin/env python3
"""Generates runtime/text/unicode_tables.inc, the character classes of lattice's tokenizer.

lattice must split text exactly as Hugging Face `tokenizers` 0.20 does, and that library mixes
two Unicode versions:
  * the pre-tokenizer regexes (\\p{L}, \\p{N}, \\s) run on Oniguruma 6.9.8, whose tables are
    Unicode 14.0;
  * `single_word` added tokens test the Rust `regex` crate's \\w, and lstrip/rstrip its \\s, with
    that crate's Unicode 16.0 tables.
So the tables are generated here, once, from data of exactly those versions, and committed; the
lattice binary needs neither Python nor ICU.

Sources, each checked for its Unicode version:
  * Python 3.11's standard `unicodedata` (Unicode 14.0.0): General_Category for letters and
    numbers;
  * `unicodedata2` 16.0.0 (PyPI): General_Category in Unicode 16.0;
  * `regex` 2024.11.6 (PyPI, Unicode 16.0 tables): the Alphabetic and Join_Control properties,
    which `unicodedata` does not expose. Its General_Category is checked against `unicodedata2`
    for every code point, which ties its tables to Unicode 16.0.

Run (the packages go in a scratch venv, not the project's .venv):
  python3.11 -m venv /tmp/ucd-venv
  /tmp/ucd-venv/bin/pip install unicodedata2==16.0.0 regex==2024.11.6
  /tmp/ucd-venv/bin/python scripts/gen-unicode-tables.py          # rewrites the .inc
  /tmp/ucd-venv/bin/python scripts/gen-unicode-tables.py --check  # exit 1 if it is stale
tests/runtime/text/tokenizer_parity_test.py checks the result against `tokenizers` itself for
every code point.
"""
import argparse
import importlib.metadata
import os
import sys
import textwrap
import unicodedata

import regex
import unicodedata2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "runtime", "text", "unicode_tables.inc")
MAX_CODE_POINT = 0x10FFFF
# Every Unicode scalar value: code points minus the surrogates, which UTF-8 cannot carry.
SCALARS = [c for c in range(MAX_CODE_POINT + 1) if not 0xD800 <= c <= 0xDFFF]
LINE_WIDTH = 100  # the C++ sources' line limit
REGEX_VERSION = importlib.metadata.version("regex")  # regex.__version__ is an internal number


def require(cond, msg):
    if not cond:
        sys.exit(f"gen-unicode-tables: {msg}")


def check_sources():
    require(unicodedata.unidata_version == "14.0.0",
            f"Python's unicodedata is Unicode {unicodedata.unidata_version}, need 14.0.0 "
            f"(Oniguruma 6.9.8's version): run this with Python 3.11")
    require(unicodedata2.unidata_version == "16.0.0",
            f"unicodedata2 is Unicode {unicodedata2.unidata_version}, need 16.0.0 "
            f"(pip install unicodedata2==16.0.0)")
    # `regex` names no Unicode version; its General_Category agreeing with unicodedata2 16.0 on
    # every code point pins the tables it was built from (15.0 or 17.0 would differ).
    letter = regex.compile(r"\p{L}")
    mark = regex.compile(r"\p{M}")
    for c in SCALARS:
        ch = chr(c)
        gc = unicodedata2.category(ch)[0]
        require((letter.match(ch) is not None) == (gc == "L") and
                (mark.match(ch) is not None) == (gc == "M"),
                f"regex {REGEX_VERSION} disagrees with unicodedata2 16.0.0 at U+{c:04X}: "
                f"need regex==2024.11.6 (Unicode 16.0)")


def ranges_of(members):
    """Sorted code points -> maximal [first, last] runs."""
    out = []
    for c in members:
        if out and out[-1][1] + 1 == c:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def white_space(ud):
    # The White_Space property (PropList.txt): the space separators, the line and paragraph
    # separators, and six controls (TAB LF VT FF CR NEL); `unicodedata` has no PropList.
    return [c for c in SCALARS
            if ud.category(chr(c)) in ("Zs", "Zl", "Zp") or 0x09 <= c <= 0x0D or c == 0x85]


def build_classes():
    letters14 = [c for c in SCALARS if unicodedata.category(chr(c))[0] == "L"]
    numbers14 = [c for c in SCALARS if unicodedata.category(chr(c))[0] == "N"]
    space14 = white_space(unicodedata)
    regex_space = regex.compile(r"\p{White_Space}")
    space16 = [c for c in SCALARS if regex_space.match(chr(c))]
    # One table serves Oniguruma's \s (14.0) and the regex crate's \s (16.0): check that it may.
    require(space14 == space16 == white_space(unicodedata2),
            "White_Space differs between Unicode 14.0 and 16.0; the tables need two classes")
    # One class a character: lattice's flat BMP table and its range search rely on it.
    require(not (set(letters14) & set(numbers14) or set(space14) & set(letters14 + numbers14)),
            "the letter, number and space classes overlap")
    alphabetic = regex.compile(r"\p{Alphabetic}")
    join_control = regex.compile(r"\p{Join_Control}")
    word16 = []
    for c in SCALARS:
        ch = chr(c)
        gc = unicodedata2.category(ch)
        # regex-syntax's perl_word (UTS #18 Annex C): Alphabetic, Mark, Decimal_Number,
        # Connector_Punctuation, Join_Control.
        if (gc[0] == "M" or gc in ("Nd", "Pc") or alphabetic.match(ch) or
                join_control.match(ch)):
            word16.append(c)
    return [
        ("kLetterRanges", "Oniguruma \\p{L}: General_Category L (Lu Ll Lt Lm Lo), Unicode 14.0",
         ranges_of(letters14)),
        ("kNumberRanges", "Oniguruma \\p{N}: General_Category N (Nd Nl No), Unicode 14.0",
         ranges_of(numbers14)),
        ("kWhiteSpaceRanges",
         "\\s of Oniguruma and of the Rust regex crate: the White_Space property, identical in "
         "Unicode 14.0 and 16.0", ranges_of(space14)),
        ("kWordRanges",
         "Rust regex \\w: Alphabetic + Mark + Decimal_Number + Connector_Punctuation + "
         "Join_Control, Unicode 16.0", ranges_of(word16)),
    ]


def render(classes):
    lines = [
        "// Generated by scripts/gen-unicode-tables.py; do not edit (regenerate instead).",
        "// Character classes of Hugging Face `tokenizers` 0.20: pre-tokenizer and added tokens.",
        f"// Sources: Python unicodedata {unicodedata.unidata_version}, unicodedata2 "
        f"{unicodedata2.unidata_version}, regex {REGEX_VERSION}.",
        "// Each table: sorted, disjoint, non-adjacent inclusive [first, last] code point ranges.",
        "// Included by runtime/text/unicode.cc, which defines CodePointRange.",
        "",
    ]
    for name, doc, ranges in classes:
        count = sum(b - a + 1 for a, b in ranges)
        lines += textwrap.wrap(f"{doc}.", LINE_WIDTH, initial_indent="// ",
                               subsequent_indent="// ")
        lines.append(f"// {len(ranges)} ranges, {count} code points.")
        lines.append(f"inline constexpr CodePointRange {name}[] = {{")
        row = "   "
        for a, b in ranges:
            item = f" {{0x{a:04X}, 0x{b:04X}}},"
            if len(row) + len(item) > LINE_WIDTH:
                lines.append(row)
                row = "   "
            row += item
        lines.append(row)
        lines.append("};")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed file differs from what would be generated")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    check_sources()
    text = render(build_classes())
    if args.check:
        try:
            current = open(args.out, encoding="utf-8").read()
        except FileNotFoundError:
            current = None
        if current != text:
            sys.exit(f"gen-unicode-tables: {args.out} is stale; rerun without --check")
        print(f"gen-unicode-tables: {args.out} is up to date")
        return
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"gen-unicode-tables: wrote {args.out}")


if __name__ == "__main__":
    main()
