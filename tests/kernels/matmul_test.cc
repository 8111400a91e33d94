#include "kernels/matmul.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::GemmLibrary;
using kernels::cpu::MatmulBackward;
using kernels::cpu::MatmulBackwardTo;
using kernels::cpu::MatmulForward;
using testing::ForEachSimdLevel;
using testing::ExpectAccumulated;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::NumericGradient;
using testing::Poisoned;
using testing::Project;
using testing::RandomVector;
using testing::ToDouble;

struct Shape {
  int64_t n, c, oc;
};

// Every GEMM library built in (OpenBLAS always, oneDNN when found: kernels/matmul.h), each at
// every SIMD level, so that either one passes the same checks whichever the default is.
template <typename F>
void ForEachGemmLibrary(F&& body) {
  const GemmLibrary saved = kernels::cpu::ActiveGemmLibrary();
  for (GemmLibrary lib : {GemmLibrary::kOpenBlas, GemmLibrary::kOneDnn}) {
    if (!kernels::cpu::GemmLibraryAvailable(lib)) continue;
    kernels::cpu::SetGemmLibrary(lib);
    SCOPED_TRACE("GEMM library " + kernels::cpu::GemmLibraryName());
    ForEachSimdLevel(body);
  }
  kernels::cpu::SetGemmLibrary(saved);
}

std::string Name(const Shape& s) {
  return "n=" + std::to_string(s.n) + " c=" + std::to_string(s.c) + " oc=" + std::to_string(s.oc);
}

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias, in double.
std::vector<double> NaiveMatmul(const std::vector<double>& inp, const std::vector<double>& weight,
                                const std::vector<double>* bias, const Shape& s) {
  std::vector<double> out(s.n * s.oc);
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t o = 0; o < s.oc; ++o) {
      double acc = bias != nullptr ? (*bias)[o] : 0.0;
      for (int64_t k = 0; k < s.c; ++k) acc += inp[i * s.c + k] * weight[o * s.c + k];
      out[i * s.oc + o] = acc;
    }
  }
  return out;
}

TEST(MatmulTest, ForwardMatchesNaiveAndWritesEveryElement) {
  ForEachGemmLibrary([&] {
    for (const Shape& s : {Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{17, 33, 9}, Shape{64, 48, 80},
                           Shape{5, 0, 3}}) {
      for (bool with_bias : {false, true}) {
        const auto inp = RandomVector(s.n * s.c, 1);
        const auto weight = RandomVector(s.oc * s.c, 2);
        const auto bias = RandomVector(s.oc, 3);
        auto out = Poisoned(s.n * s.oc);
        MatmulForward(out.data(), inp.data(), weight.data(), with_bias ? bias.data() : nullptr, s.n,
                      s.c, s.oc);
        const auto bias_d = ToDouble(bias);
        const auto want =
            NaiveMatmul(ToDouble(inp), ToDouble(weight), with_bias ? &bias_d : nullptr, s);
        // fp32 dot products of <= 48 terms of size <= 1: error well under 1e-5.
        ExpectAllNear(out, want, 1e-5, 1e-5, Name(s) + (with_bias ? " bias" : " no bias"));
      }
    }
  });
}

TEST(MatmulTest, BackwardMatchesFiniteDifferences) {
  ForEachGemmLibrary([&] {
    for (const Shape& s : {Shape{1, 1, 1}, Shape{3, 5, 4}, Shape{7, 6, 9}, Shape{2, 17, 3}}) {
      const auto inp = RandomVector(s.n * s.c, 10);
      const auto weight = RandomVector(s.oc * s.c, 11);
      const auto bias = RandomVector(s.oc, 12);
      const auto r = RandomVector(s.n * s.oc, 13);  // dout = dL/dout
      std::vector<float> dinp(s.n * s.c, 0.0f), dweight(s.oc * s.c, 0.0f), dbias(s.oc, 0.0f);
      MatmulBackward(dinp.data(), dweight.data(), dbias.data(), r.data(), inp.data(),
                     weight.data(), s.n, s.c, s.oc);

      const auto inp_d = ToDouble(inp), weight_d = ToDouble(weight), bias_d = ToDouble(bias);
      ExpectGradNear(dinp,
                     NumericGradient([&](const std::vector<double>& x) {
                       return Project(NaiveMatmul(x, weight_d, &bias_d, s), r);
                     }, inp_d),
                     Name(s) + " dinp");
      ExpectGradNear(dweight,
                     NumericGradient([&](const std::vector<double>& w) {
                       return Project(NaiveMatmul(inp_d, w, &bias_d, s), r);
                     }, weight_d),
                     Name(s) + " dweight");
      ExpectGradNear(dbias,
                     NumericGradient([&](const std::vector<double>& b) {
                       return Project(NaiveMatmul(inp_d, weight_d, &b, s), r);
                     }, bias_d),
                     Name(s) + " dbias");
    }
  });
}

