#include "model/optimizer.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "runtime/status.h"

namespace lattice {

float LearningRate(const TrainConfig& cfg, int64_t iteration) {
  if (cfg.warmup_steps > 0 && iteration <= cfg.warmup_steps) {
    return cfg.lr * static_cast<float>(iteration) / static_cast<float>(cfg.warmup_steps);
  }
  if (cfg.lr_decay == LrDecay::kConstant) return cfg.lr;
  const int64_t decay_steps = cfg.steps - cfg.warmup_steps;
  if (decay_steps <= 0) return cfg.lr;
  double ratio =
      static_cast<double>(iteration - cfg.warmup_steps) / static_cast<double>(decay_steps);
  ratio = std::min(1.0, std::max(0.0, ratio));
  double coeff = cfg.lr_decay == LrDecay::kCosine ? 0.5 * (1.0 + std::cos(M_PI * ratio))
                                                  : 1.0 - ratio;
  return static_cast<float>(cfg.min_lr + coeff * (cfg.lr - cfg.min_lr));
}

std::vector<OptimizerSegment> WholeModelSegments(const ParameterSet& params) {
  std::vector<OptimizerSegment> out;
  for (const Parameter& p : params.params()) {
    const int64_t n = p.value.numel();
    if (n == 0) continue;
    out.push_back(OptimizerSegment{p.offset, p.offset + n, p.offset, p.weight_decay});
  }
  return out;
}

AdamW::AdamW(const TrainConfig& cfg, std::vector<OptimizerSegment> segments, int64_t state_numel,
             kernels::Backend& backend)
    : cfg_(cfg), be_(&backend), segments_(std::move(segments)) {
  for (const OptimizerSegment& s : segments_) {
    LATTICE_CHECK_MSG(s.begin <= s.end && s.state_offset >= 0 &&
                          s.state_offset + s.numel() <= state_numel,
                      "optimizer segment outside its state");
  }
  const int64_t bytes = state_numel * static_cast<int64_t>(sizeof(float));
  m_ = Tensor(be_->AllocateStorage(bytes), 0, {state_numel}, DType::kF32);
  v_ = Tensor(be_->AllocateStorage(bytes), 0, {state_numel}, DType::kF32);
  LATTICE_CHECK_MSG(cfg_.precision == DType::kF32 || cfg_.precision == DType::kBF16 ||
                        cfg_.precision == DType::kF16,
                    "train.precision must be fp32, bf16 or fp16");
  if (cfg_.precision != DType::kF32) {
    master_ = Tensor(be_->AllocateStorage(bytes), 0, {state_numel}, DType::kF32);
  }
}

void AdamW::InitMastersFrom(float* values, int64_t numel) {
  if (!master_.defined()) return;
  const kernels::TensorView master = kernels::ViewOf(master_);
  for (const OptimizerSegment& s : segments_) {
    be_->Copy(master.Sub(s.state_offset, s.numel()), kernels::F32View(values + s.begin, s.numel()));
  }
  be_->RoundThrough(kernels::F32View(values, numel), cfg_.precision);
}

void AdamW::WriteComputeCopy(float* values) {
  if (!master_.defined()) return;
  const kernels::TensorView master = kernels::ViewOf(master_);
  for (const OptimizerSegment& s : segments_) {
    const kernels::TensorView out = kernels::F32View(values + s.begin, s.numel());
    be_->Copy(out, master.Sub(s.state_offset, s.numel()));
    be_->RoundThrough(out, cfg_.precision);
  }
}

AdamW::AdamW(const ParameterSet& params, const TrainConfig& cfg, kernels::Backend& backend)
    : AdamW(cfg, WholeModelSegments(params), params.numel(), backend) {}

void AdamW::UpdateSegments(size_t first, size_t last, float* values, const float* grads,
                           float lr, float grad_scale) {
  LATTICE_CHECK_MSG(step_ > 0, "UpdateSegments before BeginStep");
  kernels::AdamWArgs args;
  args.lr = lr;
  args.beta1 = cfg_.beta1;
  args.beta2 = cfg_.beta2;
  args.eps = cfg_.adam_eps;
  args.step = step_;
  args.grad_scale = grad_scale;
  const kernels::TensorView m = kernels::ViewOf(m_), v = kernels::ViewOf(v_);
  for (size_t i = first; i < last; ++i) {
    const OptimizerSegment& s = segments_[i];
    const int64_t n = s.numel();
    args.weight_decay = s.weight_decay ? cfg_.weight_decay : 0.0f;
    const kernels::TensorView out = kernels::F32View(values + s.begin, n);
    if (!master_.defined()) {
      be_->AdamWUpdate(out, kernels::F32View(grads + s.begin, n), m.Sub(s.state_offset, n),
                       v.Sub(s.state_offset, n), n, args);
      continue;
    }
    // Mixed precision: the fp32 master moves; the parameters are its rounded copy.
    const kernels::TensorView master = kernels::ViewOf(master_).Sub(s.state_offset, n);
    be_->AdamWUpdate(master, kernels::F32View(grads + s.begin, n), m.Sub(s.state_offset, n),
                     v.Sub(s.state_offset, n), n, args);
    be_->Copy(out, master);
    be_->RoundThrough(out, cfg_.precision);
  }
}

void AdamW::Step(const ParameterSet& params, float lr, float grad_scale) {
  BeginStep();
  UpdateSegments(0, segments_.size(), params.flat_values().f32(), params.flat_grads().f32(), lr,
                 grad_scale);
}

double GlobalGradNorm(const ParameterSet& params) {
  kernels::DeviceScalars acc = params.backend().AllocateScalars(1);
  return GlobalGradNorm(params, acc);
}

double GlobalGradNorm(const ParameterSet& params, kernels::DeviceScalars& acc) {
  kernels::Backend& be = params.backend();
  be.ZeroScalars(acc);
  be.AccumulateSumOfSquares(acc, 0, kernels::ViewOf(params.flat_grads()));
  double sum = 0;
  be.ReadScalars(acc, &sum);
  return std::sqrt(sum);
}

}  // namespace lattice
