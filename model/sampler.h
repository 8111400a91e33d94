// Next-token selection from logits: greedy, temperature, top-k and top-p (nucleus) sampling.
#ifndef LATTICE_MODEL_SAMPLER_H_
#define LATTICE_MODEL_SAMPLER_H_

#include <cstdint>

#include "absl/status/status.h"

namespace lattice {

struct SamplerOptions {
  float temperature = 1.0f;  // <= 0 means greedy (argmax)
  int64_t top_k = 0;         // 0 = no top-k filter
  float top_p = 1.0f;        // 1 = no nucleus filter
  uint64_t seed = 0;
};

absl::Status ValidateSamplerOptions(const SamplerOptions& o);

// Picks a token among logits[0, vocab) (padding columns beyond vocab are never chosen).
// `draw` indexes the counter-based RNG, so sampling is reproducible for a seed.
int32_t SampleToken(const float* logits, int64_t vocab, const SamplerOptions& o, uint64_t draw);

}  // namespace lattice

#endif  // LATTICE_MODEL_SAMPLER_H_