TEST(MatmulTest, BackwardAccumulatesAndSkipsNullOutputs) {
  ForEachGemmLibrary([&] {
    const Shape s{37, 29, 70};  // 70 columns: dbias blocks of 16..64 with a ragged tail
    const auto inp = RandomVector(s.n * s.c, 20);
    const auto weight = RandomVector(s.oc * s.c, 21);
    const auto dout = RandomVector(s.n * s.oc, 22);
    std::vector<float> dinp0(s.n * s.c, 0.0f), dweight0(s.oc * s.c, 0.0f), dbias0(s.oc, 0.0f);
    MatmulBackward(dinp0.data(), dweight0.data(), dbias0.data(), dout.data(), inp.data(),
                   weight.data(), s.n, s.c, s.oc);

    const auto dinp_before = RandomVector(s.n * s.c, 23);
    const auto dweight_before = RandomVector(s.oc * s.c, 24);
    const auto dbias_before = RandomVector(s.oc, 25);
    auto dinp = dinp_before, dweight = dweight_before, dbias = dbias_before;
    MatmulBackward(dinp.data(), dweight.data(), dbias.data(), dout.data(), inp.data(),
                   weight.data(), s.n, s.c, s.oc);
    ExpectAccumulated(dinp, dinp_before, dinp0, "dinp");
    ExpectAccumulated(dweight, dweight_before, dweight0, "dweight");
    ExpectAccumulated(dbias, dbias_before, dbias0, "dbias");

    // Each output alone: the others are null and the one computed is unchanged.
    std::vector<float> only(s.oc, 0.0f);
    MatmulBackward(nullptr, nullptr, only.data(), dout.data(), inp.data(), weight.data(), s.n, s.c,
                   s.oc);
    EXPECT_EQ(only, dbias0);
    std::vector<float> only_w(s.oc * s.c, 0.0f);
    MatmulBackward(nullptr, only_w.data(), nullptr, dout.data(), inp.data(), weight.data(), s.n,
                   s.c, s.oc);
    EXPECT_EQ(only_w, dweight0);
    std::vector<float> only_x(s.n * s.c, 0.0f);
    MatmulBackward(only_x.data(), nullptr, nullptr, dout.data(), inp.data(), weight.data(), s.n,
                   s.c, s.oc);
    EXPECT_EQ(only_x, dinp0);
  });
}

TEST(MatmulTest, BiasGradientIsAnExactColumnSum) {
  ForEachGemmLibrary([&] {
    // Many rows: the column sums run in double, so the result is the double sum rounded once.
    const Shape s{1000, 1, 131};
    const auto dout = RandomVector(s.n * s.oc, 30);
    std::vector<float> dbias(s.oc, 0.0f);
    MatmulBackward(nullptr, nullptr, dbias.data(), dout.data(), nullptr, nullptr, s.n, s.c, s.oc);
    for (int64_t j = 0; j < s.oc; ++j) {
      double sum = 0.0;
      for (int64_t i = 0; i < s.n; ++i) sum += dout[i * s.oc + j];
      EXPECT_EQ(dbias[j], static_cast<float>(sum)) << "column " << j;
    }
  });
}

