// Document masking for packed fine-tuning rows (kernels/attention.h, rope.h, backend.h): the
// masked attention, per-example RoPE positions and learned positions against plain references,
// and each example of a packed row against the same op on that example alone.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/backend.h"
#include "kernels/rope.h"
#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::ForEachSimdLevel;
using testing::NumericGradient;
using testing::Poisoned;
using testing::Project;
using testing::RandomVector;
using testing::ToDouble;

struct Case {
  int64_t t, h, kvh, d;
  std::vector<std::vector<int64_t>> rows;  // example lengths per row (the rest: one pad run)
  int64_t b() const { return static_cast<int64_t>(rows.size()); }
  int64_t row() const { return (h + 2 * kvh) * d; }
  std::string Name() const {
    std::string s = "T=" + std::to_string(t) + " H=" + std::to_string(h) +
                    " KVH=" + std::to_string(kvh) + " D=" + std::to_string(d) + " rows:";
    for (const auto& r : rows) {
      s += " [";
      for (int64_t len : r) s += std::to_string(len) + ",";
      s += "]";
    }
    return s;
  }
};

std::vector<int32_t> DocStarts(const Case& c) {
  std::vector<int32_t> ds(static_cast<size_t>(c.b() * c.t));
  for (int64_t bi = 0; bi < c.b(); ++bi) {
    int64_t p = 0;
    for (int64_t len : c.rows[bi]) {
      for (int64_t i = 0; i < len; ++i) ds[bi * c.t + p + i] = static_cast<int32_t>(p);
      p += len;
    }
    for (int64_t i = p; i < c.t; ++i) ds[bi * c.t + i] = static_cast<int32_t>(p);
  }
  return ds;
}

// The definition, in double: softmax over keys doc_starts[t] <= j <= t of q_t . k_j / sqrt(D).
void Reference(const Case& c, const std::vector<double>& qkv, const std::vector<int32_t>& ds,
               std::vector<double>* out, std::vector<double>* lse) {
  const int64_t row = c.row(), group = c.h / c.kvh;
  out->assign(c.b() * c.t * c.h * c.d, 0.0);
  lse->assign(c.b() * c.h * c.t, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  for (int64_t bi = 0; bi < c.b(); ++bi) {
    for (int64_t hi = 0; hi < c.h; ++hi) {
      const int64_t g = hi / group;
      for (int64_t i = 0; i < c.t; ++i) {
        const double* q = &qkv[(bi * c.t + i) * row + hi * c.d];
        const int64_t first = ds[bi * c.t + i];
        std::vector<double> s;
        double mx = -INFINITY;
        for (int64_t j = first; j <= i; ++j) {
          const double* k = &qkv[(bi * c.t + j) * row + (c.h + g) * c.d];
          double dot = 0;
          for (int64_t x = 0; x < c.d; ++x) dot += q[x] * k[x];
          s.push_back(dot * scale);
          mx = std::max(mx, dot * scale);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        double* o = &(*out)[(bi * c.t + i) * c.h * c.d + hi * c.d];
        for (int64_t j = first; j <= i; ++j) {
          const double* v = &qkv[(bi * c.t + j) * row + (c.h + c.kvh + g) * c.d];
          for (int64_t x = 0; x < c.d; ++x) o[x] += s[j - first] / sum * v[x];
        }
        (*lse)[(bi * c.h + hi) * c.t + i] = mx + std::log(sum);
      }
    }
  }
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {8, 2, 1, 4, {{3, 5}, {1, 1, 1, 2}}},
      {37, 4, 2, 8, {{5, 12, 9}, {37}, {1, 20}}},
      {64, 4, 4, 16, {{17, 17, 17, 13}, {40}}},
      {70, 6, 2, 12, {{33, 2, 35}, {9, 9, 9, 9, 9, 9, 9}}},
  };
  return cases;
}

// Fp32 softmax-weighted sums of <= 70 terms of O(1) values: relative rounding ~1e-6 at the
// worst row; 1e-5 relative (and 1e-5 of the value scale absolute) bounds it with margin and still
// fails a key let in or left out, which moves an output by O(1/len) >= 1e-2.
constexpr double kForwardTol = 1e-5;

TEST(DocumentMaskTest, AttentionForwardMatchesTheDefinition) {
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.Name());
    const std::vector<int32_t> ds = DocStarts(c);
    const std::vector<float> qkv = RandomVector(c.b() * c.t * c.row(), 11);
    std::vector<double> want_out, want_lse;
    Reference(c, ToDouble(qkv), ds, &want_out, &want_lse);
    ForEachSimdLevel([&] {
      std::vector<float> out = Poisoned(want_out.size()), lse = Poisoned(want_lse.size());
      kernels::cpu::AttentionForwardDocs(out.data(), lse.data(), qkv.data(), ds.data(), c.b(),
                                         c.t, c.h, c.kvh, c.d);
      ExpectAllNear(out, want_out, kForwardTol, kForwardTol, "out");
      ExpectAllNear(lse, want_lse, kForwardTol, kForwardTol, "lse");
    });
  }
}

