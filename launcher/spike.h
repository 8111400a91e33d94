// Loss-spike and non-finite-streak detection for `lattice train` (train.spike, docs/recovery.md).
//
// The trainer feeds every iteration's loss to a SpikeDetector. A step is "non-finite" when the
// engine skipped it (its loss or gradient norm was not finite: no update was applied, as
// Megatron does) or its reported loss is not finite; every other step is "good". The detector
// triggers on
//   - a spike: once `window` good losses are known, a good loss more than `z_threshold` sample
//     standard deviations above the mean of the last `window` good losses (skipped steps are
//     not in the window, and neither is the spike itself); or
//   - a streak: `max_nonfinite` non-finite steps in a row.
// A trigger makes the trainer roll every rank back to the newest committed checkpoint and skip
// the samples read since then (launcher/trainer.cc, runtime/data/dataset.h).
//
// After a rollback to iteration C the detector forgets every step after C, so its window is
// the last good losses up to C, as if the rolled-back steps had never run. To have them, it
// keeps the last `window` good losses up to the newest committed checkpoint (Anchor) plus every
// good loss after it: at most window + checkpoint.interval entries. A resumed process starts
// with an empty window (the losses are not training state): the z test waits until `window`
// new good losses are known.
//
// With a window of identical losses (standard deviation 0) any larger loss is infinitely many
// sigma above it and triggers; real training losses are never that flat.
#ifndef LATTICE_LAUNCHER_SPIKE_H_
#define LATTICE_LAUNCHER_SPIKE_H_

#include <cstdint>
#include <deque>
#include <string>
#include <utility>

#include "runtime/config.h"

namespace lattice {

struct SpikeVerdict {
  enum class Kind { kNone, kSpike, kNonFinite };
  Kind kind = Kind::kNone;
  int64_t step = 0;      // the iteration that triggered
  double loss = 0;       // its loss
  // kSpike: the window's statistics and how many of its standard deviations the loss is above
  // its mean (+inf when the deviation is 0).
  int64_t window = 0;
  double mean = 0;
  double stddev = 0;
  double sigma = 0;
  // kNonFinite: the length of the streak and its first iteration.
  int64_t streak = 0;
  int64_t first_step = 0;

  bool triggered() const { return kind != Kind::kNone; }
  // "loss 9.1 at iteration 37 is 6.2 sigma above the last 20 (mean 5.5, std 0.58)" or
  // "3 non-finite steps in a row (iterations 35-37)".
  std::string Describe() const;
};

class SpikeDetector {
 public:
  explicit SpikeDetector(const SpikeConfig& config) : config_(config) {}

  bool enabled() const { return config_.enabled(); }
  // Feeds iteration `step` (increasing between rollbacks). `nonfinite`: the engine skipped the
  // step; a non-finite `loss` counts as non-finite too. A triggering loss is not kept.
  SpikeVerdict Observe(int64_t step, double loss, bool nonfinite);
  // A checkpoint of `iteration` is committed (or was resumed from): keep what a rollback to it
  // needs, forget what no rollback can need any more.
  void Anchor(int64_t iteration);
  // Whether one more rollback is allowed (train.spike.max_rollbacks counts this process's).
  bool CanRollBack() const { return rollbacks_ < config_.max_rollbacks; }
  // The run went back to `iteration`: forget every step after it, and the non-finite streak;
  // counts one rollback.
  void RollBack(int64_t iteration);
  int64_t rollbacks() const { return rollbacks_; }

  // Good losses known now, and how many of them the z test would use.
  int64_t known() const { return static_cast<int64_t>(good_.size()); }
  int64_t streak() const { return streak_; }

 private:
  void Trim();

  SpikeConfig config_;
  std::deque<std::pair<int64_t, double>> good_;  // (iteration, loss), oldest first
  bool anchored_ = false;
  int64_t anchor_ = 0;        // the newest committed checkpoint's iteration (when anchored_)
  int64_t streak_ = 0;        // non-finite steps in a row, ending at the last step fed
  int64_t streak_first_ = 0;  // the first iteration of that streak
  int64_t rollbacks_ = 0;
};

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_SPIKE_H_
