#include "kernels/mixed_precision.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "runtime/dtype.h"
#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::AdamWArgs;
using kernels::cpu::AdamWUpdate;
using kernels::cpu::AdamWUpdateWithCopy;
using kernels::cpu::Cast;
using kernels::cpu::CastF32ToHalf;
using kernels::cpu::CastHalfToF32;
using kernels::cpu::RoundThrough;
using kernels::cpu::UnscaleAndFindInf;
using testing::ForEachSimdLevel;
using testing::RandomVector;

float FromBits(uint32_t u) { return std::bit_cast<float>(u); }
uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

// The parameters of a binary float format, for the references below (IEEE 754 binary16 and
// bfloat16: 10 and 7 stored mantissa bits, smallest normal exponents -14 and -126).
struct Format {
  DType dtype;
  int mantissa_bits;
  int min_exponent;
  double max_finite;
};
const Format kBf16{DType::kBF16, 7, -126, (2.0 - std::ldexp(1.0, -7)) * std::ldexp(1.0, 127)};
const Format kF16{DType::kF16, 10, -14, 65504.0};

// Round-to-nearest-even of x to the format, by arithmetic rather than bit tricks: the value is
// an integer multiple of the quantum 2^(e - mantissa_bits) of its binade e (the subnormal
// binade below the smallest normal), chosen by nearbyint in double, whose default mode is
// ties-to-even; x / quantum is exact (a power-of-two scaling well inside double's range).
// Results above the largest finite value overflow to inf, as IEEE rounding does (the largest
// finite value has an odd last digit, so its tie with 2^(emax+1) goes up as well).
double ReferenceRound(float x, const Format& f) {
  if (std::isnan(x) || std::isinf(x) || x == 0.0f) return x;
  const double a = std::fabs(static_cast<double>(x));
  int k = 0;
  std::frexp(a, &k);  // a = m 2^k, m in [0.5, 1): a's binade is 2^(k-1)
  const int e = std::max(k - 1, f.min_exponent);
  const double quantum = std::ldexp(1.0, e - f.mantissa_bits);
  double r = std::nearbyint(a / quantum) * quantum;
  if (r > f.max_finite) r = std::numeric_limits<double>::infinity();
  return std::copysign(r, static_cast<double>(x));
}

// The value of a 16-bit pattern, from the format's definition: (-1)^s 2^(e-bias) (1 + m/2^p)
// for normal exponents, 2^(1-bias) m/2^p for e = 0, inf or NaN for an all-ones exponent.
double ReferenceDecode(uint16_t h, const Format& f) {
  const int exponent_bits = 15 - f.mantissa_bits;
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const int sign = h >> 15;
  const int e = (h >> f.mantissa_bits) & ((1 << exponent_bits) - 1);
  const int m = h & ((1 << f.mantissa_bits) - 1);
  double v;
  if (e == (1 << exponent_bits) - 1) {
    v = m == 0 ? std::numeric_limits<double>::infinity()
               : std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), 1 - bias - f.mantissa_bits);
  } else {
    v = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -f.mantissa_bits), e - bias);
  }
  return sign ? -v : v;
}

uint16_t Encode(float x, DType dtype) {
  uint16_t h = 0;
  CastF32ToHalf(&h, &x, 1, dtype);
  return h;
}

float Decode(uint16_t h, DType dtype) {
  float x = 0;
  CastHalfToF32(&x, &h, 1, dtype);
  return x;
}