TEST(DocumentMaskTest, AttentionBackwardMatchesNumericGradient) {
  for (const Case& c : Cases()) {
    if (c.t > 40) continue;  // central differences over every qkv element: small shapes only
    SCOPED_TRACE(c.Name());
    const std::vector<int32_t> ds = DocStarts(c);
    const std::vector<float> qkv = RandomVector(c.b() * c.t * c.row(), 12);
    const std::vector<float> dout = RandomVector(c.b() * c.t * c.h * c.d, 13);
    auto loss = [&](const std::vector<double>& x) {
      std::vector<double> o, l;
      Reference(c, x, ds, &o, &l);
      return Project(o, dout);
    };
    const std::vector<double> numeric = NumericGradient(loss, ToDouble(qkv));
    ForEachSimdLevel([&] {
      std::vector<float> out(c.b() * c.t * c.h * c.d), lse(c.b() * c.h * c.t);
      kernels::cpu::AttentionForwardDocs(out.data(), lse.data(), qkv.data(), ds.data(), c.b(),
                                         c.t, c.h, c.kvh, c.d);
      std::vector<float> dqkv = Poisoned(qkv.size());  // the *To form writes every element
      kernels::cpu::AttentionBackwardDocsTo(dqkv.data(), dout.data(), qkv.data(), out.data(),
                                            lse.data(), ds.data(), c.b(), c.t, c.h, c.kvh, c.d);
      ExpectGradNear(dqkv, numeric, "dqkv");
    });
  }
}

// An example inside a packed row gives what the plain causal kernels give for that example
// alone in a row padded to T (as unpacked training lays it out): the property packed ==
// unpacked training rests on. The two differ only in how rows are grouped into register tiles
// (the padded row's last rows fall into full groups), i.e. in FMA contraction and tile order of
// the same <= 70-term sums: a few ulp of O(1) values. 1e-5 (as kForwardTol) bounds that and
// fails any key let in or left out (O(1e-2)).
TEST(DocumentMaskTest, EachExampleEqualsTheExampleAlone) {
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.Name());
    const std::vector<int32_t> ds = DocStarts(c);
    const int64_t row = c.row(), hd = c.h * c.d;
    const std::vector<float> qkv = RandomVector(c.b() * c.t * row, 21);
    const std::vector<float> dout = RandomVector(c.b() * c.t * hd, 22);
    ForEachSimdLevel([&] {
      std::vector<float> out(c.b() * c.t * hd), lse(c.b() * c.h * c.t), dqkv(qkv.size());
      kernels::cpu::AttentionForwardDocs(out.data(), lse.data(), qkv.data(), ds.data(), c.b(),
                                         c.t, c.h, c.kvh, c.d);
      kernels::cpu::AttentionBackwardDocsTo(dqkv.data(), dout.data(), qkv.data(), out.data(),
                                            lse.data(), ds.data(), c.b(), c.t, c.h, c.kvh, c.d);
      for (int64_t bi = 0; bi < c.b(); ++bi) {
        for (const auto& [begin, end] : kernels::cpu::DocumentRuns(ds.data() + bi * c.t, c.t)) {
          SCOPED_TRACE("row " + std::to_string(bi) + " example at " + std::to_string(begin));
          const int64_t len = end - begin, first = bi * c.t + begin;
          // The example alone at the start of a padded row; the pad's dout is zero (its loss
          // is masked), so it adds nothing to the example's gradients.
          std::vector<float> q1(c.t * row, 0.5f), d1(c.t * hd, 0.0f);
          std::copy_n(qkv.begin() + first * row, len * row, q1.begin());
          std::copy_n(dout.begin() + first * hd, len * hd, d1.begin());
          std::vector<float> o1(c.t * hd), l1(c.h * c.t), g1(c.t * row);
          kernels::cpu::AttentionForward(o1.data(), l1.data(), q1.data(), 1, c.t, c.h, c.kvh,
                                         c.d);
          kernels::cpu::AttentionBackwardTo(g1.data(), d1.data(), q1.data(), o1.data(),
                                            l1.data(), 1, c.t, c.h, c.kvh, c.d);
          std::vector<float> got_o(out.begin() + first * hd, out.begin() + (first + len) * hd);
          std::vector<float> got_g(dqkv.begin() + first * row,
                                   dqkv.begin() + (first + len) * row);
          ExpectAllNear(got_o, ToDouble(std::vector<float>(o1.begin(), o1.begin() + len * hd)),
                        kForwardTol, kForwardTol, "out");
          ExpectAllNear(got_g, ToDouble(std::vector<float>(g1.begin(), g1.begin() + len * row)),
                        kForwardTol, kForwardTol, "dqkv");
          for (int64_t hi = 0; hi < c.h; ++hi) {
            for (int64_t i = 0; i < len; ++i) {
              EXPECT_NEAR(lse[(bi * c.h + hi) * c.t + begin + i], l1[hi * c.t + i], kForwardTol);
            }
          }
        }
      }
    });
  }
}

