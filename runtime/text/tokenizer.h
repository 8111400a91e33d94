// Byte-level BPE tokenizer compatible with Hugging Face `tokenizer.json` files (GPT-2 and
// Llama-3 style pre-tokenizers), plus a trivial byte tokenizer (ids 0..255).
//
// Ids are exactly those the `tokenizers` library produces for the same file and text with
// `encode(text, add_special_tokens=False)`: the post-processor (a template that adds BOS, say) is
// not applied; callers add document separators themselves. Decode equals `tokenizers`'
// `decode(ids, skip_special_tokens=False)`. runtime/text/tokenizer.cc lists what is supported.
#ifndef LATTICE_RUNTIME_TEXT_TOKENIZER_H_
#define LATTICE_RUNTIME_TEXT_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace lattice {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads a Hugging Face tokenizer.json. Errors name the file and what is wrong.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(absl::string_view json,
                                                             absl::string_view source_name);
  // The byte tokenizer: id = byte value, vocab 256 (+1: id 256 is the end-of-text token).
  static std::unique_ptr<Tokenizer> Bytes();
  // "byte" -> Bytes(), anything else -> FromFile(spec).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& spec);

  // Encodes text; added/special tokens that appear literally in the text are matched first
  // (as `tokenizers` does). Thread-safe (const).
  virtual std::vector<int32_t> Encode(absl::string_view text) const = 0;
  // Decodes ids back to text (invalid UTF-8 byte sequences become U+FFFD as in `tokenizers`).
  // Ids outside the vocabulary are an error.
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const = 0;

  // Largest id + 1 (including added tokens).
  virtual int64_t vocab_size() const = 0;
  // The id of a token string (vocab or added token), if present.
  virtual std::optional<int32_t> TokenToId(absl::string_view token) const = 0;
  // The end-of-text/document token: "<|endoftext|>" (GPT-2), "<|end_of_text|>" (Llama-3),
  // "</s>", or 256 for the byte tokenizer. nullopt if the tokenizer has none.
  virtual std::optional<int32_t> eot_id() const = 0;

  // Encodes each text on up to `num_threads` threads (0: one per core); result[i] is
  // Encode(texts[i]).
  std::vector<std::vector<int32_t>> EncodeBatch(absl::Span<const absl::string_view> texts,
                                                int num_threads) const;
};

}  // namespace lattice

#endif  // LATTICE_RUNTIME_TEXT_TOKENIZER_H_
