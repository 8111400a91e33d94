#include "launcher/spike.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"

namespace lattice {

std::string SpikeVerdict::Describe() const {
  switch (kind) {
    case Kind::kSpike:
      return absl::StrFormat("loss %.6g at iteration %d is %.1f sigma above the last %d (mean %.6g, "
                             "std %.3g)",
                             loss, step, sigma, window, mean, stddev);
    case Kind::kNonFinite:
      return absl::StrFormat("%d non-finite step%s in a row (iterations %d-%d; the last loss %g)",
                             streak, streak == 1 ? "" : "s", first_step, step, loss);
    case Kind::kNone:
      break;
  }
  return "no spike";
}

SpikeVerdict SpikeDetector::Observe(int64_t step, double loss, bool nonfinite) {
  SpikeVerdict v;
  v.step = step;
  v.loss = loss;
  if (nonfinite || !std::isfinite(loss)) {
    if (streak_ == 0) streak_first_ = step;
    ++streak_;
    if (config_.max_nonfinite > 0 && streak_ >= config_.max_nonfinite) {
      v.kind = SpikeVerdict::Kind::kNonFinite;
      v.streak = streak_;
      v.first_step = streak_first_;
    }
    return v;
  }
  streak_ = 0;
  const int64_t w = config_.window;
  if (w > 0 && known() >= w) {
    // Two passes over the last w losses in double: exact enough for any window a run uses, and
    // O(w) per step is nothing next to a training step.
    double sum = 0;
    for (auto it = good_.end() - w; it != good_.end(); ++it) sum += it->second;
    const double mean = sum / static_cast<double>(w);
    double sq = 0;
    for (auto it = good_.end() - w; it != good_.end(); ++it) {
      sq += (it->second - mean) * (it->second - mean);
    }
    // The sample standard deviation (n - 1): the window is a sample of the recent losses.
    const double stddev = w > 1 ? std::sqrt(sq / static_cast<double>(w - 1)) : 0.0;
    const double sigma = stddev > 0 ? (loss - mean) / stddev
                         : loss > mean ? std::numeric_limits<double>::infinity()
                                       : 0.0;
    if (sigma > config_.z_threshold) {
      v.kind = SpikeVerdict::Kind::kSpike;
      v.window = w;
      v.mean = mean;
      v.stddev = stddev;
      v.sigma = sigma;
      return v;
    }
  }
  good_.emplace_back(step, loss);
  Trim();
  return v;
}

void SpikeDetector::Anchor(int64_t iteration) {
  anchored_ = true;
  anchor_ = iteration;
  Trim();
}

void SpikeDetector::RollBack(int64_t iteration) {
  while (!good_.empty() && good_.back().first > iteration) good_.pop_back();
  streak_ = 0;
  ++rollbacks_;
  Anchor(iteration);
}

void SpikeDetector::Trim() {
  // Keep the last `window` good losses up to the anchor (a rollback's window) and every one
  // after it; without an anchor there is nothing to roll back to, so the last `window` suffice.
  const int64_t w = config_.window;
  int64_t upto = 0;  // entries at or before the anchor
  for (const auto& [step, loss] : good_) {
    if (anchored_ && step > anchor_) break;
    ++upto;
  }
  while (upto > w) {
    good_.pop_front();
    --upto;
  }
}

}  // namespace lattice
