// How far apart two AdamW trajectories may drift when their gradients agree only to a
// tolerance: the bound the layout-equivalence tests compare final parameters against.
//
// Why a bound and not a relative tolerance. Two runs of the same math in different layouts sum
// the same floating-point terms in different orders, so their gradients differ by rounding
// (the tests check |g_a - g_b| <= tol * ||g_b|| per tensor at every step). AdamW then divides
// each element's first moment by the root of its second moment: for an element whose gradient
// is far above that rounding, the update changes by a relative ~tol; for an element whose
// gradient is comparable to the rounding (e.g. GPT-2's key bias, whose true gradient is zero),
// the update may land anywhere in about [-lr, lr] in either run. A norm-wise relative tolerance
// on the weights cannot be right for both kinds of element on every CPU.
//
// Two uses. With tol > 0 along a reference trajectory: every run whose gradients stayed within
// tol of the reference's ends inside the intervals. With tol = 0 along a run's OWN gradients,
// clip coefficients and learning rates: the intervals are the fp32 rounding band around exact
// AdamW, so a run outside them did not apply AdamW to the gradients it computed (a wrong shard,
// decay flag, step count or a stale parameter all-gather).
//
// The bound. Starting from the common initial weights, the gradients g_k (per element), clip
// coefficients c_k and learning rates lr_k, we propagate per-element intervals
// through the update rule of model/optimizer.h (torch.optim.AdamW):
//   g' = c' * (g + d),  |d| <= tol * ||g_tensor||,  c' in c * [1 - tol, 1 + tol] (capped at 1)
//   m  = b1 m + (1 - b1) g'          v = b2 v + (1 - b2) g'^2
//   w  = w (1 - lr wd) - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// Interval arithmetic over (m, v, w) is monotone in each argument, so every trajectory whose
// gradients stay within the tolerance ends inside the intervals. Treating m and v as
// independent loses their correlation (an interval holding g = 0 gives v = 0 next to m > 0),
// so the update is also clamped to the largest value AdamW can ever produce: by Cauchy-Schwarz
// over the moment sums, |m_hat| / sqrt(v_hat) <= (1 - b1) / (1 - b1^t) * sqrt(1 - b2^t)
// * sqrt(sum_{j<t} (b1^2 / b2)^j / (1 - b2)), for any gradients (about 1 for the usual betas).
// Each step widens the intervals by the
// fp32 rounding of the kernel itself: a few units in the last place (2^-24 relative) of the
// terms of each moment update, of the update u, and of |w| and lr * |u| (see the code).
// The check is tight where the gradient is well determined (an element moves by
// ~lr * tol * ||g|| / |g|) and ~lr per step only where rounding decides the sign of the update.
#ifndef LATTICE_TESTS_PARALLEL_ADAM_DRIFT_H_
#define LATTICE_TESTS_PARALLEL_ADAM_DRIFT_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/config.h"
#include "runtime/status.h"
#include "runtime/tensor.h"

namespace lattice::testing {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class AdamDriftBound {
 public:
  // `initial`: the common starting weights; `decay(name)`: whether weight decay applies.
  template <typename DecayFn>
  AdamDriftBound(const TrainConfig& tc, const NamedTensors& initial, DecayFn decay) : tc_(tc) {
    for (const auto& [name, t] : initial) {
      Elem e;
      e.decay = decay(name);
      const int64_t n = t.numel();
      e.w_lo.assign(t.f32(), t.f32() + n);
      e.w_hi = e.w_lo;
      e.m_lo.assign(n, 0.0);
      e.m_hi.assign(n, 0.0);
      e.v_lo.assign(n, 0.0);
      e.v_hi.assign(n, 0.0);
      elems_.emplace(name, std::move(e));
    }
  }

