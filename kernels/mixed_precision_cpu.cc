#include "kernels/mixed_precision.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/math_cpu.h"
#include "kernels/simd.h"
#include "runtime/profiler.h"
#include "runtime/status.h"

// The element conversions are runtime/dtype.h's, the one definition of lattice's rounding;
// these loops only spread them over the OpenMP team. bf16's conversion is inline integer
// arithmetic, which the loops vectorise; fp16's is a call per element (its subnormal and
// overflow cases branch), which they do not.
namespace lattice::kernels::cpu {
namespace {

void CheckHalf(DType dtype, const char* what) {
  LATTICE_CHECK_MSG(IsHalfFloat(dtype), absl::StrCat(what, ": dtype ", DTypeName(dtype),
                                                     " is not a 16-bit float (bf16, f16)"));
}

void ToBf16(uint16_t* dst, const float* src, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) dst[i] = FloatToBf16(src[i]);
}

void ToF16(uint16_t* dst, const float* src, int64_t n) {
#pragma omp parallel for schedule(static) if (internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) dst[i] = FloatToF16(src[i]);
}

// The serial form, for AdamWUpdateWithCopy's blocks (each already on its own thread).
void ToHalfSerial(uint16_t* dst, const float* src, int64_t n, DType dtype) {
  if (dtype == DType::kBF16) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = FloatToBf16(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = FloatToF16(src[i]);
  }
}

// AdamWUpdateWithCopy's block: 8192 elements are 144 KB of master, gradient, moments and
// copy, so the cast reads the master back from L2 (256 KB or more per core on x86 since 2008).
// It must stay below internal::kParallelMinWork so that the AdamW loop it calls runs serially
// on the block's thread (its parallel region's `if` is false) instead of splitting again.
constexpr int64_t kAdamWBlock = 8192;
static_assert(kAdamWBlock < internal::kParallelMinWork);

}  // namespace

bool IsHalfFloat(DType dtype) { return dtype == DType::kBF16 || dtype == DType::kF16; }

void CastF32ToHalf(uint16_t* dst, const float* src, int64_t n, DType dtype) {
  profiler::Scope scope("cast.to_half", profiler::Category::kElementwise, 0, 6.0 * n);
  CheckHalf(dtype, "CastF32ToHalf");
  LATTICE_CHECK(n >= 0);
  if (dtype == DType::kBF16) {
    ToBf16(dst, src, n);
  } else {
    ToF16(dst, src, n);
  }
}

void CastHalfToF32(float* dst, const uint16_t* src, int64_t n, DType dtype) {
  profiler::Scope scope("cast.from_half", profiler::Category::kElementwise, 0, 6.0 * n);
  CheckHalf(dtype, "CastHalfToF32");
  LATTICE_CHECK(n >= 0);
  if (dtype == DType::kBF16) {
#pragma omp parallel for simd schedule(static) if (parallel : internal::Parallel(n))
    for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(src[i]);
  } else {
#pragma omp parallel for schedule(static) if (internal::Parallel(n))
    for (int64_t i = 0; i < n; ++i) dst[i] = F16ToFloat(src[i]);
  }
}

