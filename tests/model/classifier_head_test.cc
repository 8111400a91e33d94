// LATTICE_TEST_LABELS: numeric
// The decoder's head runs the chunked classifier (kernels/classifier.h, through the backend):
// the (tokens, vocab) logits are never kept for the backward. One chunk of every row is the
// unfused head (the same GEMM over all rows, cross-entropy, GEMM backward), so it is the
// reference; smaller chunks change only the order in which the head's weight gradient sums
// its token rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/decoder.h"
#include "runtime/config.h"

namespace lattice {
namespace {

ModelConfig TinyModel(Arch arch) {
  ModelConfig m;
  m.arch = arch;
  m.n_layer = 2;
  m.d_model = 48;
  m.n_head = 4;
  m.seq_len = 20;
  m.vocab_size = 100;  // padded to 128: padding rows stay out of the softmax
  m.vocab_pad_multiple = 64;
  if (arch == Arch::kLlama) {
    m.n_kv_head = 2;
    m.d_ff = 80;
  }
  return m;
}

struct Result {
  double loss = 0;
  std::vector<float> grads;
  std::vector<std::string> names;
  std::vector<std::pair<int64_t, int64_t>> ranges;  // per parameter, in the flat buffer
  int64_t activation_bytes = 0;
};

constexpr int64_t kBatch = 3;

// One forward and backward over (kBatch, seq) with ignored targets and a fractional mask;
// `armed`: the loss gradient is announced before the forward (the engine's way).
Result RunHead(const ModelConfig& cfg, int64_t chunk, bool armed) {
  DecoderOptions opts;
  opts.classifier_chunk = chunk;
  auto made = Decoder::Create(cfg, kBatch, ModelShard(), nullptr, opts);
  EXPECT_TRUE(made.ok()) << made.status();
  Result out;
  if (!made.ok()) return out;
  Decoder& d = **made;
  d.InitializeWeights(3);
  const int64_t t = cfg.seq_len, n = kBatch * t;
  std::vector<int32_t> tokens(n), targets(n);
  std::vector<float> mask(n);
  for (int64_t i = 0; i < n; ++i) {
    tokens[i] = static_cast<int32_t>((i * 37 + 11) % cfg.vocab_size);
    targets[i] = i % 9 == 4 ? -1 : static_cast<int32_t>((i * 53 + 7) % cfg.vocab_size);
    mask[i] = i % 4 == 0 ? 0.25f : 1.0f;
  }
  const float dloss = 1.0f / 50.0f;
  if (armed) d.set_head_loss_gradient(dloss);
  out.loss = d.Forward(tokens.data(), targets.data(), mask.data(), kBatch, t).loss_sum;
  d.Backward(dloss);
  const Tensor& g = d.params().flat_grads();
  out.grads.assign(g.f32(), g.f32() + g.numel());
  for (const Parameter& p : d.params().params()) {
    out.names.push_back(p.name);
    out.ranges.emplace_back(p.offset, p.offset + p.grad.numel());
  }
  out.activation_bytes = d.activation_bytes();
  return out;
}

uint64_t Bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

class ClassifierHeadTest : public ::testing::TestWithParam<Arch> {};

// Announcing the loss gradient (gradients made in the forward) or not (made in the backward)
// runs the same kernels on the same values: the same bits.
TEST_P(ClassifierHeadTest, ForwardOrBackwardFusedPassIsBitIdentical) {
  const ModelConfig cfg = TinyModel(GetParam());
  const Result a = RunHead(cfg, 16, /*armed=*/true), b = RunHead(cfg, 16, /*armed=*/false);
  EXPECT_EQ(Bits(a.loss), Bits(b.loss));
  ASSERT_EQ(a.grads.size(), b.grads.size());
  EXPECT_EQ(std::memcmp(a.grads.data(), b.grads.data(), a.grads.size() * sizeof(float)), 0);
}

// Chunks of 1, 7 (ragged last chunk) and 16 rows against one chunk of all 60 rows (the unfused
// head). Per row every chunk runs the same kernels (only the GEMMs' blocking may change with
// the row count, see the loss below); the head's weight gradient (and with tied embeddings
// wte's) adds the chunks' partial sums over tokens in turn, another order of the same fp32 sum
// of N = 60 terms. Such a reordering moves a sum by at most
// 2 gamma_N sum|terms| (Higham), ~sqrt(N) u relative in practice (a random walk): ~5e-7 here.
// 1e-5 relative to each tensor's norm is that with a 20x margin, the bound the layout
// equivalence tests use for the same reason (tests/parallel/engine_mpi_test.cc); a dropped or
// doubled chunk moves a tensor by >= 1e-2.
TEST_P(ClassifierHeadTest, ChunksMatchTheWholeHeadWithinSummationOrder) {
  const ModelConfig cfg = TinyModel(GetParam());
  const int64_t n = kBatch * cfg.seq_len;
  const Result whole = RunHead(cfg, n, /*armed=*/true);
  for (int64_t chunk : {1, 7, 16}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    const Result r = RunHead(cfg, chunk, /*armed=*/true);
    // Each logit is a C-term dot product whose GEMM blocking may change with the chunk's row
    // count: within 2 gamma_C sum|h w| (C = 48: ~6e-6 of it, Higham), ~sqrt(C) u ~ 4e-7 in
    // practice; a row's loss is 1-Lipschitz in its logits, so the sum moves by about as much
    // relative. 1e-6 of the loss (measured: < 1e-8).
    EXPECT_NEAR(r.loss, whole.loss, 1e-6 * std::fabs(whole.loss));
    ASSERT_EQ(r.grads.size(), whole.grads.size());
    for (size_t p = 0; p < whole.ranges.size(); ++p) {
      double diff = 0, norm = 0;
      for (int64_t i = whole.ranges[p].first; i < whole.ranges[p].second; ++i) {
        const double dd = static_cast<double>(r.grads[i]) - whole.grads[i];
        diff += dd * dd;
        norm += static_cast<double>(whole.grads[i]) * whole.grads[i];
      }
      EXPECT_LE(std::sqrt(diff), 1e-5 * std::sqrt(norm)) << whole.names[p];
    }
    // The micro-batch keeps no logits: the same bytes whatever the chunk.
    EXPECT_EQ(r.activation_bytes, whole.activation_bytes);
  }
}

// The head keeps (N, C) floats, not (N, Vp) logits: the plan of a 128K vocabulary at 8192
// tokens has no 4 GiB term, and the scratch is one chunk of logits.
TEST(ClassifierHead, PlanHasNoWholeLogits) {
  ModelConfig m = TinyModel(Arch::kLlama);
  m.vocab_size = 128256;
  m.seq_len = 8192;
  DecoderOptions opts;
  opts.classifier_chunk = 256;
  auto with_head = Decoder::PlanMemory(m, 1, ModelShard(), opts);
  ASSERT_TRUE(with_head.ok()) << with_head.status();
  const int64_t n = 8192, c = m.d_model, vp = m.padded_vocab();
  // head_bytes: final norm output (N, C), its rstd (N), the input gradient (N, C).
  EXPECT_EQ(with_head->head_bytes, 4 * (2 * n * c + n));
  EXPECT_LT(with_head->head_bytes, 4 * n * vp / 100);
  // The scratch holds one chunk of logits, not N rows of them.
  EXPECT_GE(with_head->scratch, 4 * 256 * (vp + 4));
  EXPECT_LT(with_head->scratch, 4 * n * vp / 10);
}

INSTANTIATE_TEST_SUITE_P(Models, ClassifierHeadTest, ::testing::Values(Arch::kGpt2, Arch::kLlama),
                         [](const ::testing::TestParamInfo<Arch>& p) {
                           return p.param == Arch::kGpt2 ? "Gpt2" : "Llama";
                         });

}  // namespace
}  // namespace lattice
