// Dynamic loss scaling for fp16 training, with Megatron-LM's semantics (DynamicGradScaler in
// megatron/core/optimizer/grad_scaler.py, the flags --initial-loss-scale, --min-loss-scale,
// --loss-scale-window, --hysteresis; growth and backoff factors 2 and 0.5).
//
// fp16 gradients underflow where bf16's would not (fp16's smallest subnormal is 2^-24), so the
// loss is multiplied by `scale` before the backward and the fp32 gradients by 1/scale after it
// (kernels/mixed_precision.h, UnscaleAndFindInf). A step whose gradients hold a NaN or an inf
// on any rank is skipped on every rank, and the scale follows:
//   found_inf: growth_tracker = 0; hysteresis_tracker -= 1; when it is then <= 0 (from the
//              hysteresis-th overflow on), scale = max(scale * backoff_factor, min_scale);
//   otherwise: growth_tracker += 1; after growth_interval clean steps in a row,
//              scale *= growth_factor and both trackers are reset.
// The hysteresis tracker is NOT reset by clean steps, only by a growth: Megatron's rule, so
// `hysteresis` counts overflows within one growth interval, not consecutive ones.
//
// The scale is fp32 arithmetic, as Megatron's (a float CUDA tensor), so that the sequence of
// scales is Megatron's bit for bit for any factors. Where Megatron differs, this class is
// deliberately safer: a growth that would overflow fp32 to inf is not taken (an infinite scale
// turns every gradient into inf or NaN and every later step would be skipped), the hysteresis
// tracker stops at 0 (Megatron's keeps counting down; only "<= 0" matters), and a growth
// tracker loaded from a run with a longer interval grows at once (">=", not "==").
//
// Every rank holds one scaler and must feed it the same found_inf (the all-reduced flag), so
// the scales stay identical everywhere without communication. The state is training state:
// StateJson/LoadStateJson carry it through checkpoints, so a resumed run continues with the
// same scale and trackers.
#ifndef LATTICE_PARALLEL_LOSS_SCALER_H_
#define LATTICE_PARALLEL_LOSS_SCALER_H_

#include <cstdint>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lattice {

struct LossScalerConfig {
  double initial_scale = 4294967296.0;  // 2^32, Megatron's --initial-loss-scale default
  double min_scale = 1.0;               // --min-loss-scale default
  double growth_factor = 2.0;           // fixed at 2 in Megatron's optimizer setup
  double backoff_factor = 0.5;          // fixed at 0.5 there
  int64_t growth_interval = 1000;       // --loss-scale-window default
  int64_t hysteresis = 2;               // --hysteresis default

  // InvalidArgument naming the field and its value: Megatron's asserts (initial_scale > 0,
  // 0 < min_scale <= initial_scale, growth_factor > 1, 0 < backoff_factor < 1,
  // growth_interval > 0, hysteresis > 0), plus finite scales that fit fp32.
  absl::Status Validate() const;
};

class DynamicLossScaler {
 public:
  // The JSON state's layout version (StateJson's "version").
  static constexpr int kStateVersion = 1;

  // InvalidArgument from config.Validate().
  static absl::StatusOr<DynamicLossScaler> Create(const LossScalerConfig& config);

  // The factor the loss is multiplied by before the backward.
  float scale() const { return scale_; }
  // 1 / scale, rounded once to fp32 from the exact quotient (Megatron computes it in double);
  // exact for the power-of-two scales of the default factors.
  float inv_scale() const;

  // Records one step's overflow check (found_inf: the flag all-reduced over every rank) and
  // moves the scale and trackers as the header comment says. Returns whether the step must be
  // skipped, which is exactly found_inf: an overflowing step is never applied, whatever the
  // hysteresis (that only delays the backoff).
  bool Update(bool found_inf);

  int64_t growth_tracker() const { return growth_tracker_; }
  int64_t hysteresis_tracker() const { return hysteresis_tracker_; }
  const LossScalerConfig& config() const { return config_; }

  // {"version": 1, "scale": s, "growth_tracker": g, "hysteresis_tracker": h}: Megatron's
  // state_dict keys. The scale is written as a double holding the fp32 value exactly.
  nlohmann::json StateJson() const;
  // Restores StateJson's state (the configuration stays this scaler's own). InvalidArgument
  // naming the key for a missing or ill-typed field, another version, a scale that is not a
  // positive finite fp32, or a negative tracker; the scaler is unchanged then.
  absl::Status LoadStateJson(const nlohmann::json& state);

 private:
  explicit DynamicLossScaler(const LossScalerConfig& config);

  LossScalerConfig config_;
  // Megatron keeps the scale and its factors as fp32 tensors; Update's products are fp32 too.
  float min_scale_;
  float growth_factor_;
  float backoff_factor_;
  float scale_;
  int64_t growth_tracker_ = 0;
  int64_t hysteresis_tracker_;
};

}  // namespace lattice

#endif  // LATTICE_PARALLEL_LOSS_SCALER_H_
