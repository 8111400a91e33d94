#include "kernels/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::AdamWArgs;
using kernels::cpu::AdamWUpdate;
using testing::ForEachSimdLevel;
using testing::ExpectAllNear;
using testing::RandomVector;

// torch.optim.AdamW's update, element by element in double.
void NaiveAdamW(std::vector<double>& p, const std::vector<float>& grad, std::vector<double>& m,
                std::vector<double>& v, const AdamWArgs& a) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(a.beta1), a.step);
  const double bc2 = 1.0 - std::pow(static_cast<double>(a.beta2), a.step);
  for (size_t i = 0; i < p.size(); ++i) {
    const double g = static_cast<double>(grad[i]) * a.grad_scale;
    p[i] *= 1.0 - static_cast<double>(a.lr) * a.weight_decay;
    m[i] = a.beta1 * m[i] + (1.0 - a.beta1) * g;
    v[i] = a.beta2 * v[i] + (1.0 - a.beta2) * g * g;
    p[i] -= a.lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + a.eps);
  }
}

TEST(AdamWTest, StepsMatchNaiveDoubleLoop) {
  ForEachSimdLevel([&] {
    struct Config {
      float lr, wd, grad_scale, eps;
    };
    for (const Config& cfg : {Config{1e-2f, 0.1f, 1.0f, 1e-8f}, Config{3e-3f, 0.0f, 0.25f, 1e-8f},
                              Config{1e-1f, 0.5f, 2.0f, 1e-3f}}) {
      const int64_t n = 1003;
      const auto p0 = RandomVector(n, 1);
      std::vector<float> p = p0, m(n, 0.0f), v(n, 0.0f);
      std::vector<double> pd(p0.begin(), p0.end()), md(n, 0.0), vd(n, 0.0);
      // Tiny gradients on some elements make eps matter; step 1 has the largest bias correction.
      for (int64_t step = 1; step <= 6; ++step) {
        auto grad = RandomVector(n, 100 + step);
        for (int64_t i = 0; i < n; i += 5) grad[i] *= 1e-6f;
        AdamWArgs args;
        args.lr = cfg.lr;
        args.weight_decay = cfg.wd;
        args.grad_scale = cfg.grad_scale;
        args.eps = cfg.eps;
        args.step = step;
        AdamWUpdate(p.data(), grad.data(), m.data(), v.data(), n, args);
        NaiveAdamW(pd, grad, md, vd, args);
      }
      const std::string name = "lr=" + std::to_string(cfg.lr) + " wd=" + std::to_string(cfg.wd);
      // fp32 state: m sums terms (1-b1) g of mixed sign, so its rounding is relative to those
      // terms (|g| <= grad_scale), not to m, which may nearly cancel; v sums positive terms.
      // Each step moves p by <= lr with ~1e-6 relative error, and p is rounded to fp32 after it.
      ExpectAllNear(m, md, 1e-5, 1e-7 * cfg.grad_scale, name + " m");
      ExpectAllNear(v, vd, 1e-5, 1e-18, name + " v");
      ExpectAllNear(p, pd, 1e-6, 1e-5 * cfg.lr, name + " param");
    }
  });
}

TEST(AdamWTest, LateStepHasNoBiasCorrectionAndDecayIsDecoupled) {
  ForEachSimdLevel([&] {
    // Zero gradient with fresh moments: the Adam term is 0/(0 + eps) = 0, leaving only the
    // decoupled decay param *= 1 - lr*wd.
    std::vector<float> p = {1.0f, -2.0f, 0.5f}, m(3, 0.0f), v(3, 0.0f);
    const std::vector<float> g(3, 0.0f);
    AdamWArgs args;
    args.lr = 0.1f;
    args.weight_decay = 0.2f;
    args.step = 1000;
    AdamWUpdate(p.data(), g.data(), m.data(), v.data(), 3, args);
    const float decay = static_cast<float>(1.0 - 0.1f * static_cast<double>(0.2f));
    EXPECT_EQ(p[0], 1.0f * decay);
    EXPECT_EQ(p[1], -2.0f * decay);
    EXPECT_EQ(p[2], 0.5f * decay);
    EXPECT_EQ(m, std::vector<float>(3, 0.0f));
  });
}

}  // namespace
}  // namespace lattice
