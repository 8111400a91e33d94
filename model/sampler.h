// Next-token selection from logits: greedy, temperature, top-k and top-p (nucleus) sampling,
// restricted to the ids a tokenizer can decode.
#ifndef LATTICE_MODEL_SAMPLER_H_
#define LATTICE_MODEL_SAMPLER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "runtime/text/tokenizer.h"

namespace lattice {

struct SamplerOptions {
  float temperature = 1.0f;  // 0 means greedy (argmax); must be >= 0
  int64_t top_k = 0;         // 0 = no top-k filter
  float top_p = 1.0f;        // 1 = no nucleus filter
  uint64_t seed = 0;
};

absl::Status ValidateSamplerOptions(const SamplerOptions& o);

// allowed[i] != 0 for every id in [0, model_vocab) that `tokenizer` can decode (ids at or past
// its vocabulary, and holes in it, are 0). A model may have more rows than its tokenizer has
// tokens (a vocab padded for speed, or a tokenizer swapped for a smaller one): those rows can
// win an argmax but cannot become text.
std::vector<uint8_t> DecodableTokenMask(const Tokenizer& tokenizer, int64_t model_vocab);

// Picks a token id i with allowed[i] != 0 (i < allowed.size() <= logits.size()); every other id,
// and any id whose logit is NaN or -inf, is treated as a logit of -inf before greedy, top-k,
// top-p and temperature apply, so it is never returned. `draw` indexes the counter-based RNG,
// so sampling is reproducible for a seed. FailedPrecondition when no allowed id has a usable
// logit (weights with NaN, or an empty mask).
absl::StatusOr<int32_t> SampleToken(absl::Span<const float> logits,
                                    absl::Span<const uint8_t> allowed, const SamplerOptions& o,
                                    uint64_t draw);

// Turns generated ids into text as they come, for streaming. The text returned so far is
// always a prefix of tokenizer.Decode(every id added), so the pieces joined equal the decoding
// of the whole sequence (cut at a stop string): an id that ends inside a multi-byte UTF-8
// character (Decode shows it as a trailing U+FFFD) is held back until the character is
// complete, and so is a tail of the text that could be the start of a stop string.
class TextStreamer {
 public:
  // Stop strings must not be empty. `tokenizer` must outlive the streamer.
  TextStreamer(const Tokenizer& tokenizer, std::vector<std::string> stops);

  struct Piece {
    std::string text;      // text that became final with this id (may be empty)
    bool stopped = false;  // the text reached a stop string (text ends just before it)
  };
  // Appends an id (an error if the tokenizer cannot decode it).
  absl::StatusOr<Piece> Add(int32_t id);
  // Whatever was held back, once generation is over.
  std::string Finish();
  int64_t num_ids() const { return static_cast<int64_t>(ids_.size()); }

 private:
  std::string Take(size_t end);

  const Tokenizer& tokenizer_;
  std::vector<std::string> stops_;
  std::vector<int32_t> ids_;
  std::string text_;    // Decode(ids_), cut at the first stop string
  size_t emitted_ = 0;  // bytes of text_ returned so far
  bool stopped_ = false;
};

}  // namespace lattice

#endif  // LATTICE_MODEL_SAMPLER_H_
