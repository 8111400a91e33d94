// Unicode text helpers for the byte-level BPE tokenizer: UTF-8 decoding, the character classes
// the GPT-2 / Llama-3 split regexes use (\p{L}, \p{N}, \s from ICU), the GPT-2 byte-to-unicode
// mapping, and hand-written matchers for the two split regexes.
//
// The matchers reproduce what the Oniguruma engine inside Hugging Face `tokenizers` matches for
// these exact patterns (ordered alternation, greedy quantifiers with backtracking, the (?!\S)
// lookahead), so a tokenizer.json that names one of them splits text identically here.
#ifndef LATTICE_RUNTIME_TEXT_UNICODE_H_
#define LATTICE_RUNTIME_TEXT_UNICODE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace lattice::unicode {

// A code point decoded from UTF-8. Ill-formed input decodes one byte at a time as
// kInvalidCodePoint, so every byte of any string belongs to exactly one "character".
inline constexpr int32_t kInvalidCodePoint = -1;
struct DecodedChar {
  int32_t code_point;  // kInvalidCodePoint for an ill-formed byte
  int32_t length;      // bytes, 1..4
};
// `pos` < text.size().
DecodedChar DecodeUtf8(absl::string_view text, size_t pos);
void AppendUtf8(uint32_t code_point, std::string* out);
// Replaces each maximal ill-formed subsequence with U+FFFD, as Rust's String::from_utf8_lossy
// (and so `tokenizers` decoding) does.
std::string Utf8Lossy(absl::string_view bytes);

// The classes the split regexes distinguish. Ill-formed bytes are kOther.
enum class CharClass : uint8_t {
  kLetter,  // \p{L}: Lu Ll Lt Lm Lo
  kNumber,  // \p{N}: Nd Nl No
  kSpace,   // \s: the Unicode White_Space property
  kOther,
};
CharClass Classify(int32_t code_point);
// Rust regex's Unicode \w (Alphabetic, marks, Nd, Pc, Join_Control); `tokenizers` uses it for
// the single_word option of added tokens.
bool IsWordChar(int32_t code_point);
bool IsWhiteSpace(int32_t code_point);

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the others to 256 + n.
const std::array<uint32_t, 256>& ByteToCodePoint();
// The byte a mapped code point stands for, or -1.
int CodePointToByte(uint32_t code_point);
// Raw bytes -> their byte-level string (UTF-8 of the mapped code points).
std::string BytesToByteLevel(absl::string_view bytes);
// A byte-level string -> raw bytes; nullopt when some character is not in the mapping.
std::optional<std::string> ByteLevelToBytes(absl::string_view text);

// The split regexes `tokenizers` files use, byte for byte.
inline constexpr absl::string_view kGpt2SplitRegex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr absl::string_view kLlama3SplitRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum class SplitPattern { kGpt2, kLlama3 };
std::optional<SplitPattern> RecognizeSplitRegex(absl::string_view regex);
absl::string_view SplitPatternName(SplitPattern pattern);

// The end of the regex match that starts at `pos` (< text.size()). Both patterns match at every
// position, so successive matches tile the text.
size_t SplitMatchEnd(SplitPattern pattern, absl::string_view text, size_t pos);

// Calls fn(absl::string_view piece) for each match, in order; the pieces tile `text`.
template <typename Fn>
void ForEachSplit(SplitPattern pattern, absl::string_view text, Fn&& fn) {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = SplitMatchEnd(pattern, text, pos);
    fn(text.substr(pos, end - pos));
    pos = end;
  }
}
std::vector<std::string> Split(SplitPattern pattern, absl::string_view text);

}  // namespace lattice::unicode

#endif  // LATTICE_RUNTIME_TEXT_UNICODE_H_
