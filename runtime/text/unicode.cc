#include "runtime/text/unicode.h"

#include <algorithm>
#include <iterator>

namespace lattice::unicode {
namespace {

// An inclusive range of code points; the generated tables below are sorted arrays of these.
struct CodePointRange {
  int32_t first;
  int32_t last;
};

// kLetterRanges, kNumberRanges, kWhiteSpaceRanges, kWordRanges: the classes `tokenizers` uses,
// each in the Unicode version of the engine that uses it (the file's comments say which).
#include "runtime/text/unicode_tables.inc"

// The binary search below is only right on sorted, disjoint ranges: checked when compiling.
template <size_t N>
constexpr bool SortedAndDisjoint(const CodePointRange (&ranges)[N]) {
  for (size_t i = 0; i < N; ++i) {
    if (ranges[i].first > ranges[i].last || ranges[i].last > 0x10FFFF) return false;
    if (i > 0 && ranges[i - 1].last >= ranges[i].first) return false;
  }
  return true;
}
static_assert(SortedAndDisjoint(kLetterRanges));
static_assert(SortedAndDisjoint(kNumberRanges));
static_assert(SortedAndDisjoint(kWhiteSpaceRanges));
static_assert(SortedAndDisjoint(kWordRanges));

template <size_t N>
bool InRanges(const CodePointRange (&ranges)[N], int32_t cp) {
  // The first range that does not end before cp holds it, if any does.
  const CodePointRange* it =
      std::lower_bound(std::begin(ranges), std::end(ranges), cp,
                       [](const CodePointRange& r, int32_t c) { return r.last < c; });
  return it != std::end(ranges) && it->first <= cp;
}

CharClass ClassifyFromTables(int32_t cp) {
  if (InRanges(kLetterRanges, cp)) return CharClass::kLetter;
  if (InRanges(kNumberRanges, cp)) return CharClass::kNumber;
  if (InRanges(kWhiteSpaceRanges, cp)) return CharClass::kSpace;
  return CharClass::kOther;
}

// The Basic Multilingual Plane holds nearly every character of real text: classify it from a
// flat table (64 KiB, one byte a code point) built from the ranges when compiling (so it is
// ready before any static initializer runs), the rest by search.
inline constexpr int32_t kBmpSize = 0x10000;
struct BmpTable {
  CharClass cls[kBmpSize] = {};
  constexpr BmpTable() {
    std::fill(std::begin(cls), std::end(cls), CharClass::kOther);
    // The three classes are disjoint (the generator checks), so the fill order is immaterial.
    auto fill = [&](const auto& ranges, CharClass c) {
      for (const CodePointRange& r : ranges) {
        for (int32_t cp = r.first; cp <= r.last && cp < kBmpSize; ++cp) cls[cp] = c;
      }
    };
    fill(kLetterRanges, CharClass::kLetter);
    fill(kNumberRanges, CharClass::kNumber);
    fill(kWhiteSpaceRanges, CharClass::kSpace);
  }
};
constexpr BmpTable kBmp;

struct ByteMaps {
  std::array<uint32_t, 256> to_cp;
  std::array<int16_t, 324> from_cp;  // mapped code points are all < 324
  ByteMaps() {
    from_cp.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_cp[b] = printable ? b : 256 + n++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteMaps& Maps() {
  static const ByteMaps maps;
  return maps;
}

inline bool IsCont(uint8_t b) { return (b & 0xC0) == 0x80; }

// Length of the longest prefix of a well-formed sequence starting at text[pos] (the "maximal
// subpart" of Unicode 3.9), and whether it is a complete character.
struct Utf8Prefix {
  int length;
  bool complete;
  int32_t code_point;
};
Utf8Prefix ScanUtf8(absl::string_view text, size_t pos) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  const uint8_t b0 = s[pos];
  if (b0 < 0x80) return {1, true, b0};
  int need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  int32_t cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {1, false, kInvalidCodePoint};
  }
  int len = 1;
  for (int k = 0; k < need; ++k) {
    if (pos + len >= n) return {len, false, kInvalidCodePoint};
    const uint8_t b = s[pos + len];
    const bool ok = k == 0 ? (b >= lo && b <= hi) : IsCont(b);
    if (!ok) return {len, false, kInvalidCodePoint};
    cp = (cp << 6) | (b & 0x3F);
    ++len;
  }
  return {len, true, cp};
}

struct Char {
  int32_t cp;
  int32_t len;
  CharClass cls;
};

inline Char CharAt(absl::string_view text, size_t pos) {
  const uint8_t b = static_cast<uint8_t>(text[pos]);
  if (b < 0x80) return {b, 1, kBmp.cls[b]};
  const DecodedChar d = DecodeUtf8(text, pos);
  return {d.code_point, d.length, Classify(d.code_point)};
}

// End of the run of characters of class `cls` starting at `pos`.
inline size_t RunEnd(absl::string_view text, size_t pos, CharClass cls) {
  while (pos < text.size()) {
    const Char c = CharAt(text, pos);
    if (c.cls != cls) break;
    pos += c.len;
  }
  return pos;
}

inline bool IsNewline(int32_t cp) { return cp == '\r' || cp == '\n'; }

// The whitespace alternatives at a whitespace character: `\s+(?!\S)|\s+`, preceded for Llama-3
// by `\s*[\r\n]+` (which ends after the last \r or \n of the run, if there is one).
size_t WhitespaceMatchEnd(absl::string_view text, size_t pos, bool newline_alternative) {
  size_t end = pos;
  size_t last_start = pos;
  size_t after_last_newline = 0;
  int count = 0;
  while (end < text.size()) {
    const Char c = CharAt(text, end);
    if (c.cls != CharClass::kSpace) break;
    last_start = end;
    end += c.len;
    ++count;
    if (IsNewline(c.cp)) after_last_newline = end;
  }
  if (newline_alternative && after_last_newline != 0) return after_last_newline;
  if (end == text.size()) return end;  // (?!\S) holds at the end of the text
  // Followed by \S: \s+(?!\S) backs off one character if it can, else \s+ takes the one.
  return count >= 2 ? last_start : end;
}

// 's|'t|'re|'ve|'m|'ll|'d at an apostrophe; returns the match length or 0. Case-insensitive
// matching follows Unicode simple case folding, under which U+017F (long s) folds to 's'.
size_t ContractionLength(absl::string_view text, size_t pos, bool ignore_case) {
  const size_t n = text.size();
  if (pos + 1 >= n) return 0;
  auto fold = [&](size_t at, int32_t* len) -> int32_t {
    const Char c = CharAt(text, at);
    *len = c.len;
    if (!ignore_case) return c.cp;
    if (c.cp >= 'A' && c.cp <= 'Z') return c.cp - 'A' + 'a';
    if (c.cp == 0x017F) return 's';
    return c.cp;
  };
  int32_t len1 = 0;
  const int32_t c1 = fold(pos + 1, &len1);
  switch (c1) {
    case 's':
    case 't':
    case 'm':
    case 'd':
      return 1 + len1;
    case 'r':
    case 'v':
    case 'l': {
      if (pos + 1 + len1 >= n) return 0;
      int32_t len2 = 0;
      const int32_t c2 = fold(pos + 1 + len1, &len2);
      const int32_t want = c1 == 'l' ? 'l' : 'e';
      return c2 == want ? 1 + len1 + len2 : 0;
    }
    default:
      return 0;
  }
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t Gpt2MatchEnd(absl::string_view text, size_t pos) {
  const Char c = CharAt(text, pos);
  if (c.cp == '\'') {
    const size_t k = ContractionLength(text, pos, /*ignore_case=*/false);
    if (k > 0) return pos + k;
  }
  if (c.cp == ' ' && pos + 1 < text.size()) {
    const Char d = CharAt(text, pos + 1);
    if (d.cls != CharClass::kSpace) return RunEnd(text, pos + 1 + d.len, d.cls);
  }
  if (c.cls != CharClass::kSpace) return RunEnd(text, pos + c.len, c.cls);
  return WhitespaceMatchEnd(text, pos, /*newline_alternative=*/false);
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
size_t Llama3MatchEnd(absl::string_view text, size_t pos) {
  const size_t n = text.size();
  const Char c = CharAt(text, pos);
  if (c.cp == '\'') {
    const size_t k = ContractionLength(text, pos, /*ignore_case=*/true);
    if (k > 0) return pos + k;
  }
  if (c.cls == CharClass::kLetter) return RunEnd(text, pos + c.len, CharClass::kLetter);
  if (c.cls != CharClass::kNumber && !IsNewline(c.cp) && pos + c.len < n) {
    const Char d = CharAt(text, pos + c.len);
    if (d.cls == CharClass::kLetter) return RunEnd(text, pos + c.len + d.len, CharClass::kLetter);
  }
  if (c.cls == CharClass::kNumber) {
    size_t end = pos + c.len;
    for (int k = 1; k < 3 && end < n; ++k) {
      const Char d = CharAt(text, end);
      if (d.cls != CharClass::kNumber) break;
      end += d.len;
    }
    return end;
  }
  size_t other_start = std::string::npos;
  if (c.cls == CharClass::kOther) {
    other_start = pos;
  } else if (c.cp == ' ' && pos + 1 < n && CharAt(text, pos + 1).cls == CharClass::kOther) {
    other_start = pos + 1;
  }
  if (other_start != std::string::npos) {
    size_t end = RunEnd(text, other_start, CharClass::kOther);
    while (end < n && (text[end] == '\r' || text[end] == '\n')) ++end;
    return end;
  }
  return WhitespaceMatchEnd(text, pos, /*newline_alternative=*/true);
}

}  // namespace

DecodedChar DecodeUtf8(absl::string_view text, size_t pos) {
  const Utf8Prefix p = ScanUtf8(text, pos);
  if (!p.complete) return {kInvalidCodePoint, 1};
  return {p.code_point, p.length};
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Utf8Lossy(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Prefix p = ScanUtf8(bytes, pos);
    if (p.complete) {
      out.append(bytes.data() + pos, p.length);
    } else {
      out.append("\xEF\xBF\xBD");
    }
    pos += p.length;
  }
  return out;
}

CharClass Classify(int32_t cp) {
  if (cp < 0) return CharClass::kOther;
  if (cp < kBmpSize) return kBmp.cls[cp];
  return ClassifyFromTables(cp);
}

bool IsWhiteSpace(int32_t cp) { return cp >= 0 && InRanges(kWhiteSpaceRanges, cp); }

bool IsWordChar(int32_t cp) { return cp >= 0 && InRanges(kWordRanges, cp); }

const std::array<uint32_t, 256>& ByteToCodePoint() { return Maps().to_cp; }

int CodePointToByte(uint32_t cp) {
  const auto& from = Maps().from_cp;
  return cp < from.size() ? from[cp] : -1;
}

std::string BytesToByteLevel(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  const auto& to = Maps().to_cp;
  for (char ch : bytes) AppendUtf8(to[static_cast<uint8_t>(ch)], &out);
  return out;
}

std::optional<std::string> ByteLevelToBytes(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const DecodedChar d = DecodeUtf8(text, pos);
    if (d.code_point == kInvalidCodePoint) return std::nullopt;
    const int b = CodePointToByte(static_cast<uint32_t>(d.code_point));
    if (b < 0) return std::nullopt;
    out.push_back(static_cast<char>(b));
    pos += d.length;
  }
  return out;
}

std::optional<SplitPattern> RecognizeSplitRegex(absl::string_view regex) {
  if (regex == kGpt2SplitRegex) return SplitPattern::kGpt2;
  if (regex == kLlama3SplitRegex) return SplitPattern::kLlama3;
  return std::nullopt;
}

absl::string_view SplitPatternName(SplitPattern pattern) {
  return pattern == SplitPattern::kGpt2 ? "gpt2" : "llama3";
}

size_t SplitMatchEnd(SplitPattern pattern, absl::string_view text, size_t pos) {
  return pattern == SplitPattern::kGpt2 ? Gpt2MatchEnd(text, pos) : Llama3MatchEnd(text, pos);
}

std::vector<std::string> Split(SplitPattern pattern, absl::string_view text) {
  std::vector<std::string> pieces;
  ForEachSplit(pattern, text, [&](absl::string_view p) { pieces.emplace_back(p); });
  return pieces;
}

}  // namespace lattice::unicode
