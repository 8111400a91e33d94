#include "runtime/tensor.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lattice {

std::string Device::ToString() const {
  return type == DeviceType::kCpu ? "cpu" : absl::StrCat("cuda:", index);
}

namespace {
std::atomic<int64_t> cpu_storage_allocations{0};
}  // namespace

int64_t CpuStorage::allocations() { return cpu_storage_allocations.load(); }

CpuStorage::CpuStorage(size_t bytes) : bytes_(bytes) {
  cpu_storage_allocations.fetch_add(1, std::memory_order_relaxed);
  // Rounding up to the alignment must not wrap around to a tiny block.
  if (bytes > std::numeric_limits<size_t>::max() - 63) throw std::bad_alloc();
  const size_t rounded = ((bytes + 63) / 64) * 64;
  data_ = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (data_ == nullptr) throw std::bad_alloc();
  std::memset(data_, 0, rounded == 0 ? 64 : rounded);
}

CpuStorage::~CpuStorage() { std::free(data_); }

std::string ShapeToString(const Shape& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

absl::StatusOr<int64_t> CheckedNumElements(const Shape& s) {
  // The product of the non-zero dims must fit, not only the full product: code that walks a
  // tensor forms partial products (rows x the rest), and a zero dim must not make
  // [2^32, 2^32, 0] look harmless (the reference safetensors reader refuses it too).
  int64_t nonzero = 1;
  bool has_zero = false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("shape ", ShapeToString(s), ": dim ", i,
                                                     " is negative"));
    }
    if (s[i] == 0) {
      has_zero = true;
    } else if (__builtin_mul_overflow(nonzero, s[i], &nonzero)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shape ", ShapeToString(s), " has more elements than int64 holds (2^63 - 1)"));
    }
  }
  return has_zero ? 0 : nonzero;
}

absl::StatusOr<int64_t> CheckedNumBytes(const Shape& s, DType dtype) {
  LATTICE_ASSIGN_OR_RETURN(const int64_t n, CheckedNumElements(s));
  int64_t bytes;
  if (__builtin_mul_overflow(n, static_cast<int64_t>(DTypeSize(dtype)), &bytes)) {
    return absl::InvalidArgumentError(absl::StrCat("shape ", ShapeToString(s), " of ",
                                                   DTypeName(dtype), " needs more bytes (", n,
                                                   " x ", DTypeSize(dtype),
                                                   ") than int64 holds (2^63 - 1)"));
  }
  return bytes;
}

int64_t NumElements(const Shape& s) {
  // Called in loops (numel()), so the common path builds no status; the same rule as
  // CheckedNumElements, whose message the CHECK reports.
  int64_t nonzero = 1;
  bool has_zero = false;
  bool bad = false;
  for (int64_t d : s) {
    if (d == 0) {
      has_zero = true;
    } else {
      bad = bad || d < 0 || __builtin_mul_overflow(nonzero, d, &nonzero);
    }
  }
  if (bad) {
    LATTICE_CHECK_MSG(false, absl::StrCat(CheckedNumElements(s).status().message(),
                                          " (a size that should have been validated earlier)"));
  }
  return has_zero ? 0 : nonzero;
}

Tensor Tensor::Zeros(Shape shape, DType dtype, Device device) {
  LATTICE_CHECK_MSG(device.type == DeviceType::kCpu, "CUDA storage is created by the CUDA backend");
  const absl::StatusOr<int64_t> bytes = CheckedNumBytes(shape, dtype);
  LATTICE_CHECK_MSG(bytes.ok(), absl::StrCat("Tensor::Zeros: ", bytes.status().message()));
  auto storage = std::make_shared<CpuStorage>(static_cast<size_t>(*bytes));
  return Tensor(std::move(storage), 0, std::move(shape), dtype);
}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype)
    : storage_(std::move(storage)), byte_offset_(byte_offset), shape_(std::move(shape)), dtype_(dtype) {
  const absl::StatusOr<int64_t> bytes = CheckedNumBytes(shape_, dtype_);
  LATTICE_CHECK_MSG(bytes.ok(), absl::StrCat("Tensor: ", bytes.status().message()));
  LATTICE_CHECK_MSG(
      byte_offset_ <= storage_->bytes() &&
          static_cast<uint64_t>(*bytes) <= storage_->bytes() - byte_offset_,
      absl::StrCat(ShapeToString(shape_), " of ", DTypeName(dtype_), " at byte ", byte_offset_,
                   " does not fit the ", storage_->bytes(), "-byte storage"));
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
// A value for a message: integers in full (StrCat would print 2.60578e+09) while doubles hold
// them exactly (below 2^53), others as %g.
std::string ValueText(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.0e15) {
    return absl::StrCat(static_cast<int64_t>(v));
  }
  return absl::StrCat(v);
}

// The values an integer dtype holds, as doubles (exact: all are below 2^53). False for floats.
bool IntegerRange(DType t, double* lo, double* hi) {
  switch (t) {
    case DType::kI32:
      *lo = std::numeric_limits<int32_t>::min();
      *hi = std::numeric_limits<int32_t>::max();
      return true;
    case DType::kU16:
      *lo = 0;
      *hi = std::numeric_limits<uint16_t>::max();
      return true;
    case DType::kU32:
      *lo = 0;
      *hi = std::numeric_limits<uint32_t>::max();
      return true;
    case DType::kF32:
    case DType::kBF16:
    case DType::kF16: return false;
  }
  return false;
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

int64_t FirstNonFinite(const Tensor& t) {
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::kF32: {
      // An all-ones exponent marks NaN and Inf in every IEEE format; testing the bits keeps
      // this right even where a compiler flag lets std::isfinite assume finite math.
      const uint32_t* p = t.data<uint32_t>();
      for (int64_t i = 0; i < n; ++i) {
        if ((p[i] & 0x7f800000u) == 0x7f800000u) return i;
      }
      return -1;
    }
    case DType::kBF16:
    case DType::kF16: {
      // The exponent is 8 bits in bf16 and 5 in f16.
      const uint16_t exponent = t.dtype() == DType::kBF16 ? 0x7f80 : 0x7c00;
      const uint16_t* p = t.data<uint16_t>();
      for (int64_t i = 0; i < n; ++i) {
        if ((p[i] & exponent) == exponent) return i;
      }
      return -1;
    }
    case DType::kI32:
    case DType::kU16:
    case DType::kU32: return -1;
  }
  return -1;
}

absl::Status ConvertInto(const Tensor& src, const Tensor& dst) {
  if (src.numel() != dst.numel()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot convert ", src.DebugString(), " into ",
                                                   dst.DebugString(), ": element counts differ"));
  }
  if (src.dtype() == dst.dtype()) {
    std::memcpy(dst.raw(), src.raw(), src.nbytes());
    return absl::OkStatus();
  }
  // An integer destination holds only the values of its range (a cast of any other value,
  // NaN included, is undefined behaviour): u32 3e9 does not become some int32.
  double lo = 0, hi = 0;
  const bool integer_dst = IntegerRange(dst.dtype(), &lo, &hi);
  for (int64_t i = 0, n = src.numel(); i < n; ++i) {
    const double v = LoadAsDouble(src.raw(), src.dtype(), i);
    if (integer_dst && !(v >= lo && v <= hi)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot convert ", src.DebugString(), " into ", dst.DebugString(), ": element ", i,
          " = ", ValueText(v), " is outside the range of ", DTypeName(dst.dtype())));
    }
    StoreDouble(dst.raw(), dst.dtype(), i, v);
  }
  return absl::OkStatus();
}

}  // namespace lattice