void Cast(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) {
  LATTICE_CHECK(n >= 0);
  const auto is_float = [](DType t) { return t == DType::kF32 || IsHalfFloat(t); };
  LATTICE_CHECK_MSG(is_float(dst_dtype) && is_float(src_dtype),
                    absl::StrCat("Cast ", DTypeName(src_dtype), " -> ", DTypeName(dst_dtype),
                                 ": only f32, bf16 and f16 are cast here"));
  if (dst_dtype == src_dtype) {
    profiler::Scope scope("cast.copy", profiler::Category::kElementwise, 0,
                          2.0 * n * DTypeSize(dst_dtype));
    std::memcpy(dst, src, static_cast<size_t>(n) * DTypeSize(dst_dtype));
    return;
  }
  if (src_dtype == DType::kF32) {
    CastF32ToHalf(static_cast<uint16_t*>(dst), static_cast<const float*>(src), n, dst_dtype);
    return;
  }
  if (dst_dtype == DType::kF32) {
    CastHalfToF32(static_cast<float*>(dst), static_cast<const uint16_t*>(src), n, src_dtype);
    return;
  }
  // bf16 <-> f16: the source value is exact in fp32, so rounding once to the destination is
  // the correctly rounded conversion.
  profiler::Scope scope("cast.half_to_half", profiler::Category::kElementwise, 0, 4.0 * n);
  const uint16_t* s = static_cast<const uint16_t*>(src);
  uint16_t* d = static_cast<uint16_t*>(dst);
  const bool from_bf16 = src_dtype == DType::kBF16;
#pragma omp parallel for schedule(static) if (internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) {
    d[i] = from_bf16 ? FloatToF16(Bf16ToFloat(s[i])) : FloatToBf16(F16ToFloat(s[i]));
  }
}

void RoundThrough(float* x, int64_t n, DType dtype) {
  profiler::Scope scope("cast.round_through", profiler::Category::kElementwise, 0, 8.0 * n);
  CheckHalf(dtype, "RoundThrough");
  LATTICE_CHECK(n >= 0);
  if (dtype == DType::kBF16) {
#pragma omp parallel for simd schedule(static) if (parallel : internal::Parallel(n))
    for (int64_t i = 0; i < n; ++i) x[i] = Bf16ToFloat(FloatToBf16(x[i]));
  } else {
#pragma omp parallel for schedule(static) if (internal::Parallel(n))
    for (int64_t i = 0; i < n; ++i) x[i] = F16ToFloat(FloatToF16(x[i]));
  }
}

void AdamWUpdateWithCopy(float* master, uint16_t* compute_copy, DType compute_dtype,
                         const float* grad, float* m, float* v, int64_t n,
                         const AdamWArgs& args) {
  // AdamWUpdate's 28 bytes per element plus the 2-byte copy written.
  profiler::Scope scope("adamw.with_copy", profiler::Category::kOptimizer, 0, 30.0 * n);
  CheckHalf(compute_dtype, "AdamWUpdateWithCopy");
  LATTICE_CHECK(n >= 0);
  LATTICE_CHECK_MSG(args.step >= 1, "AdamW step is 1-based (bias correction divides by 1-b^t)");
  // The very loop AdamWUpdate runs (kernels/simd/ops.inl, the active SIMD level), on slices:
  // it is elementwise with scalars derived from args alone, so each element's arithmetic does
  // not depend on where a slice starts, and the fp32 results are AdamWUpdate's bit for bit
  // (tests/kernels/mixed_precision_test.cc checks it at every level).
  const auto adamw = internal::Simd().adamw;
  const int64_t blocks = (n + kAdamWBlock - 1) / kAdamWBlock;
#pragma omp parallel for schedule(static) if (internal::Parallel(n))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kAdamWBlock;
    const int64_t len = std::min(kAdamWBlock, n - begin);
    adamw(master + begin, grad + begin, m + begin, v + begin, len, args);
    ToHalfSerial(compute_copy + begin, master + begin, len, compute_dtype);
  }
}

bool UnscaleAndFindInf(float* grad, int64_t n, float inv_scale) {
  profiler::Scope scope("grad.unscale", profiler::Category::kOptimizer, n, 8.0 * n);
  LATTICE_CHECK(n >= 0);
  // An all-ones exponent is NaN or +-inf in IEEE fp32; testing the bits (as FirstNonFinite in
  // runtime/tensor.cc does) stays right under any finite-math compiler flag, and vectorises.
  uint32_t found = 0;
#pragma omp parallel for simd schedule(static) reduction(| : found) \
    if (parallel : internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * inv_scale;
    grad[i] = g;
    found |= (std::bit_cast<uint32_t>(g) & 0x7f800000u) == 0x7f800000u ? 1u : 0u;
  }
  return found != 0;
}

}  // namespace lattice::kernels::cpu