// The written form: dinp is stored over whatever the buffer held (NaN here), and equals the
// accumulating form's result into zeros exactly (x + 0 = x: the same products, the same sums);
// dweight and dbias still accumulate. On 1 and 2 threads (the split runs the GEMMs per thread).
TEST(MatmulTest, BackwardToWritesTheInputGradientAndAccumulatesTheRest) {
  const int saved = kernels::cpu::NumThreads();
  ForEachGemmLibrary([&] {
    for (int threads : {1, 2}) {
      kernels::cpu::SetNumThreads(threads);
      for (const Shape& s : {Shape{37, 29, 70}, Shape{300, 24, 150}, Shape{4, 3, 0}}) {
        const auto inp = RandomVector(s.n * s.c, 40);
        const auto weight = RandomVector(s.oc * s.c, 41);
        const auto dout = RandomVector(s.n * s.oc, 42);
        std::vector<float> dinp0(s.n * s.c, 0.0f), dweight0(s.oc * s.c, 0.0f), dbias0(s.oc, 0.0f);
        MatmulBackward(dinp0.data(), dweight0.data(), dbias0.data(), dout.data(), inp.data(),
                       weight.data(), s.n, s.c, s.oc);
        auto dinp = Poisoned(s.n * s.c);
        const auto dweight_before = RandomVector(s.oc * s.c, 43);
        const auto dbias_before = RandomVector(s.oc, 44);
        auto dweight = dweight_before, dbias = dbias_before;
        MatmulBackwardTo(dinp.data(), dweight.data(), dbias.data(), dout.data(), inp.data(),
                         weight.data(), s.n, s.c, s.oc);
        const std::string what = Name(s) + " threads=" + std::to_string(threads);
        EXPECT_EQ(dinp, dinp0) << what;
        ExpectAccumulated(dweight, dweight_before, dweight0, what + " dweight");
        ExpectAccumulated(dbias, dbias_before, dbias0, what + " dbias");
      }
    }
  });
  kernels::cpu::SetNumThreads(saved);
}

// On 2-4 threads a GEMM runs as one single-threaded sgemm call per thread on a block of
// rows or columns (kernels/matmul_cpu.cc); the blocks must tile the output exactly.
TEST(MatmulTest, GemmsSplitAcrossThreadsMatchNaive) {
  const int saved = kernels::cpu::NumThreads();
  ForEachGemmLibrary([&] {
    for (int threads : {2, 3, 4}) {
      kernels::cpu::SetNumThreads(threads);
      // Rows >= columns (split by rows), columns > rows (by columns), odd sizes that do not
      // divide by the thread count; all past 64 rows per thread.
      for (const Shape& s : {Shape{301, 24, 70}, Shape{130, 16, 517}, Shape{513, 9, 257}}) {
        const auto inp = RandomVector(s.n * s.c, 60);
        const auto weight = RandomVector(s.oc * s.c, 61);
        const auto bias = RandomVector(s.oc, 62);
        auto out = Poisoned(s.n * s.oc);
        MatmulForward(out.data(), inp.data(), weight.data(), bias.data(), s.n, s.c, s.oc);
        const auto bias_d = ToDouble(bias);
        const std::string what = Name(s) + " threads=" + std::to_string(threads);
        // fp32 dot products of <= 24 terms of size <= 1: error well under 1e-5.
        ExpectAllNear(out, NaiveMatmul(ToDouble(inp), ToDouble(weight), &bias_d, s), 1e-5, 1e-5,
                      what + " forward");
        // Backward: dinp and dweight (each thread takes blocks of one of them), accumulated.
        const auto dout = RandomVector(s.n * s.oc, 63);
        const auto dinp0 = RandomVector(s.n * s.c, 64);
        const auto dw0 = RandomVector(s.oc * s.c, 65);
        auto dinp = dinp0, dw = dw0;
        MatmulBackward(dinp.data(), dw.data(), nullptr, dout.data(), inp.data(), weight.data(),
                       s.n, s.c, s.oc);
        std::vector<double> want_dinp(s.n * s.c), want_dw(s.oc * s.c);
        for (int64_t i = 0; i < s.n; ++i) {
          for (int64_t k = 0; k < s.c; ++k) {
            double acc = dinp0[i * s.c + k];
            for (int64_t o = 0; o < s.oc; ++o) {
              acc += double{dout[i * s.oc + o]} * weight[o * s.c + k];
            }
            want_dinp[i * s.c + k] = acc;
          }
        }
        for (int64_t o = 0; o < s.oc; ++o) {
          for (int64_t k = 0; k < s.c; ++k) {
            double acc = dw0[o * s.c + k];
            for (int64_t i = 0; i < s.n; ++i) {
              acc += double{dout[i * s.oc + o]} * inp[i * s.c + k];
            }
            want_dw[o * s.c + k] = acc;
          }
        }
        // Sums of <= 517 fp32 products of size <= 1 (random signs: partial sums ~sqrt(517) ~ 23)
        // round at ~6e-8 relative per add: ~sqrt(517) * 6e-8 * 23 ~ 3e-5; 1e-3 leaves a margin.
        ExpectAllNear(dinp, want_dinp, 1e-5, 1e-3, what + " dinp");
        ExpectAllNear(dw, want_dw, 1e-5, 1e-3, what + " dweight");
      }
    }
  });
  kernels::cpu::SetNumThreads(saved);
}

}  // namespace
}  // namespace lattice
