// Mixed-precision building blocks: bf16/fp16 storage, the AdamW step on fp32 master weights
// that also writes their compute-dtype copy, and the fp16 gradient unscale with its inf/NaN
// check (Megatron's fp16 optimizer: the step is skipped when any gradient is not finite).
//
// The CPU backend stores bf16 and fp16 and computes in fp32, as a GPU's tensor cores do, so CI
// sees every rounding a GPU run makes. Every conversion here is the one of runtime/dtype.h
// (FloatToBf16 / FloatToF16 and back): round to nearest, ties to even; NaN stays NaN (bf16
// keeps the sign and the top payload bits and sets the quiet bit, fp16 gives the sign and the
// canonical quiet NaN, as PyTorch's c10::Half does); finite values beyond a format's range
// become +-inf (fp16 from |x| >= 65520, the midpoint between 65504 and 2^16); fp16 subnormals
// are kept, not flushed. bf16 has fp32's exponent range: a finite fp32 overflows to inf only
// from the midpoint between bf16's largest value and 2^128 (bits 0x7f7f8000) up.
#ifndef LATTICE_KERNELS_MIXED_PRECISION_H_
#define LATTICE_KERNELS_MIXED_PRECISION_H_

#include <cstdint>

#include "kernels/adamw.h"
#include "runtime/dtype.h"

namespace lattice::kernels::cpu {

// True for the 16-bit float formats the kernels below store (kBF16, kF16).
bool IsHalfFloat(DType dtype);

// dst (n) = src (n) rounded to `dtype` (kBF16 or kF16), as its 16-bit patterns.
void CastF32ToHalf(uint16_t* dst, const float* src, int64_t n, DType dtype);

// dst (n) = the values of src (n), 16-bit patterns of `dtype` (kBF16 or kF16). Exact: every
// bf16 and fp16 value is an fp32 value.
void CastHalfToF32(float* dst, const uint16_t* src, int64_t n, DType dtype);

// dst (n elements of dst_dtype) = src (n elements of src_dtype), both kF32, kBF16 or kF16.
// Same dtype: a copy. Between bf16 and fp16 the value goes through fp32 (exact) and is rounded
// once, to the destination. The dtype-tagged form the backend's cast op calls.
void Cast(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n);

// x (n) = the `dtype` value (kBF16 or kF16) nearest to x, as fp32: what a store to that dtype
// and a load back do. Tests and the CPU backend use it to emulate a GPU's storage rounding on
// fp32 buffers.
void RoundThrough(float* x, int64_t n, DType dtype);

// kernels/adamw.h's AdamWUpdate on the fp32 master weights `master` and moments m, v (n each),
// then compute_copy (n, 16-bit patterns of compute_dtype: kBF16 or kF16) = the updated master
// rounded to compute_dtype. master, m and v come out bit for bit as AdamWUpdate leaves them,
// at every SIMD level: the same loop runs on cache-sized blocks, each block cast while it is
// still in cache (one pass over memory instead of two).
void AdamWUpdateWithCopy(float* master, uint16_t* compute_copy, DType compute_dtype,
                         const float* grad, float* m, float* v, int64_t n, const AdamWArgs& args);

// grad (n) *= inv_scale; returns true when any element is NaN or +-inf afterwards (found_inf),
// i.e. when an input was not finite or the product overflowed (an inv_scale > 1 can do that).
// The unscale of fp16 loss scaling (torch's _amp_foreach_non_finite_check_and_unscale_, which
// tests the inputs; testing the products also catches that overflow). The gradient is
// unscaled either way: a caller that skips the step zeroes it for the next one.
bool UnscaleAndFindInf(float* grad, int64_t n, float inv_scale);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_MIXED_PRECISION_H_
