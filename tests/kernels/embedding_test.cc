#include "kernels/embedding.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::EmbeddingBackward;
using kernels::cpu::EmbeddingForward;
using testing::ExpectAccumulated;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::NumericGradient;
using testing::Poisoned;
using testing::Project;
using testing::RandomInts;
using testing::RandomVector;
using testing::ToDouble;

struct Case {
  int64_t b, t, c, vp, max_t, pos_offset;
};

std::string Name(const Case& k) {
  return "b=" + std::to_string(k.b) + " t=" + std::to_string(k.t) + " c=" + std::to_string(k.c) +
         " pos=" + std::to_string(k.pos_offset);
}

const Case kCases[] = {{1, 1, 1, 1, 1, 0}, {2, 5, 7, 6, 9, 0}, {3, 4, 130, 5, 10, 6},
                       {2, 3, 33, 40, 8, 2}};

std::vector<double> NaiveEmbedding(const std::vector<int32_t>& tokens,
                                   const std::vector<double>& wte, const std::vector<double>* wpe,
                                   const Case& k) {
  std::vector<double> out(k.b * k.t * k.c);
  for (int64_t bi = 0; bi < k.b; ++bi) {
    for (int64_t ti = 0; ti < k.t; ++ti) {
      for (int64_t j = 0; j < k.c; ++j) {
        out[(bi * k.t + ti) * k.c + j] =
            wte[tokens[bi * k.t + ti] * k.c + j] +
            (wpe != nullptr ? (*wpe)[(k.pos_offset + ti) * k.c + j] : 0.0);
      }
    }
  }
  return out;
}

TEST(EmbeddingTest, ForwardMatchesNaive) {
  for (const Case& k : kCases) {
    // Few distinct tokens, so repeats are certain (they matter for the backward scatter).
    const auto tokens = RandomInts(k.b * k.t, 1, 0, static_cast<int32_t>(k.vp - 1));
    const auto wte = RandomVector(k.vp * k.c, 2);
    const auto wpe = RandomVector(k.max_t * k.c, 3);
    for (bool with_wpe : {true, false}) {
      auto out = Poisoned(k.b * k.t * k.c);
      EmbeddingForward(out.data(), tokens.data(), wte.data(), with_wpe ? wpe.data() : nullptr,
                       k.b, k.t, k.c, k.pos_offset);
      const auto wpe_d = ToDouble(wpe);
      // One fp32 addition (or a copy): exact to half an ulp.
      ExpectAllNear(out,
                    NaiveEmbedding(tokens, ToDouble(wte), with_wpe ? &wpe_d : nullptr, k),
                    1e-7, 0.0, Name(k) + (with_wpe ? " wte+wpe" : " wte only"));
    }
  }
}

TEST(EmbeddingTest, BackwardMatchesFiniteDifferencesAndAccumulates) {
  for (const Case& k : kCases) {
    const auto tokens = RandomInts(k.b * k.t, 10, 0, static_cast<int32_t>(k.vp - 1));
    const auto wte = RandomVector(k.vp * k.c, 11);
    const auto wpe = RandomVector(k.max_t * k.c, 12);
    const auto r = RandomVector(k.b * k.t * k.c, 13);
    std::vector<float> dwte(k.vp * k.c, 0.0f), dwpe(k.max_t * k.c, 0.0f);
    EmbeddingBackward(dwte.data(), dwpe.data(), r.data(), tokens.data(), k.b, k.t, k.c,
                      k.pos_offset);
    const auto wte_d = ToDouble(wte), wpe_d = ToDouble(wpe);
    // Unused vocabulary rows and positions outside [pos_offset, pos_offset + t) get exactly 0,
    // which the finite difference reproduces.
    ExpectGradNear(dwte, NumericGradient([&](const std::vector<double>& w) {
                     return Project(NaiveEmbedding(tokens, w, &wpe_d, k), r);
                   }, wte_d),
                   Name(k) + " dwte");
    ExpectGradNear(dwpe, NumericGradient([&](const std::vector<double>& w) {
                     return Project(NaiveEmbedding(tokens, wte_d, &w, k), r);
                   }, wpe_d),
                   Name(k) + " dwpe");

    const auto dwte_before = RandomVector(k.vp * k.c, 14);
    const auto dwpe_before = RandomVector(k.max_t * k.c, 15);
    auto dwte_acc = dwte_before, dwpe_acc = dwpe_before;
    EmbeddingBackward(dwte_acc.data(), dwpe_acc.data(), r.data(), tokens.data(), k.b, k.t, k.c,
                      k.pos_offset);
    ExpectAccumulated(dwte_acc, dwte_before, dwte, Name(k) + " dwte");
    ExpectAccumulated(dwpe_acc, dwpe_before, dwpe, Name(k) + " dwpe");

    // Without wpe (Llama), only dwte is produced.
    std::vector<float> dwte_only(k.vp * k.c, 0.0f);
    EmbeddingBackward(dwte_only.data(), nullptr, r.data(), tokens.data(), k.b, k.t, k.c,
                      k.pos_offset);
    EXPECT_EQ(dwte_only, dwte) << Name(k);
  }
}

}  // namespace
}  // namespace lattice
