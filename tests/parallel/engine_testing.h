// Helpers the engine tests share: gathering a layout's tensors, and "teacher forcing" (the
// gradients a layout computes at given weights, e.g. the reference run's of the same step).
#ifndef LATTICE_TESTS_PARALLEL_ENGINE_TESTING_H_
#define LATTICE_TESTS_PARALLEL_ENGINE_TESTING_H_

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "parallel/engine.h"
#include "tests/parallel/adam_drift.h"

namespace lattice::testing {

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