TEST(DocumentMaskTest, RopeRestartsAtEveryExample) {
  const Case c{24, 3, 1, 8, {{5, 11, 8}, {24}, {1, 1, 22}}};
  const std::vector<int32_t> ds = DocStarts(c);
  const int64_t stride = c.row();
  const std::vector<float> x0 = RandomVector(c.b() * c.t * stride, 31);
  std::vector<float> x = x0;
  kernels::cpu::RopeForwardDocs(x.data(), ds.data(), c.b(), c.t, c.h, c.d, stride, 10000.0f);
  for (int64_t bi = 0; bi < c.b(); ++bi) {
    for (const auto& [begin, end] : kernels::cpu::DocumentRuns(ds.data() + bi * c.t, c.t)) {
      // Positions 0.. of the example: the plain rotation from offset 0 over its tokens.
      std::vector<float> alone(x0.begin() + (bi * c.t + begin) * stride,
                               x0.begin() + (bi * c.t + end) * stride);
      kernels::cpu::RopeForward(alone.data(), 1, end - begin, c.h, c.d, stride, 0, 10000.0f);
      for (size_t i = 0; i < alone.size(); ++i) {
        ASSERT_EQ(x[(bi * c.t + begin) * stride + i], alone[i]) << "row " << bi;
      }
    }
  }
  // The backward is the inverse rotation: it brings the input back (to fp32 rounding of two
  // rotations by the same angle, ~2 ulp of O(1) values).
  kernels::cpu::RopeBackwardDocs(x.data(), ds.data(), c.b(), c.t, c.h, c.d, stride, 10000.0f);
  ExpectAllNear(x, ToDouble(x0), 1e-6, 1e-6, "inverse");
}

TEST(DocumentMaskTest, PositionEmbeddingsRestartAtEveryExample) {
  kernels::Backend& be = kernels::DefaultBackend();
  ASSERT_TRUE(be.SupportsDocumentMasking());
  const Case c{10, 1, 1, 1, {{4, 6}, {3, 3, 3}}};
  const std::vector<int32_t> ds = DocStarts(c);
  const int64_t ch = 5, n = c.b() * c.t;
  const std::vector<float> wpe = RandomVector(c.t * ch, 41);
  // Rows 3.. of the token rows (a sequence-parallel slice).
  const int64_t first = 3, rows = n - first;
  std::vector<float> x(rows * ch, 1.0f);
  be.PositionEmbeddingForwardDocs(kernels::F32View(x.data(), x.size()),
                                  kernels::F32View(const_cast<float*>(wpe.data()), wpe.size()),
                                  kernels::ConstView(ds.data(), DType::kI32, n), rows, ch, first,
                                  c.t);
  std::vector<double> want_dwpe(wpe.size(), 0.0);
  const std::vector<float> dx = RandomVector(rows * ch, 42);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t r = first + i, pos = r % c.t - ds[r];
    for (int64_t j = 0; j < ch; ++j) {
      ASSERT_EQ(x[i * ch + j], 1.0f + wpe[pos * ch + j]) << "row " << r;
      want_dwpe[pos * ch + j] += dx[i * ch + j];
    }
  }
  std::vector<float> dwpe(wpe.size(), 0.0f);
  be.PositionEmbeddingBackwardDocs(kernels::F32View(dwpe.data(), dwpe.size()),
                                   kernels::F32View(const_cast<float*>(dx.data()), dx.size()),
                                   kernels::ConstView(ds.data(), DType::kI32, n), rows, ch,
                                   first, c.t);
  // At most 3 fp32 additions per element: 1e-6 relative covers their rounding.
  ExpectAllNear(dwpe, want_dwpe, 1e-6, 1e-6, "dwpe");
}

TEST(DocumentMaskDeathTest, RejectsDocStartsThatAreNotContiguousRuns) {
  // Token 2 claims its example starts at 0, but token 1 started a new one at 1.
  const std::vector<int32_t> bad = {0, 1, 0, 0};
  EXPECT_DEATH(kernels::cpu::DocumentRuns(bad.data(), 4), "doc_starts");
}

}  // namespace
}  // namespace lattice
