#include "model/parameters.h"

#include "runtime/rng.h"

namespace lattice {

void ParameterSet::Declare(std::string name, Shape shape, bool weight_decay, ParamInit init,
                           float init_std) {
  LATTICE_CHECK_MSG(!values_.defined(), "Declare after Allocate");
  LATTICE_CHECK_MSG(!index_.contains(name), name);
  Parameter p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.offset = total_;
  p.weight_decay = weight_decay;
  p.init = init;
  p.init_std = init_std;
  total_ += NumElements(p.shape);
  index_[p.name] = params_.size();
  params_.push_back(std::move(p));
}

void ParameterSet::Allocate() {
  values_ = Tensor::Zeros({total_}, DType::kF32);
  grads_ = Tensor::Zeros({total_}, DType::kF32);
  for (Parameter& p : params_) {
    const int64_t n = NumElements(p.shape);
    p.value = values_.Slice(p.offset, p.offset + n).View(p.shape);
    p.grad = grads_.Slice(p.offset, p.offset + n).View(p.shape);
  }
}

void ParameterSet::Initialize(uint64_t seed) {
  for (const Parameter& p : params_) {
    float* v = p.value.f32();
    const int64_t n = p.value.numel();
    switch (p.init) {
      case ParamInit::kZeros:
        p.value.SetZero();
        break;
      case ParamInit::kOnes:
        p.value.Fill(1.0f);
        break;
      case ParamInit::kNormal: {
        CounterRng rng(seed, p.name);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i) v[i] = p.init_std * rng.Normal(static_cast<uint64_t>(i));
        break;
      }
    }
  }
}

const Parameter* ParameterSet::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &params_[it->second];
}

const Parameter& ParameterSet::Get(const std::string& name) const {
  const Parameter* p = Find(name);
  LATTICE_CHECK_MSG(p != nullptr, name);
  return *p;
}

}  // namespace lattice
