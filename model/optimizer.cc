#include "model/optimizer.h"

#include <cmath>

#include "kernels/adamw.h"
#include "kernels/grad_norm.h"

namespace lattice {

float LearningRate(const TrainConfig& cfg, int64_t step) {
  if (cfg.warmup_steps > 0 && step <= cfg.warmup_steps) {
    return cfg.lr * static_cast<float>(step) / static_cast<float>(cfg.warmup_steps);
  }
  if (cfg.lr_decay == LrDecay::kConstant) return cfg.lr;
  const int64_t decay_steps = cfg.steps - cfg.warmup_steps;
  if (decay_steps <= 0) return cfg.lr;
  double ratio = static_cast<double>(step - cfg.warmup_steps) / static_cast<double>(decay_steps);
  ratio = std::min(1.0, std::max(0.0, ratio));
  double coeff = cfg.lr_decay == LrDecay::kCosine ? 0.5 * (1.0 + std::cos(M_PI * ratio))
                                                  : 1.0 - ratio;
  return static_cast<float>(cfg.min_lr + coeff * (cfg.lr - cfg.min_lr));
}

AdamW::AdamW(const ParameterSet& params, const TrainConfig& cfg) : cfg_(cfg) {
  m_ = Tensor::Zeros({params.numel()}, DType::kF32);
  v_ = Tensor::Zeros({params.numel()}, DType::kF32);
}

void AdamW::Step(const ParameterSet& params, float lr, float grad_scale) {
  ++step_;
  kernels::cpu::AdamWArgs args;
  args.lr = lr;
  args.beta1 = cfg_.beta1;
  args.beta2 = cfg_.beta2;
  args.eps = cfg_.adam_eps;
  args.step = step_;
  args.grad_scale = grad_scale;
  for (const Parameter& p : params.params()) {
    args.weight_decay = p.weight_decay ? cfg_.weight_decay : 0.0f;
    const int64_t n = p.value.numel();
    kernels::cpu::AdamWUpdate(p.value.f32(), p.grad.f32(), m_.f32() + p.offset,
                              v_.f32() + p.offset, n, args);
  }
}

double GlobalGradNorm(const ParameterSet& params) {
  const Tensor& g = params.flat_grads();
  return std::sqrt(kernels::cpu::SumOfSquares(g.f32(), g.numel()));
}

}  // namespace lattice