  // One update of the reference: its gradients (before clipping), clip coefficient and lr;
  // `tol` bounds the other run's gradient difference per tensor and its clip coefficient's
  // relative difference. A skipped step (no update anywhere) is simply not passed here.
  void Step(const NamedTensors& grads, float clip, float lr, double tol) {
    ++t_;
    const double b1 = tc_.beta1, b2 = tc_.beta2, eps = tc_.adam_eps;
    const double bc1 = 1.0 - std::pow(b1, static_cast<double>(t_));
    const double bc2 = 1.0 - std::pow(b2, static_cast<double>(t_));
    const double c_lo = clip * (1.0 - tol), c_hi = std::min(1.0, clip * (1.0 + tol));
    double geo = 0;  // sum_{j<t} (b1^2 / b2)^j
    for (int64_t j = 0; j < t_; ++j) geo += std::pow(b1 * b1 / b2, static_cast<double>(j));
    const double u_max = (1 - b1) / bc1 * std::sqrt(bc2) * std::sqrt(geo / (1 - b2));
    constexpr double kUlp = 1.0 / (1 << 24);
    for (const auto& [name, g] : grads) {
      auto it = elems_.find(name);
      LATTICE_CHECK_MSG(it != elems_.end(), "gradient of an unknown tensor");
      Elem& e = it->second;
      double norm2 = 0;
      for (int64_t i = 0; i < g.numel(); ++i) norm2 += static_cast<double>(g.f32()[i]) * g.f32()[i];
      const double d = tol * std::sqrt(norm2);
      const double wd = e.decay ? tc_.weight_decay : 0.0;
      for (int64_t i = 0; i < g.numel(); ++i) {
        const double lo = g.f32()[i] - d, hi = g.f32()[i] + d;
        // c' * x over c' in [c_lo, c_hi], x in [lo, hi]: the extremes are at the corners; the
        // kernel's product rounds once more.
        const double corners[4] = {c_lo * lo, c_lo * hi, c_hi * lo, c_hi * hi};
        double gs_lo = *std::min_element(corners, corners + 4);
        double gs_hi = *std::max_element(corners, corners + 4);
        gs_lo -= kUlp * std::abs(gs_lo);
        gs_hi += kUlp * std::abs(gs_hi);
        const double sq_hi = std::max(gs_lo * gs_lo, gs_hi * gs_hi);
        const double sq_lo = gs_lo <= 0 && gs_hi >= 0 ? 0.0 : std::min(gs_lo * gs_lo, gs_hi * gs_hi);
        // fp32 moments: each update rounds a product and a sum (<= 2 * 2^-24 of its terms);
        // 4 ulps of the terms covers it with room.
        const double m_terms = b1 * std::max(std::abs(e.m_lo[i]), std::abs(e.m_hi[i])) +
                               (1 - b1) * std::max(std::abs(gs_lo), std::abs(gs_hi));
        e.m_lo[i] = b1 * e.m_lo[i] + (1 - b1) * gs_lo - 4 * kUlp * m_terms;
        e.m_hi[i] = b1 * e.m_hi[i] + (1 - b1) * gs_hi + 4 * kUlp * m_terms;
        e.v_lo[i] = (b2 * e.v_lo[i] + (1 - b2) * sq_lo) * (1 - 4 * kUlp);
        e.v_hi[i] = (b2 * e.v_hi[i] + (1 - b2) * sq_hi) * (1 + 4 * kUlp);
        auto u = [&](double m, double v) { return (m / bc1) / (std::sqrt(v / bc2) + eps); };
        // u grows with m; for m >= 0 it shrinks as v grows, for m < 0 it grows. The kernel's
        // bias corrections, square root and division round: 8 ulps of u.
        double u_hi = e.m_hi[i] >= 0 ? u(e.m_hi[i], e.v_lo[i]) : u(e.m_hi[i], e.v_hi[i]);
        double u_lo = e.m_lo[i] >= 0 ? u(e.m_lo[i], e.v_hi[i]) : u(e.m_lo[i], e.v_lo[i]);
        u_hi = std::clamp(u_hi + 8 * kUlp * std::abs(u_hi), -u_max, u_max);
        u_lo = std::clamp(u_lo - 8 * kUlp * std::abs(u_lo), -u_max, u_max);
        const double keep = 1.0 - lr * wd;
        const double w_lo = e.w_lo[i] * keep - lr * u_hi;
        const double w_hi = e.w_hi[i] * keep - lr * u_lo;
        // The weight update rounds the decay product, the step product and two subtractions.
        const double slack =
            4 * kUlp * (std::max(std::abs(w_lo), std::abs(w_hi)) +
                        lr * std::max(std::abs(u_lo), std::abs(u_hi)));
        e.w_lo[i] = w_lo - slack;
        e.w_hi[i] = w_hi + slack;
      }
    }
  }

  struct Report {
    int64_t violations = 0;   // elements outside their interval
    int64_t elements = 0;
    std::string first;        // "name[i]: got x, interval [lo, hi]" of the first violation
    double mean_width = 0;    // mean interval width (how tight the check was)
    double max_width = 0;
    double median_width = 0;
  };
  Report Check(const NamedTensors& got) const {
    Report r;
    double width_sum = 0;
    std::vector<double> widths;
    for (const auto& [name, t] : got) {
      auto it = elems_.find(name);
      LATTICE_CHECK_MSG(it != elems_.end(), "parameters of an unknown tensor");
      const Elem& e = it->second;
      for (int64_t i = 0; i < t.numel(); ++i) {
        const double x = t.f32()[i];
        const double w = e.w_hi[i] - e.w_lo[i];
        width_sum += w;
        widths.push_back(w);
        r.max_width = std::max(r.max_width, w);
        ++r.elements;
        if (x < e.w_lo[i] || x > e.w_hi[i] || !std::isfinite(x)) {
          if (r.violations++ == 0) {
            r.first = name + "[" + std::to_string(i) + "]: got " + std::to_string(x) +
                      ", interval [" + std::to_string(e.w_lo[i]) + ", " +
                      std::to_string(e.w_hi[i]) + "]";
          }
        }
      }
    }
    r.mean_width = r.elements > 0 ? width_sum / static_cast<double>(r.elements) : 0;
    if (!widths.empty()) {
      std::nth_element(widths.begin(), widths.begin() + widths.size() / 2, widths.end());
      r.median_width = widths[widths.size() / 2];
    }
    return r;
  }

 private:
  struct Elem {
    bool decay = true;
    std::vector<double> w_lo, w_hi, m_lo, m_hi, v_lo, v_hi;
  };
  TrainConfig tc_;
  int64_t t_ = 0;
  std::map<std::string, Elem> elems_;
};

// Per-tensor relative difference ||a - b|| / ||b|| (||a - b|| when b is zero).
inline double RelativeDifference(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = static_cast<double>(a.f32()[i]) - b.f32()[i];
    num += d * d;
    den += static_cast<double>(b.f32()[i]) * b.f32()[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace lattice::testing

#endif  // LATTICE_TESTS_PARALLEL_ADAM_DRIFT_H_