// Expects RoundThrough (and the cast pair) to give ReferenceRound for every input: bit for
// bit, so that the sign of zero counts; NaN for NaN.
void ExpectRoundsLikeReference(const std::vector<float>& inputs, const Format& f) {
  std::vector<float> rounded = inputs;
  RoundThrough(rounded.data(), static_cast<int64_t>(rounded.size()), f.dtype);
  std::vector<uint16_t> encoded(inputs.size());
  CastF32ToHalf(encoded.data(), inputs.data(), static_cast<int64_t>(inputs.size()), f.dtype);
  std::vector<float> decoded(inputs.size());
  CastHalfToF32(decoded.data(), encoded.data(), static_cast<int64_t>(inputs.size()), f.dtype);
  int failures = 0;
  for (size_t i = 0; i < inputs.size() && failures < 8; ++i) {
    const double want = ReferenceRound(inputs[i], f);
    const bool ok = std::isnan(want)
                        ? std::isnan(rounded[i]) && std::isnan(decoded[i])
                        : Bits(rounded[i]) == Bits(static_cast<float>(want)) &&
                              Bits(decoded[i]) == Bits(rounded[i]);
    if (!ok) {
      ++failures;
      ADD_FAILURE() << DTypeName(f.dtype) << ": input bits 0x" << std::hex << Bits(inputs[i])
                    << " rounds to 0x" << Bits(rounded[i]) << " (cast pair 0x" << Bits(decoded[i])
                    << "), want 0x" << Bits(static_cast<float>(want));
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(MixedPrecisionTest, RoundingMatchesArithmeticReferenceOverFloatBitPatterns) {
  // Every 4093rd fp32 bit pattern (about a million, all exponents, both signs, NaNs, subnormals)
  // plus every pattern in windows around each format's boundaries: the smallest subnormals, the
  // subnormal/normal edge and the overflow threshold, where the bit arithmetic has its cases.
  std::vector<float> inputs;
  for (uint64_t u = 0; u <= 0xffffffffull; u += 4093) inputs.push_back(FromBits(uint32_t(u)));
  const float centres[] = {0.0f,
                           std::ldexp(1.0f, -24),   // fp16's smallest subnormal
                           std::ldexp(1.0f, -14),   // fp16's smallest normal
                           65504.0f, 65520.0f,      // fp16's max finite and overflow threshold
                           std::ldexp(1.0f, -133),  // bf16's smallest subnormal
                           std::ldexp(1.0f, -126),  // bf16's (and fp32's) smallest normal
                           FromBits(0x7f7f8000u),   // bf16's overflow threshold
                           1.0f};
  for (float c : centres) {
    for (int32_t d = -3000; d <= 3000; ++d) {
      for (float sign : {1.0f, -1.0f}) {
        inputs.push_back(sign * FromBits(static_cast<uint32_t>(static_cast<int64_t>(Bits(c)) + d)));
      }
    }
  }
  ExpectRoundsLikeReference(inputs, kBf16);
  ExpectRoundsLikeReference(inputs, kF16);
}

TEST(MixedPrecisionTest, EdgeCasesOfBf16) {
  const DType t = DType::kBF16;
  // Ties to even: bf16 keeps 7 mantissa bits, so 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
  EXPECT_EQ(Encode(1.0f + std::ldexp(1.0f, -8), t), 0x3f80);       // to 1 (even)
  EXPECT_EQ(Encode(1.0f + 3 * std::ldexp(1.0f, -8), t), 0x3f82);   // to 1 + 2^-6 (even)
  EXPECT_EQ(Encode(1.0f + 1.01f * std::ldexp(1.0f, -8), t), 0x3f81);  // past the tie: up
  // Max finite (0x7f7f), the last value below the overflow tie, the tie, fp32's max, inf.
  EXPECT_EQ(Encode(FromBits(0x7f7f0000u), t), 0x7f7f);
  EXPECT_EQ(Encode(FromBits(0x7f7f7fffu), t), 0x7f7f);
  EXPECT_EQ(Encode(FromBits(0x7f7f8000u), t), 0x7f80);
  EXPECT_EQ(Encode(std::numeric_limits<float>::max(), t), 0x7f80);
  EXPECT_EQ(Encode(-std::numeric_limits<float>::max(), t), 0xff80);
  EXPECT_EQ(Encode(std::numeric_limits<float>::infinity(), t), 0x7f80);
  // Subnormals: bf16 has fp32's exponent range, so they round like any other value, in
  // multiples of 2^-133 (bit 16 of the fp32 pattern).
  EXPECT_EQ(Encode(FromBits(0x00010000u), t), 0x0001);
  EXPECT_EQ(Encode(FromBits(0x00008000u), t), 0x0000);  // tie to even: 0
  EXPECT_EQ(Encode(FromBits(0x00018000u), t), 0x0002);  // tie to even: 2
  EXPECT_EQ(Encode(FromBits(0x80008001u), t), 0x8001);  // past the tie, negative
  EXPECT_EQ(Encode(-0.0f, t), 0x8000);
  // NaN: quiet, the sign and the top payload bits kept (PyTorch's rounding does the same).
  EXPECT_EQ(Encode(FromBits(0x7fa12345u), t), 0x7fe1);  // signalling NaN becomes quiet
  EXPECT_EQ(Encode(FromBits(0x7f800001u), t), 0x7fc0);  // payload only in the dropped bits
  EXPECT_EQ(Encode(FromBits(0xffc00001u), t), 0xffc0);
  // A NaN whose rounding increment would carry into the exponent stays NaN, not inf or 0.
  EXPECT_EQ(Encode(FromBits(0x7fffffffu), t), 0x7fff);
  EXPECT_TRUE(std::isnan(Decode(0x7fe1, t)));
  EXPECT_EQ(Bits(Decode(0x7fe1, t)), 0x7fe10000u);  // widening keeps the payload exactly
}

TEST(MixedPrecisionTest, EdgeCasesOfF16) {
  const DType t = DType::kF16;
  // Max finite 65504; the spacing there is 32, so 65520 is the tie with 2^16 and goes to inf.
  EXPECT_EQ(Encode(65504.0f, t), 0x7bff);
  EXPECT_EQ(Encode(std::nextafter(65520.0f, 0.0f), t), 0x7bff);
  EXPECT_EQ(Encode(65520.0f, t), 0x7c00);
  EXPECT_EQ(Encode(-70000.0f, t), 0xfc00);
  EXPECT_EQ(Encode(std::numeric_limits<float>::max(), t), 0x7c00);
  EXPECT_EQ(Encode(-std::numeric_limits<float>::infinity(), t), 0xfc00);
  // Ties to even in the normal range (10 mantissa bits): 1 + 2^-11 is halfway.
  EXPECT_EQ(Encode(1.0f + std::ldexp(1.0f, -11), t), 0x3c00);
  EXPECT_EQ(Encode(1.0f + 3 * std::ldexp(1.0f, -11), t), 0x3c02);
  // Subnormals, multiples of 2^-24, kept rather than flushed; their ties go to even too.
  EXPECT_EQ(Encode(std::ldexp(1.0f, -24), t), 0x0001);
  EXPECT_EQ(Encode(std::ldexp(1.0f, -25), t), 0x0000);
  EXPECT_EQ(Encode(3 * std::ldexp(1.0f, -25), t), 0x0002);
  EXPECT_EQ(Encode(-5 * std::ldexp(1.0f, -25), t), 0x8002);
  EXPECT_EQ(Encode(1023 * std::ldexp(1.0f, -24), t), 0x03ff);  // largest subnormal
  // 1023.5 quanta: the tie between the largest subnormal (odd) and the smallest normal.
  EXPECT_EQ(Encode(1023.5f * std::ldexp(1.0f, -24), t), 0x0400);
  EXPECT_EQ(Encode(std::ldexp(1.0f, -14), t), 0x0400);
  // fp32 subnormals are far below fp16's range: signed zero.
  EXPECT_EQ(Encode(FromBits(0x00000001u), t), 0x0000);
  EXPECT_EQ(Encode(FromBits(0x807fffffu), t), 0x8000);
  EXPECT_EQ(Encode(-0.0f, t), 0x8000);
  // NaN: the canonical quiet NaN with the sign (c10::Half's rule); the payload is not kept.
  EXPECT_EQ(Encode(FromBits(0x7fa12345u), t), 0x7e00);
  EXPECT_EQ(Encode(FromBits(0xffc00001u), t), 0xfe00);
  EXPECT_EQ(Encode(FromBits(0x7f800001u), t), 0x7e00);
  // Widening a NaN keeps its payload (shifted into fp32's mantissa) and its sign.
  EXPECT_EQ(Bits(Decode(0x7d23, t)), 0x7fa46000u);
  EXPECT_EQ(Bits(Decode(0xfe00, t)), 0xffc00000u);
}

TEST(MixedPrecisionTest, EveryHalfPatternWidensExactlyAndRoundTrips) {
  for (const Format& f : {kBf16, kF16}) {
    SCOPED_TRACE(std::string(DTypeName(f.dtype)));
    // All 65536 patterns in one call: above the threading threshold, so the parallel loops run.
    std::vector<uint16_t> all(65536);
    for (uint32_t h = 0; h < 65536; ++h) all[h] = static_cast<uint16_t>(h);
    std::vector<float> wide = testing::Poisoned(65536);
    CastHalfToF32(wide.data(), all.data(), 65536, f.dtype);
    std::vector<uint16_t> back(65536, 0);
    CastF32ToHalf(back.data(), wide.data(), 65536, f.dtype);
    int failures = 0;
    for (uint32_t h = 0; h < 65536 && failures < 8; ++h) {
      const double want = ReferenceDecode(static_cast<uint16_t>(h), f);
      const bool nan = std::isnan(want);
      // Non-NaN values are exact both ways (the sign of zero included); a NaN stays a NaN.
      const bool ok = nan ? std::isnan(wide[h]) && std::isnan(Decode(back[h], f.dtype))
                          : static_cast<double>(wide[h]) == want &&
                                std::signbit(wide[h]) == std::signbit(want) && back[h] == h;
      if (!ok) {
        ++failures;
        ADD_FAILURE() << "pattern 0x" << std::hex << h << " widens to " << wide[h]
                      << " and narrows to 0x" << back[h] << ", want " << want;
      }
    }
    EXPECT_EQ(failures, 0);
  }
}

TEST(MixedPrecisionTest, ArrayCastsEqualTheScalarConversionsOnEveryThreadCount) {
  // 100003 elements (over the threading threshold, not a multiple of any vector width) of
  // random values over many binades, with specials scattered in.
  const int64_t n = 100003;
  std::vector<float> x = RandomVector(n, 7, -1.0f, 1.0f);
  const std::vector<float> e = RandomVector(n, 8, -30.0f, 30.0f);
  for (int64_t i = 0; i < n; ++i) x[i] = std::ldexp(x[i], static_cast<int>(e[i]));
  x[0] = std::numeric_limits<float>::quiet_NaN();
  x[n / 3] = std::numeric_limits<float>::infinity();
  x[n / 2] = -0.0f;
  x[n - 1] = 1e30f;
  std::vector<uint16_t> bf(n), hf(n);
  CastF32ToHalf(bf.data(), x.data(), n, DType::kBF16);
  CastF32ToHalf(hf.data(), x.data(), n, DType::kF16);
  std::vector<float> rb = x, rh = x;
  RoundThrough(rb.data(), n, DType::kBF16);
  RoundThrough(rh.data(), n, DType::kF16);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(bf[i], FloatToBf16(x[i])) << i;
    ASSERT_EQ(hf[i], FloatToF16(x[i])) << i;
    ASSERT_EQ(Bits(rb[i]), Bits(Bf16ToFloat(FloatToBf16(x[i])))) << i;
    ASSERT_EQ(Bits(rh[i]), Bits(F16ToFloat(FloatToF16(x[i])))) << i;
  }
  // The dtype-tagged Cast: f32 <-> half as above, half -> half through fp32, same dtype a copy.
  std::vector<uint16_t> out(n);
  Cast(out.data(), DType::kBF16, x.data(), DType::kF32, n);
  EXPECT_EQ(out, bf);
  Cast(out.data(), DType::kF16, bf.data(), DType::kBF16, n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out[i], FloatToF16(Bf16ToFloat(bf[i]))) << i;
  Cast(out.data(), DType::kBF16, hf.data(), DType::kF16, n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out[i], FloatToBf16(F16ToFloat(hf[i]))) << i;
  Cast(out.data(), DType::kF16, hf.data(), DType::kF16, n);
  EXPECT_EQ(out, hf);
  std::vector<float> wide(n);
  Cast(wide.data(), DType::kF32, hf.data(), DType::kF16, n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(Bits(wide[i]), Bits(F16ToFloat(hf[i]))) << i;
  Cast(wide.data(), DType::kF32, x.data(), DType::kF32, n);
  EXPECT_EQ(std::memcmp(wide.data(), x.data(), n * sizeof(float)), 0);
  // Empty arrays are no-ops.
  CastF32ToHalf(nullptr, nullptr, 0, DType::kF16);
  RoundThrough(nullptr, 0, DType::kBF16);
}

// Equal bits, or both NaN (the NaN's payload is the hardware's choice, not AdamW's).
void ExpectSameFloats(const std::vector<float>& a, const std::vector<float>& b,
                      const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const bool same = Bits(a[i]) == Bits(b[i]) || (std::isnan(a[i]) && std::isnan(b[i]));
    ASSERT_TRUE(same) << what << "[" << i << "]: " << a[i] << " vs " << b[i];
  }
}

TEST(MixedPrecisionTest, AdamWWithCopyIsAdamWBitForBitAndCopiesTheRoundedMaster) {
  ForEachSimdLevel([&] {
    for (DType dtype : {DType::kBF16, DType::kF16}) {
      SCOPED_TRACE(std::string(DTypeName(dtype)));
      // Several of the kernel's blocks on several threads, the last one ragged; and a size
      // below the threading threshold (one block, one thread); and a single element.
      for (int64_t n : {int64_t{50021}, int64_t{1000}, int64_t{1}}) {
        std::vector<float> p = RandomVector(n, 11), m(n, 0.0f), v(n, 0.0f);
        std::vector<float> p_ref = p, m_ref = m, v_ref = v;
        std::vector<uint16_t> copy(n, 0xdead);
        for (int64_t step = 1; step <= 3; ++step) {
          std::vector<float> grad = RandomVector(n, 20 + step);
          for (int64_t i = 0; i < n; i += 7) grad[i] *= 1e-6f;  // eps matters for these
          if (n > 100) grad[n / 2] = std::numeric_limits<float>::quiet_NaN();  // propagates
          AdamWArgs args;
          args.lr = 1e-2f;
          args.weight_decay = 0.1f;
          args.grad_scale = 0.5f;
          args.step = step;
          AdamWUpdate(p_ref.data(), grad.data(), m_ref.data(), v_ref.data(), n, args);
          AdamWUpdateWithCopy(p.data(), copy.data(), dtype, grad.data(), m.data(), v.data(), n,
                              args);
          ExpectSameFloats(p, p_ref, "master");
          ExpectSameFloats(m, m_ref, "m");
          ExpectSameFloats(v, v_ref, "v");
          for (int64_t i = 0; i < n; ++i) {
            const uint16_t want = dtype == DType::kBF16 ? FloatToBf16(p[i]) : FloatToF16(p[i]);
            ASSERT_EQ(copy[i], want) << "copy[" << i << "] of master " << p[i];
          }
        }
      }
    }
  });
}

TEST(MixedPrecisionTest, UnscaleMultipliesAndFindsNonFiniteValues) {
  // Over the threading threshold, so the reduction across threads is exercised.
  const int64_t n = 100003;
  const std::vector<float> g0 = RandomVector(n, 5, -1000.0f, 1000.0f);
  const float inv_scale = std::ldexp(1.0f, -16);
  std::vector<float> g = g0;
  EXPECT_FALSE(UnscaleAndFindInf(g.data(), n, inv_scale));
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(Bits(g[i]), Bits(g0[i] * inv_scale)) << i;
  // One non-finite value anywhere (first, a middle thread's share, last) is found.
  for (int64_t at : {int64_t{0}, n / 2 + 1, n - 1}) {
    for (float bad : {std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity(),
                      std::numeric_limits<float>::quiet_NaN(), FromBits(0x7fa00001u)}) {
      g = g0;
      g[at] = bad;
      EXPECT_TRUE(UnscaleAndFindInf(g.data(), n, inv_scale)) << "at " << at << " " << bad;
      EXPECT_FALSE(std::isfinite(g[at]));
      // The other elements are unscaled all the same.
      const int64_t other = at == 0 ? 1 : 0;
      EXPECT_EQ(Bits(g[other]), Bits(g0[other] * inv_scale));
    }
  }
  // A scale below 1 (inv_scale > 1) can overflow a finite gradient: that is found too.
  std::vector<float> big = {1.0f, 3e38f, -2.0f};
  EXPECT_TRUE(UnscaleAndFindInf(big.data(), 3, 2.0f));
  // Small arrays run on one thread; the largest finite values and subnormals are finite.
  std::vector<float> small = {std::numeric_limits<float>::max(),
                              std::numeric_limits<float>::denorm_min(), -0.0f};
  EXPECT_FALSE(UnscaleAndFindInf(small.data(), 3, 1.0f));
  EXPECT_EQ(small[0], std::numeric_limits<float>::max());
  EXPECT_FALSE(UnscaleAndFindInf(nullptr, 0, 0.5f));
}

TEST(MixedPrecisionDeathTest, OnlyHalfFormatsAreStoredByTheHalfKernels) {
  // Earlier tests started the OpenMP pool, which a fork()ed child cannot use.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  float x = 1.0f;
  uint16_t h = 0;
  EXPECT_DEATH(RoundThrough(&x, 1, DType::kF32), "f32 is not a 16-bit float");
  EXPECT_DEATH(CastF32ToHalf(&h, &x, 1, DType::kI32), "i32 is not a 16-bit float");
  EXPECT_DEATH(Cast(&h, DType::kU16, &x, DType::kF32, 1), "only f32, bf16 and f16");
}

}  // namespace
}  // namespace lattice
