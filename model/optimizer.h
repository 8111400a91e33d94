// AdamW over a ParameterSet (decoupled weight decay, none on norms and biases), the learning-rate
// schedule (linear warmup, then cosine / linear / constant decay to min_lr) and global-norm
// gradient clipping.
#ifndef LATTICE_MODEL_OPTIMIZER_H_
#define LATTICE_MODEL_OPTIMIZER_H_

#include <cstdint>

#include "model/parameters.h"
#include "runtime/config.h"
#include "runtime/tensor.h"

namespace lattice {

// Megatron's schedule: lr rises linearly over warmup_steps (step 1 gets lr/warmup), then
// decays from lr to min_lr over the remaining steps. `step` is 1-based.
float LearningRate(const TrainConfig& cfg, int64_t step);

class AdamW {
 public:
  AdamW(const ParameterSet& params, const TrainConfig& cfg);
  // One update with the given learning rate; grads are multiplied by grad_scale first (the
  // clipping coefficient). Increments the step counter.
  void Step(const ParameterSet& params, float lr, float grad_scale);
  int64_t step() const { return step_; }
  void set_step(int64_t s) { step_ = s; }
  const Tensor& m() const { return m_; }  // (numel,) first moments, same layout as the params
  const Tensor& v() const { return v_; }  // (numel,) second moments
  int64_t state_bytes() const { return m_.nbytes() + v_.nbytes(); }

 private:
  TrainConfig cfg_;
  Tensor m_, v_;
  int64_t step_ = 0;
};

// sqrt of the sum of squares of all gradients.
double GlobalGradNorm(const ParameterSet& params);

}  // namespace lattice

#endif  // LATTICE_MODEL_OPTIMIZER_H_
