// Helpers the engine tests share: gathering a layout's tensors, and "teacher forcing" (the
// gradients a layout computes at given weights, e.g. the reference run's of the same step).
#ifndef LATTICE_TESTS_PARALLEL_ENGINE_TESTING_H_
#define LATTICE_TESTS_PARALLEL_ENGINE_TESTING_H_

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/engine.h"
#include "runtime/config.h"
#include "tests/parallel/adam_drift.h"

namespace lattice::testing {

// One parallel layout of a test matrix.
struct Layout {
  int dp = 1, tp = 1, pp = 1, vpp = 1;
  bool sp = false, zero1 = false;
  PipelineSchedule schedule = PipelineSchedule::kOneFOneB;
  int world() const { return dp * tp * pp; }
  std::string Name() const {
    const char* s = schedule == PipelineSchedule::kGpipe         ? "gpipe"
                    : schedule == PipelineSchedule::kInterleaved ? "interleaved"
                                                                 : "1f1b";
    return absl::StrCat("(dp,tp,pp)=(", dp, ",", tp, ",", pp, ") vpp=", vpp, " ", s,
                        sp ? " sp" : "", zero1 ? " zero1" : "");
  }
};

// `c` with the layout `l`.
inline Config WithLayout(Config c, const Layout& l) {
  c.parallel.tp = l.tp;
  c.parallel.pp = l.pp;
  c.parallel.vpp = l.vpp;
  c.parallel.dp = l.dp;
  c.parallel.sequence_parallel = l.sp;
  c.parallel.zero1 = l.zero1;
  c.parallel.schedule = l.schedule;
  return c;
}

// The engine tests' small model: `n_layer` layers of width 32 with 4 heads (Llama: 2 kv heads,
// GQA), a vocabulary that pads (50 or 60 real rows to 64, the padding masked out of the loss),
// and the AdamW schedule the tests train with: one warm-up step, lr 3e-3 decaying to 3e-4.
// Each test sets its own seed, batch and step counts.
inline Config TinyEngineConfig(Arch arch, int64_t n_layer, int64_t seq_len, int64_t micro_batch,
                               int64_t global_batch) {
  Config c;
  c.model.arch = arch;
  c.model.n_layer = n_layer;
  c.model.d_model = 32;
  c.model.n_head = 4;
  c.model.seq_len = seq_len;
  c.model.vocab_pad_multiple = 64;
  if (arch == Arch::kLlama) {
    c.model.n_kv_head = 2;
    c.model.d_ff = 64;
    c.model.vocab_size = 60;  // padded to 64: 4 padding rows masked out of the loss
  } else {
    c.model.vocab_size = 50;  // padded to 64
  }
  c.train.micro_batch_size = micro_batch;
  c.train.global_batch_size = global_batch;
  c.train.lr = 3e-3f;
  c.train.min_lr = 3e-4f;
  c.train.warmup_steps = 1;
  return c;
}

// Samples first .. first + b - 1 of a pseudo-random data set (splitmix64 of the global sample
// index and `salt`): T + 1 tokens each; the last g % 3 targets of sample g are ignored, so dp
// ranks count different numbers of targets and the global normalisation matters.
inline TokenBatch PseudoRandomSamples(int64_t first, int64_t b, int64_t t, int64_t vocab,
                                      uint64_t salt) {
  TokenBatch mb;
  mb.b = b;
  mb.t = t;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t g = first + i;
    std::vector<int32_t> s(static_cast<size_t>(t + 1));
    uint64_t x = static_cast<uint64_t>(g) * 0x9E3779B97F4A7C15ull + salt;
    for (auto& v : s) {
      x ^= x >> 31;
      x *= 0xBF58476D1CE4E5B9ull;
      x ^= x >> 29;
      v = static_cast<int32_t>(x % static_cast<uint64_t>(vocab));
    }
    mb.inputs.insert(mb.inputs.end(), s.begin(), s.end() - 1);
    for (int64_t j = 1; j <= t; ++j) mb.targets.push_back(j > t - g % 3 ? -1 : s[j]);
  }
  return mb;
}

// The value of a gather, or nothing (with a test failure) when it failed.
inline NamedTensors Gathered(absl::StatusOr<NamedTensors> t) {
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(t).value() : NamedTensors();
}

// The unsharded gradients `engine` computes for `batches` at the unsharded `weights`, leaving
// its own weights as they were. Collective over the engine's world.
inline NamedTensors GradientsAt(ParallelEngine& engine, const NamedTensors& weights,
                                const std::vector<TokenBatch>& batches) {
  const Tensor& values = engine.model().params().flat_values();
  const Tensor own = values.Clone();
  absl::Status loaded = engine.LoadParameters([&](const std::string& name) -> const Tensor* {
    for (const auto& [n, t] : weights) {
      if (n == name) return &t;
    }
    return nullptr;
  });
  EXPECT_TRUE(loaded.ok()) << loaded;
  absl::StatusOr<EngineStepResult> r = engine.ComputeGradients(batches);
  EXPECT_TRUE(r.ok()) << r.status();
  NamedTensors grads = Gathered(engine.GatherGradients());
  std::memcpy(values.raw(), own.raw(), own.nbytes());
  return grads;
}

}  // namespace lattice::testing

#endif  // LATTICE_TESTS_PARALLEL_ENGINE_TESTING_H_
