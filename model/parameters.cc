#include "model/parameters.h"

namespace lattice {

int64_t Parameter::local_cols() const {
  int64_t c = 1;
  for (size_t i = 1; i < shape.size(); ++i) c *= shape[i];
  return c;
}

int64_t Parameter::global_cols() const {
  int64_t c = 1;
  for (size_t i = 1; i < sharding.global_shape.size(); ++i) c *= sharding.global_shape[i];
  return c;
}

int64_t Parameter::GlobalIndex(int64_t i) const {
  const int64_t lc = local_cols();
  const int64_t row = i / lc, col = i % lc;
  for (const RowSegment& s : sharding.segments) {
    if (row >= s.local_begin && row < s.local_begin + s.count) {
      return (s.global_begin + row - s.local_begin) * global_cols() + sharding.col_begin + col;
    }
  }
  LATTICE_CHECK_MSG(false, name);
  return -1;
}

void ParameterSet::Declare(std::string name, Shape shape, bool weight_decay, ParamInit init,
                           float init_std) {
  Sharding s;
  s.global_shape = shape;
  DeclareSharded(std::move(name), std::move(shape), std::move(s), weight_decay, init, init_std);
}

void ParameterSet::DeclareSharded(std::string name, Shape shape, Sharding sharding,
                                  bool weight_decay, ParamInit init, float init_std) {
  LATTICE_CHECK_MSG(!values_.defined(), "Declare after Allocate");
  LATTICE_CHECK_MSG(!index_.contains(name), name);
  Parameter p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.offset = total_;
  p.weight_decay = weight_decay;
  p.init = init;
  p.init_std = init_std;
  if (sharding.segments.empty()) {
    const int64_t rows = p.shape.empty() ? 1 : p.shape[0];
    sharding.segments.push_back(RowSegment{0, 0, rows, true});
  }
  int64_t covered = 0;
  for (const RowSegment& seg : sharding.segments) {
    LATTICE_CHECK_MSG(seg.local_begin == covered, p.name);
    covered += seg.count;
  }
  LATTICE_CHECK_MSG(covered == p.local_rows(), p.name);
  p.sharding = std::move(sharding);
  total_ += NumElements(p.shape);
  index_[p.name] = params_.size();
  params_.push_back(std::move(p));
}

void ParameterSet::Allocate(kernels::Backend& backend) {
  backend_ = &backend;
  const int64_t bytes = total_ * static_cast<int64_t>(sizeof(float));
  values_ = Tensor(backend.AllocateStorage(bytes), 0, {total_}, DType::kF32);
  grads_ = Tensor(backend.AllocateStorage(bytes), 0, {total_}, DType::kF32);
  for (Parameter& p : params_) {
    const int64_t n = NumElements(p.shape);
    p.value = values_.Slice(p.offset, p.offset + n).View(p.shape);
    p.grad = grads_.Slice(p.offset, p.offset + n).View(p.shape);
  }
}

void ParameterSet::Initialize(uint64_t seed) {
  for (const Parameter& p : params_) {
    const kernels::TensorView v = kernels::ViewOf(p.value);
    switch (p.init) {
      case ParamInit::kZeros:
        backend_->Zero(v);
        break;
      case ParamInit::kOnes:
        backend_->Fill(v, 1.0f);
        break;
      case ParamInit::kNormal: {
        // Element (r, c) of a segment is global element (global_begin + r) * gc + col_begin + c.
        const int64_t lc = p.local_cols(), gc = p.global_cols();
        for (const RowSegment& seg : p.sharding.segments) {
          backend_->FillNormal(v.Sub(seg.local_begin * lc), seed, p.name, seg.count, lc, lc,
                               seg.global_begin * gc + p.sharding.col_begin, gc, p.init_std);
        }
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
