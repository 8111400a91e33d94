#include "runtime/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lattice {

std::string Device::ToString() const {
  return type == DeviceType::kCpu ? "cpu" : absl::StrCat("cuda:", index);
}

CpuStorage::CpuStorage(size_t bytes) : bytes_(bytes) {
  const size_t rounded = ((bytes + 63) / 64) * 64;
  data_ = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (data_ == nullptr) throw std::bad_alloc();
  std::memset(data_, 0, rounded == 0 ? 64 : rounded);
}

CpuStorage::~CpuStorage() { std::free(data_); }

std::string ShapeToString(const Shape& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

int64_t NumElements(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Tensor Tensor::Zeros(Shape shape, DType dtype, Device device) {
  LATTICE_CHECK_MSG(device.type == DeviceType::kCpu, "CUDA storage is created by the CUDA backend");
  for (int64_t d : shape) LATTICE_CHECK(d >= 0);
  auto storage = std::make_shared<CpuStorage>(NumElements(shape) * DTypeSize(dtype));
  return Tensor(std::move(storage), 0, std::move(shape), dtype);
}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype)
    : storage_(std::move(storage)), byte_offset_(byte_offset), shape_(std::move(shape)), dtype_(dtype) {
  LATTICE_CHECK(byte_offset_ + nbytes() <= storage_->bytes());
}

Tensor Tensor::Slice(int64_t begin, int64_t end) const {
  LATTICE_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0]);
  Shape s = shape_;
  s[0] = end - begin;
  const int64_t row = shape_[0] == 0 ? 0 : numel() / shape_[0];
  return Tensor(storage_, byte_offset_ + begin * row * DTypeSize(dtype_), std::move(s), dtype_);
}

Tensor Tensor::View(Shape shape) const {
  LATTICE_CHECK_MSG(NumElements(shape) == numel(),
                    absl::StrCat(ShapeToString(shape_), " -> ", ShapeToString(shape)));
  return Tensor(storage_, byte_offset_, std::move(shape), dtype_);
}

Tensor Tensor::Clone() const {
  Tensor t = Zeros(shape_, dtype_, device());
  std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

void Tensor::Fill(float value) const {
  float* p = f32();
  for (int64_t i = 0, n = numel(); i < n; ++i) p[i] = value;
}

void Tensor::SetZero() const { std::memset(raw(), 0, nbytes()); }

std::string Tensor::DebugString() const {
  return absl::StrCat("Tensor(", DTypeName(dtype_), ShapeToString(shape_), " on ",
                      device().ToString(), ")");
}

namespace {
double LoadAsDouble(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kBF16: return Bf16ToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::kF16: return F16ToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::kI32: return static_cast<const int32_t*>(p)[i];
    case DType::kU16: return static_cast<const uint16_t*>(p)[i];
    case DType::kU32: return static_cast<const uint32_t*>(p)[i];
  }
  return 0;
}
void StoreDouble(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::kF32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::kBF16: static_cast<uint16_t*>(p)[i] = FloatToBf16(static_cast<float>(v)); break;
    case DType::kF16: static_cast<uint16_t*>(p)[i] = FloatToF16(static_cast<float>(v)); break;
    case DType::kI32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::kU16: static_cast<uint16_t*>(p)[i] = static_cast<uint16_t>(v); break;
    case DType::kU32: static_cast<uint32_t*>(p)[i] = static_cast<uint32_t>(v); break;
  }
}
}  // namespace

absl::Status ConvertInto(const Tensor& src, const Tensor& dst) {
  if (src.numel() != dst.numel()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot convert ", src.DebugString(), " into ",
                                                   dst.DebugString(), ": element counts differ"));
  }
  if (src.dtype() == dst.dtype()) {
    std::memcpy(dst.raw(), src.raw(), src.nbytes());
    return absl::OkStatus();
  }
  for (int64_t i = 0, n = src.numel(); i < n; ++i) {
    StoreDouble(dst.raw(), dst.dtype(), i, LoadAsDouble(src.raw(), src.dtype(), i));
  }
  return absl::OkStatus();
}

}  // namespace lattice
