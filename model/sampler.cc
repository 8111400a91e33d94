#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/rng.h"

namespace lattice {

absl::Status ValidateSamplerOptions(const SamplerOptions& o) {
  if (!std::isfinite(o.temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature=", o.temperature, " is not finite"));
  }
  if (o.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k=", o.top_k, " < 0"));
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p=", o.top_p, " must be in (0, 1]"));
  }
  return absl::OkStatus();
}

int32_t SampleToken(const float* logits, int64_t vocab, const SamplerOptions& o, uint64_t draw) {
  if (o.temperature <= 0.0f) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  // Candidates sorted by logit, descending (ties broken by id, so results are deterministic).
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = vocab;
  if (o.top_k > 0) keep = std::min<int64_t>(keep, o.top_k);
  std::vector<double> probs(keep);
  const double mx = logits[order[0]] / o.temperature;
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    probs[i] = std::exp(logits[order[i]] / o.temperature - mx);
    sum += probs[i];
  }
  if (o.top_p < 1.0f) {
    double cum = 0;
    int64_t cut = keep;
    for (int64_t i = 0; i < keep; ++i) {
      cum += probs[i] / sum;
      if (cum >= o.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    sum = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  }
  const double u = static_cast<double>(CounterRng(o.seed, "sampler").Uniform(draw)) * sum;
  double cum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    cum += probs[i];
    if (u < cum) return order[i];
  }
  return order[keep - 1];
}

}  // namespace lattice
