#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "runtime/rng.h"

namespace lattice {

absl::Status ValidateSamplerOptions(const SamplerOptions& o) {
  if (!std::isfinite(o.temperature) || o.temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature=", o.temperature, " must be a finite number >= 0 (0 = greedy)"));
  }
  if (o.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k=", o.top_k, " < 0"));
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p=", o.top_p, " must be in (0, 1]"));
  }
  return absl::OkStatus();
}

std::vector<uint8_t> DecodableTokenMask(const Tokenizer& tokenizer, int64_t model_vocab) {
  std::vector<uint8_t> allowed(static_cast<size_t>(std::max<int64_t>(model_vocab, 0)), 0);
  const int64_t n = std::min(model_vocab, tokenizer.vocab_size());
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = static_cast<int32_t>(i);
    allowed[i] = tokenizer.Decode(absl::MakeConstSpan(&id, 1)).ok() ? 1 : 0;
  }
  return allowed;
}

absl::StatusOr<int32_t> SampleToken(absl::Span<const float> logits,
                                    absl::Span<const uint8_t> allowed, const SamplerOptions& o,
                                    uint64_t draw) {
  const size_t n = std::min(logits.size(), allowed.size());
  // The candidates, in id order: what survives the mask (the others count as -inf).
  std::vector<int32_t> order;
  order.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const float l = logits[i];
    if (allowed[i] != 0 && !std::isnan(l) && l != -std::numeric_limits<float>::infinity()) {
      order.push_back(static_cast<int32_t>(i));
    }
  }
  if (order.empty()) {
    const int64_t num_allowed = std::count_if(allowed.begin(), allowed.begin() + n,
                                              [](uint8_t a) { return a != 0; });
    return absl::FailedPreconditionError(absl::StrCat(
        "no token can be sampled: ", num_allowed, " of ", logits.size(),
        " ids are decodable by the tokenizer and none of them has a finite logit"));
  }
  if (o.temperature <= 0.0f) {
    // The first maximum: ties go to the smallest id, as std::max_element does.
    int32_t best = order[0];
    for (int32_t id : order) {
      if (logits[id] > logits[best]) best = id;
    }
    return best;
  }
  // Candidates sorted by logit, descending (ties broken by id, so results are deterministic).
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = static_cast<int64_t>(order.size());
  if (o.top_k > 0) keep = std::min<int64_t>(keep, o.top_k);
  std::vector<double> probs(keep);
  const double mx = static_cast<double>(logits[order[0]]) / o.temperature;
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    const double scaled = static_cast<double>(logits[order[i]]) / o.temperature;
    // A +inf maximum (an inf logit, or a tiny temperature) takes all the mass, shared equally
    // among the ids that reach it; exp(inf - inf) would be NaN.
    probs[i] = std::isinf(mx) ? (scaled == mx ? 1.0 : 0.0) : std::exp(scaled - mx);
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

// ---- TextStreamer --------------------------------------------------------------------------

namespace {
// U+FFFD, which Decode puts in place of an incomplete (or invalid) UTF-8 sequence.
constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";
}  // namespace

TextStreamer::TextStreamer(const Tokenizer& tokenizer, std::vector<std::string> stops)
    : tokenizer_(tokenizer), stops_(std::move(stops)) {}

std::string TextStreamer::Take(size_t end) {
  if (end <= emitted_) return std::string();
  std::string piece = text_.substr(emitted_, end - emitted_);
  emitted_ = end;
  return piece;
}

absl::StatusOr<TextStreamer::Piece> TextStreamer::Add(int32_t id) {
  Piece piece;
  if (stopped_) {
    piece.stopped = true;
    return piece;
  }
  ids_.push_back(id);
  // The whole sequence is decoded again (not just the new id): tokenizers decode whole
  // sequences (joining pieces, replacing broken UTF-8), and this keeps the text exactly theirs.
  // The cost is O(length) bytes per id, small next to a decoder step over the same length.
  absl::StatusOr<std::string> text = tokenizer_.Decode(ids_);
  if (!text.ok()) {
    ids_.pop_back();
    return text.status();
  }
  text_ = *std::move(text);
  // Byte-level and space-joined decoding only ever extend the text; a decoder that shortened
  // it would print nothing more until it grows past what is already out.
  if (text_.size() < emitted_) return piece;
  // Everything before emitted_ was final, so a stop string can only start at emitted_ or later.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) cut = std::min(cut, text_.find(s, emitted_));
  if (cut != std::string::npos) {
    text_.resize(cut);
    stopped_ = true;
    piece.stopped = true;
    piece.text = Take(text_.size());
    return piece;
  }
  // UTF-8 is decoded left to right, so appending ids can only change a trailing U+FFFD (an
  // incomplete character); what comes before it is final.
  size_t stable = text_.size();
  while (stable >= emitted_ + kReplacement.size() &&
         absl::EndsWith(absl::string_view(text_).substr(0, stable), kReplacement)) {
    stable -= kReplacement.size();
  }
  // Hold back the longest tail that is a proper prefix of a stop string.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t k = std::min(s.size() - 1, stable - emitted_); k > hold; --k) {
      if (absl::string_view(text_).substr(stable - k, k) == absl::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  piece.text = Take(stable - hold);
  return piece;
}

std::string TextStreamer::Finish() { return Take(text_.size()); }

}  // namespace lattice
