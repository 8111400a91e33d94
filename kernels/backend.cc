#include "kernels/backend.h"

#include <algorithm>
#include <utility>

namespace lattice::kernels {

Arena::Arena(Backend& backend, int64_t capacity_bytes) : backend_(backend) {
  if (capacity_bytes > 0) NewBlock(capacity_bytes);
}

void Arena::NewBlock(int64_t bytes) {
  blocks_.push_back(backend_.AllocateStorage(bytes));
  offset_ = 0;
  capacity_ += bytes;
}

void Arena::Reserve(int64_t bytes) {
  if (!blocks_.empty() && static_cast<int64_t>(blocks_.back()->bytes()) - offset_ >= bytes) {
    return;
  }
  NewBlock(std::max(bytes, kAlignBytes));
}

Tensor Arena::Allocate(Shape shape, DType dtype) {
  const int64_t bytes = AlignedBytes(NumElements(shape), dtype);
  Reserve(bytes);
  Tensor t(blocks_.back(), static_cast<size_t>(offset_), std::move(shape), dtype);
  offset_ += bytes;
  used_ += bytes;
  ++allocations_;
  return t;
}

}  // namespace lattice::kernels
