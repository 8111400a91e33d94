// A dense, contiguous, row-major tensor: shape, dtype, device and shared storage.
//
// Views (Slice along dim 0, View/Reshape) share storage and never copy. The device field is
// carried everywhere so that the CUDA backend can plug in storage of its own; today only the
// CPU allocates.
#ifndef LATTICE_RUNTIME_TENSOR_H_
#define LATTICE_RUNTIME_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/dtype.h"
#include "runtime/status.h"

namespace lattice {

enum class DeviceType : uint8_t { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;
  static Device Cpu() { return {}; }
  bool operator==(const Device&) const = default;
  std::string ToString() const;
};

// Owns (or borrows) a block of device memory.
class Tensor;

class Storage {
 public:
  virtual ~Storage() = default;
  virtual void* data() = 0;
  virtual size_t bytes() const = 0;
  virtual Device device() const = 0;
};

// 64-byte aligned host memory, zero-initialised.
class CpuStorage final : public Storage {
 public:
  explicit CpuStorage(size_t bytes);
  ~CpuStorage() override;
  CpuStorage(const CpuStorage&) = delete;
  CpuStorage& operator=(const CpuStorage&) = delete;
  void* data() override { return data_; }
  size_t bytes() const override { return bytes_; }
  Device device() const override { return Device::Cpu(); }
  // CpuStorage blocks created so far in this process (every Tensor::Zeros and every CPU
  // backend allocation): a test asserts that a steady-state training step adds none.
  static int64_t allocations();

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

using Shape = std::vector<int64_t>;
std::string ShapeToString(const Shape& s);

// The number of elements of a shape, for shapes that come from outside lattice (files,
// configs): InvalidArgument naming the shape when a dim is negative or the product of its
// non-zero dims does not fit int64 (so every partial product fits too, in any order).
absl::StatusOr<int64_t> CheckedNumElements(const Shape& s);
// Bytes a contiguous tensor of this shape and dtype needs; InvalidArgument when that does not
// fit int64 (sizes are carried as int64 and size_t, so the smaller range is the limit).
absl::StatusOr<int64_t> CheckedNumBytes(const Shape& s, DType dtype);
// The same for shapes lattice built itself: a negative dim or an overflowing product is a bug
// (or a size that should have been validated earlier), so it fails a CHECK naming the shape.
int64_t NumElements(const Shape& s);

// Index of the first NaN or +-Inf element of a float tensor (f32, bf16, f16) in row-major
// order, or -1 when all are finite. Integer tensors are always finite (-1).
int64_t FirstNonFinite(const Tensor& t);

class Tensor {
 public:
  Tensor() = default;

  // Allocates a zero-filled tensor. The shape's byte count must fit (CheckedNumBytes) or this
  // fails a CHECK: callers with sizes from outside check them first. An allocation the host
  // cannot satisfy throws std::bad_alloc.
  static Tensor Zeros(Shape shape, DType dtype, Device device = Device::Cpu());
  // Wraps existing storage at a byte offset.
  Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i < 0 ? shape_.size() + i : i]; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return NumElements(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::Cpu(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }

  void* raw() const { return static_cast<char*>(storage_->data()) + byte_offset_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
  }
  // Typed accessor that checks the element type matches (an invariant, not user input).
  float* f32() const {
    LATTICE_CHECK(dtype_ == DType::kF32);
    return data<float>();
  }
  int32_t* i32() const {
    LATTICE_CHECK(dtype_ == DType::kI32);
    return data<int32_t>();
  }

  // Rows [begin, end) of the leading dimension, sharing storage.
  Tensor Slice(int64_t begin, int64_t end) const;
  // Same storage, new shape with the same number of elements.
  Tensor View(Shape shape) const;
  // A deep copy on the same device.
  Tensor Clone() const;
  void Fill(float value) const;  // f32 only
  void SetZero() const;

  std::string DebugString() const;

 private:
  std::shared_ptr<Storage> storage_;
  size_t byte_offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::kF32;
};

// Copies src into dst converting element types (f32/bf16/f16 and the integer types; floats
// into integers truncate). InvalidArgument naming the element when a value does not fit an
// integer dst (NaN, or outside its range); dst is then partly written.
absl::Status ConvertInto(const Tensor& src, const Tensor& dst);

}  // namespace lattice

#endif  // LATTICE_RUNTIME_TENSOR_H_
