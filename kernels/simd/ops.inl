// The vector loops of lattice's CPU step, compiled once per SIMD level by
// kernels/simd/ops_<level>.cc (kernels/simd.h). The includer defines LATTICE_SIMD_NS (the
// namespace), LATTICE_SIMD_LEVEL and LATTICE_SIMD_TABLE, and includes every header first.
//
// Rules for this file, because it is compiled under a `#pragma GCC target`:
//  - no #include, and no inline function or template defined here with external linkage: an
//    out-of-line copy (a weak symbol, e.g. in a -O0 build) would carry this level's
//    instructions, and the linker could keep it for callers that run on any CPU. Everything
//    lives in an anonymous namespace except the table; standard-library templates are avoided
//    too (GCC compiles their instantiations for the template's own target, but the rule is
//    simpler than that fact);
//  - no argument checks (LATTICE_CHECK): the public kernels make them before calling in.
// Plain loops with `#pragma omp simd` let the compiler pick the vector width of the level.
// Combined `parallel for simd` loops say `if (parallel : ...)`: a plain `if` clause applies to
// the simd construct too (OpenMP 5), which compiled every loop below the threading threshold
// as scalar code.

namespace lattice::kernels::cpu::internal::LATTICE_SIMD_NS {
namespace {

inline float Max(float a, float b) { return a > b ? a : b; }
inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void Zero(float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = 0.0f;
}

// ---- GELU (tanh form) -----------------------------------------------------------------------
// torch's constants for approximate="tanh": gelu(x) = 0.5 x (1 + tanh(u)),
// u = sqrt(2/pi) (x + 0.044715 x^3).
constexpr float kGeluBeta = static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5);
constexpr float kGeluKappa = 0.044715f;

// 0.5 (1 + tanh(u)) = sigmoid(2u) exactly, so gelu(x) = x * sigmoid(2u) = x / (1 + exp(-2u)):
// the same function with one vectorisable exp, and accurate for very negative x where
// 1 + tanh(u) cancels.
inline float Gelu(float x) {
  const float u = kGeluBeta * (x + kGeluKappa * (x * x * x));
  return x / (1.0f + ExpF(-2.0f * u));
}

// With s = sigmoid(2u): 1 + tanh(u) = 2s and 1 - tanh(u)^2 = 4 s (1 - s), so
// gelu'(x) = s + 2 x s (1 - s) u'(x), u'(x) = kBeta (1 + 3 kKappa x^2); 1 - s = e s with
// e = exp(-2u), which keeps the tail accurate.
inline float GeluGrad(float x) {
  const float x2 = x * x;
  const float u = kGeluBeta * (x + kGeluKappa * (x2 * x));
  const float e = ExpF(-2.0f * u);
  const float s = 1.0f / (1.0f + e);
  const float du = kGeluBeta * (1.0f + 3.0f * kGeluKappa * x2);
  // e * s * s underflows to 0 / stays finite where e overflows: use s * (e * s) and guard
  // e = inf (x very negative) where the limit of the second term is 0.
  const float one_minus_s = e * s;
  const float second = (e == INFINITY) ? 0.0f : 2.0f * x * s * one_minus_s * du;
  return s + second;
}

void GeluForward(float* out, const float* inp, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : Parallel(n))
  for (int64_t i = 0; i < n; ++i) out[i] = Gelu(inp[i]);
}

void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n, bool accumulate) {
  if (accumulate) {
#pragma omp parallel for simd schedule(static) if (parallel : Parallel(n))
    for (int64_t i = 0; i < n; ++i) dinp[i] += GeluGrad(inp[i]) * dout[i];
  } else {
#pragma omp parallel for simd schedule(static) if (parallel : Parallel(n))
    for (int64_t i = 0; i < n; ++i) dinp[i] = GeluGrad(inp[i]) * dout[i];
  }
}

void BiasGeluForward(float* pre, float* out, const float* bias, int64_t n, int64_t f) {
#pragma omp parallel for schedule(static) if (Parallel(n * f))
  for (int64_t r = 0; r < n; ++r) {
    float* p = pre + r * f;
    float* y = out + r * f;
    if (bias != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < f; ++j) {
        const float x = p[j] + bias[j];
        p[j] = x;
        y[j] = Gelu(x);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < f; ++j) y[j] = Gelu(p[j]);
    }
  }
}

// ---- Cross-entropy ----------------------------------------------------------------------------

float RowMax(const float* x, int64_t v) {
  float mx = kNegInf;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < v; ++j) mx = x[j] > mx ? x[j] : mx;
  return mx;
}

float SumExp(const float* x, int64_t v, float mx) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < v; ++j) sum += ExpF(x[j] - mx);
  return sum;
}

// Rows that contribute nothing: ignored target, or a zero loss-mask weight.
bool Skipped(const int32_t* targets, const float* loss_mask, int64_t i) {
  return targets[i] < 0 || (loss_mask != nullptr && loss_mask[i] == 0.0f);
}

int64_t CrossEntropyForward(float* losses, const float* logits, const int32_t* targets,
                            const float* loss_mask, int64_t n, int64_t v, int64_t vp) {
  int64_t counted = 0;
#pragma omp parallel for schedule(static) reduction(+ : counted) if (Parallel(n * v))
  for (int64_t i = 0; i < n; ++i) {
    if (Skipped(targets, loss_mask, i)) {
      losses[i] = 0.0f;
      continue;
    }
    const float* x = logits + i * vp;
    const float mx = RowMax(x, v);
    // loss = logsumexp(x) - x[target], with the max subtracted before exp.
    const float lse = mx + __builtin_logf(SumExp(x, v, mx));
    float loss = lse - x[targets[i]];
    if (loss_mask != nullptr) loss *= loss_mask[i];
    losses[i] = loss;
    ++counted;
  }
  return counted;
}

void CrossEntropyBackward(float* dlogits, const float* logits, const int32_t* targets,
                          const float* loss_mask, float dloss, int64_t n, int64_t v, int64_t vp) {
  // In the fused (aliased) form the logits are replaced by their gradient, so every column,
  // padding included, must be written; otherwise the gradient is added.
  const bool in_place = dlogits == logits;
#pragma omp parallel for schedule(static) if (Parallel(n * v))
  for (int64_t i = 0; i < n; ++i) {
    float* dx = dlogits + i * vp;
    if (Skipped(targets, loss_mask, i)) {
      if (in_place) Zero(dx, vp);
      continue;
    }
    const int32_t target = targets[i];
    const float* x = logits + i * vp;
    const float scale = dloss * (loss_mask != nullptr ? loss_mask[i] : 1.0f);
    const float mx = RowMax(x, v);
    if (in_place) {
      // Store exp(x - max) while summing, then scale: one exp per element.
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < v; ++j) {
        const float e = ExpF(x[j] - mx);
        dx[j] = e;
        sum += e;
      }
      const float factor = scale / sum;
#pragma omp simd
      for (int64_t j = 0; j < v; ++j) dx[j] *= factor;
      Zero(dx + v, vp - v);
    } else {
      const float factor = scale / SumExp(x, v, mx);
#pragma omp simd
      for (int64_t j = 0; j < v; ++j) dx[j] += ExpF(x[j] - mx) * factor;
    }
    dx[target] -= scale;
  }
}

// The loss, and the logits replaced by softmax probabilities (padding columns and skipped rows
// zero), so that the backward is one scaling pass without a second exp.
int64_t CrossEntropyForwardProbs(float* losses, float* logits, const int32_t* targets,
                                 const float* loss_mask, int64_t n, int64_t v, int64_t vp) {
  int64_t counted = 0;
#pragma omp parallel for schedule(static) reduction(+ : counted) if (Parallel(n * v))
  for (int64_t i = 0; i < n; ++i) {
    float* x = logits + i * vp;
    if (Skipped(targets, loss_mask, i)) {
      losses[i] = 0.0f;
      Zero(x, vp);
      continue;
    }
    const float target_logit = x[targets[i]];
    const float mx = RowMax(x, v);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < v; ++j) {
      const float e = ExpF(x[j] - mx);
      x[j] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < v; ++j) x[j] *= inv;
    Zero(x + v, vp - v);
    float loss = mx + __builtin_logf(sum) - target_logit;
    if (loss_mask != nullptr) loss *= loss_mask[i];
    losses[i] = loss;
    ++counted;
  }
  return counted;
}

void CrossEntropyBackwardProbs(float* probs, const int32_t* targets, const float* loss_mask,
                               float dloss, int64_t n, int64_t v, int64_t vp) {
#pragma omp parallel for schedule(static) if (Parallel(n * v))
  for (int64_t i = 0; i < n; ++i) {
    if (Skipped(targets, loss_mask, i)) continue;  // already all zero
    float* dx = probs + i * vp;
    const float scale = dloss * (loss_mask != nullptr ? loss_mask[i] : 1.0f);
#pragma omp simd
    for (int64_t j = 0; j < v; ++j) dx[j] *= scale;
    dx[targets[i]] -= scale;
  }
}

// ---- Attention (causal, GQA), tiled; probabilities recomputed in backward -------------------
//
// The forward takes the queries of a head kGroupRows rows at a time. For each group it
// computes the scores against every key the group sees, s = scale * Q K^T (K transposed once
// per task, so the products are vector multiply-adds across keys), the exact softmax of each
// row (max, then exp and sum), and O = P V / l; it stores each row's log-sum-exp m + log l.
// The backward recomputes P = exp(s - lse) tile by tile. No (T, T) array is stored: memory is
// O(T D) per head, as in flash attention (the whole key range of a row is one block here,
// which a CPU's caches hold for the sequence lengths lattice trains).
//
// The small products are register-tiled: R rows by W columns (two vectors) of accumulators,
// each element's sum running over the contraction index in order. So an element's arithmetic
// is the same whatever R, W, the tile or the thread count, and a decode step (R = 1, the same
// softmax) reproduces the forward's row bit for bit. Masked entries enter the products as
// exact zeros.
constexpr int64_t kLanes = LATTICE_SIMD_LANES;  // floats per vector register at this level
// Rows per register tile. A tile keeps R x (1 or 2 vectors) accumulators: at AVX-512 (32
// registers) 8 rows give 8-16 independent multiply-add chains, enough to cover the FMA latency
// (4 cycles) on both FMA ports even in the one-vector remainder tiles, and 8 broadcasts per 2
// vector loads; 4 rows leave room in the 16 registers of the lower levels.
constexpr int kGroupRows = kLanes == 16 ? 8 : 4;
constexpr int64_t kTileRows = 16;  // query rows per backward tile (a multiple of kGroupRows)

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// out[r][c] = scale * sum_x a[r][x] * bt[x][c], r < R, c < W.
template <int R, int W>
inline void DotTile(float* out, int64_t ldo, const float* a, int64_t lda, const float* bt,
                    int64_t ldb, int64_t d, float scale) {
  float acc[R][W];
  for (int r = 0; r < R; ++r) {
#pragma omp simd
    for (int c = 0; c < W; ++c) acc[r][c] = 0.0f;
  }
  for (int64_t x = 0; x < d; ++x) {
    const float* b = bt + x * ldb;
    for (int r = 0; r < R; ++r) {
      const float ar = a[r * lda + x];
#pragma omp simd
      for (int c = 0; c < W; ++c) acc[r][c] += ar * b[c];
    }
  }
  for (int r = 0; r < R; ++r) {
#pragma omp simd
    for (int c = 0; c < W; ++c) out[r * ldo + c] = acc[r][c] * scale;
  }
}

// out (R, len) = scale * a (R, d) bt (d, len); bt and out have room (zeros in bt) up to len
// rounded up to kLanes.
template <int R>
void DotRows(float* out, int64_t ldo, const float* a, int64_t lda, const float* bt, int64_t ldb,
             int64_t len, int64_t d, float scale) {
  int64_t j = 0;
  for (; j + 2 * kLanes <= len; j += 2 * kLanes) {
    DotTile<R, 2 * kLanes>(out + j, ldo, a, lda, bt + j, ldb, d, scale);
  }
  for (; j < len; j += kLanes) DotTile<R, kLanes>(out + j, ldo, a, lda, bt + j, ldb, d, scale);
}

// out[r][c] = sum_j p[r][j] * b[j][c], r < R, c < W, j < len.
template <int R, int W>
inline void WeightedTile(float* out, int64_t ldo, const float* p, int64_t ldp, const float* b,
                         int64_t ldb, int64_t len) {
  float acc[R][W];
  for (int r = 0; r < R; ++r) {
#pragma omp simd
    for (int c = 0; c < W; ++c) acc[r][c] = 0.0f;
  }
  for (int64_t j = 0; j < len; ++j) {
    const float* bj = b + j * ldb;
    for (int r = 0; r < R; ++r) {
      const float pr = p[r * ldp + j];
#pragma omp simd
      for (int c = 0; c < W; ++c) acc[r][c] += pr * bj[c];
    }
  }
  for (int r = 0; r < R; ++r) {
#pragma omp simd
    for (int c = 0; c < W; ++c) out[r * ldo + c] = acc[r][c];
  }
}

// out (R, d) = p (R, len) b (len, d).
template <int R>
void WeightedRows(float* out, int64_t ldo, const float* p, int64_t ldp, const float* b,
                  int64_t ldb, int64_t len, int64_t d) {
  int64_t x = 0;
  for (; x + 2 * kLanes <= d; x += 2 * kLanes) {
    WeightedTile<R, 2 * kLanes>(out + x, ldo, p, ldp, b + x, ldb, len);
  }
  for (; x + kLanes <= d; x += kLanes) {
    WeightedTile<R, kLanes>(out + x, ldo, p, ldp, b + x, ldb, len);
  }
  for (; x < d; ++x) WeightedTile<R, 1>(out + x, ldo, p, ldp, b + x, ldb, len);
}

// out[j][c] += sum_r p[r][j] * a[r][c], j < J, c < W, r < rows.
template <int J, int W>
inline void OuterTile(float* out, int64_t ldo, const float* p, int64_t ldp, const float* a,
                      int64_t lda, int64_t rows) {
  float acc[J][W];
  for (int j = 0; j < J; ++j) {
#pragma omp simd
    for (int c = 0; c < W; ++c) acc[j][c] = out[j * ldo + c];
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* ar = a + r * lda;
    for (int j = 0; j < J; ++j) {
      const float pj = p[r * ldp + j];
#pragma omp simd
      for (int c = 0; c < W; ++c) acc[j][c] += pj * ar[c];
    }
  }
  for (int j = 0; j < J; ++j) {
#pragma omp simd
    for (int c = 0; c < W; ++c) out[j * ldo + c] = acc[j][c];
  }
}

template <int J>
void OuterColumns(float* out, int64_t ldo, const float* p, int64_t ldp, const float* a,
                  int64_t lda, int64_t rows, int64_t d) {
  int64_t x = 0;
  for (; x + 2 * kLanes <= d; x += 2 * kLanes) {
    OuterTile<J, 2 * kLanes>(out + x, ldo, p, ldp, a + x, lda, rows);
  }
  for (; x + kLanes <= d; x += kLanes) OuterTile<J, kLanes>(out + x, ldo, p, ldp, a + x, lda, rows);
  for (; x < d; ++x) OuterTile<J, 1>(out + x, ldo, p, ldp, a + x, lda, rows);
}

// out (len, d) += p (rows, len)^T a (rows, d).
void AccumulateOuter(float* out, int64_t ldo, const float* p, int64_t ldp, const float* a,
                     int64_t lda, int64_t rows, int64_t len, int64_t d) {
  int64_t j = 0;
  for (; j + kGroupRows <= len; j += kGroupRows) {
    OuterColumns<kGroupRows>(out + j * ldo, ldo, p + j, ldp, a, lda, rows, d);
  }
  for (; j < len; ++j) OuterColumns<1>(out + j * ldo, ldo, p + j, ldp, a, lda, rows, d);
}

// One vector register of this level (the GCC/clang vector extension: the same source gives SSE,
// AVX2 or AVX-512 code under the includer's target pragma).
typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));

inline VecF LoadVec(const float* p) {
  VecF v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void StoreVec(float* p, VecF v) { __builtin_memcpy(p, &v, sizeof(v)); }

// The low and the high halves of a and b interleaved: {a0, b0, a1, b1, ...}.
#if LATTICE_SIMD_LANES == 16
#define LATTICE_INTERLEAVE_LO(a, b) \
  __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)
#define LATTICE_INTERLEAVE_HI(a, b) \
  __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)
#elif LATTICE_SIMD_LANES == 8
#define LATTICE_INTERLEAVE_LO(a, b) __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11)
#define LATTICE_INTERLEAVE_HI(a, b) __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15)
#elif LATTICE_SIMD_LANES == 4
#define LATTICE_INTERLEAVE_LO(a, b) __builtin_shufflevector(a, b, 0, 4, 1, 5)
#define LATTICE_INTERLEAVE_HI(a, b) __builtin_shufflevector(a, b, 2, 6, 3, 7)
#else
#error "LATTICE_SIMD_LANES must be 4, 8 or 16"
#endif

// Transposes a kLanes x kLanes block in registers: row x at bt + x * ldb = column x of the rows
// at m (stride `stride`). log2(kLanes) rounds, each interleaving rows i and i + kLanes/2 (which
// moves one bit of every element's row index into its column index), transpose the block: 64
// two-source shuffles for 16 x 16 at AVX-512 instead of 256 scalar strided stores, which took
// a fifth of the attention's time.
inline void TransposeBlock(float* bt, int64_t ldb, const float* m, int64_t stride) {
  VecF r[kLanes];
#pragma GCC unroll 16
  for (int64_t i = 0; i < kLanes; ++i) r[i] = LoadVec(m + i * stride);
#pragma GCC unroll 4
  for (int64_t bit = 1; bit < kLanes; bit *= 2) {
    VecF n[kLanes];
#pragma GCC unroll 16
    for (int64_t i = 0; i < kLanes / 2; ++i) {
      n[2 * i] = LATTICE_INTERLEAVE_LO(r[i], r[i + kLanes / 2]);
      n[2 * i + 1] = LATTICE_INTERLEAVE_HI(r[i], r[i + kLanes / 2]);
    }
#pragma GCC unroll 16
    for (int64_t i = 0; i < kLanes; ++i) r[i] = n[i];
  }
#pragma GCC unroll 16
  for (int64_t x = 0; x < kLanes; ++x) StoreVec(bt + x * ldb, r[x]);
}
#undef LATTICE_INTERLEAVE_LO
#undef LATTICE_INTERLEAVE_HI

// bt (d, ldb) = rows [0, len) of m (stride `stride`) transposed; columns [len, pad) zero.
// Whole kLanes x kLanes blocks in registers, the edges element by element.
void Transpose(float* bt, int64_t ldb, const float* m, int64_t stride, int64_t len, int64_t pad,
               int64_t d) {
  const int64_t len_blocks = len / kLanes * kLanes;
  const int64_t d_blocks = d / kLanes * kLanes;
  for (int64_t j = 0; j < len_blocks; j += kLanes) {
    for (int64_t x = 0; x < d_blocks; x += kLanes) {
      TransposeBlock(bt + x * ldb + j, ldb, m + j * stride + x, stride);
    }
    for (int64_t jj = j; jj < j + kLanes; ++jj) {
      const float* mj = m + jj * stride;
      for (int64_t x = d_blocks; x < d; ++x) bt[x * ldb + jj] = mj[x];
    }
  }
  for (int64_t j = len_blocks; j < len; ++j) {
    const float* mj = m + j * stride;
    for (int64_t x = 0; x < d; ++x) bt[x * ldb + j] = mj[x];
  }
  for (int64_t x = 0; x < d; ++x) {
    for (int64_t j = len; j < pad; ++j) bt[x * ldb + j] = 0.0f;
  }
}

// dst (len, d) contiguous = rows [0, len) of m (stride `stride`): the values (or keys) a task
// reads for every row group, packed so that they share no cache sets with the qkv rows around
// them (a head's rows in qkv lie (H + 2 KVH) D floats apart).
void PackRows(float* dst, const float* m, int64_t stride, int64_t len, int64_t d) {
  for (int64_t j = 0; j < len; ++j) {
#pragma omp simd
    for (int64_t x = 0; x < d; ++x) dst[j * d + x] = m[j * stride + x];
  }
}

// A row of scores becomes exp(s - max) over the `valid` keys the row sees and 0 up to `len`;
// returns {max, sum}. One out-of-line function for the forward and the decode step.
struct RowStats {
  float max, sum;
};
[[gnu::noinline]] RowStats SoftmaxRow(float* s, int64_t valid, int64_t len) {
  // Whole vectors only, the last one masked: at these row lengths a scalar remainder loop
  // (up to kLanes - 1 exps per row) cost as much as the vector part. s has room (computed
  // scores) up to valid rounded up to kLanes. The sums are per lane, added in lane order at
  // the end: one fixed order, the same for the forward and decode.
  const int64_t body = valid / kLanes * kLanes;
  const int rest = static_cast<int>(valid - body);
  float mxv[kLanes], sumv[kLanes];
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    mxv[l] = kNegInf;
    sumv[l] = 0.0f;
  }
  for (int64_t j0 = 0; j0 < body; j0 += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) mxv[l] = s[j0 + l] > mxv[l] ? s[j0 + l] : mxv[l];
  }
  if (rest > 0) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float x = l < rest ? s[body + l] : kNegInf;
      mxv[l] = x > mxv[l] ? x : mxv[l];
    }
  }
  float mx = mxv[0];
  for (int l = 1; l < kLanes; ++l) mx = Max(mx, mxv[l]);
  for (int64_t j0 = 0; j0 < body; j0 += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float e = ExpF(s[j0 + l] - mx);
      s[j0 + l] = e;
      sumv[l] += e;
    }
  }
  if (rest > 0) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float e = l < rest ? ExpF(s[body + l] - mx) : 0.0f;
      s[body + l] = e;
      sumv[l] += e;
    }
  }
  float sum = 0.0f;
  for (int l = 0; l < kLanes; ++l) sum += sumv[l];
  for (int64_t j = RoundUp(valid, kLanes); j < len; ++j) s[j] = 0.0f;
  return {mx, sum};
}

[[gnu::noinline]] void FinishRow(float* out, float* lse, const float* o, RowStats st,
                                 int64_t d) {
  const float inv = 1.0f / st.sum;
#pragma omp simd
  for (int64_t x = 0; x < d; ++x) out[x] = o[x] * inv;
  if (lse != nullptr) *lse = st.max + __builtin_logf(st.sum);
}

// Rows [i, i + R) of a head: scores, softmax, weighted values, output and lse. v (len, ldv).
template <int R>
void ForwardRows(float* out, float* lse, float* s, int64_t lds, float* o, const float* q,
                 int64_t row, const float* kt, int64_t ldk, const float* v, int64_t ldv,
                 int64_t i, int64_t h, int64_t d, float scale) {
  const int64_t len = i + R;  // keys seen by the group's last row
  DotRows<R>(s, lds, q, row, kt, ldk, len, d, scale);
  RowStats st[R];
  for (int r = 0; r < R; ++r) st[r] = SoftmaxRow(s + r * lds, i + r + 1, len);
  WeightedRows<R>(o, d, s, lds, v, ldv, len, d);
  for (int r = 0; r < R; ++r) FinishRow(out + r * h * d, lse + r, o + r * d, st[r], d);
}

void AttentionForward(float* out, float* lse, const float* qkv, int64_t b, int64_t t, int64_t h,
                      int64_t kvh, int64_t d) {
  const int64_t row = (h + 2 * kvh) * d;  // qkv floats per token
  const int64_t group = h / kvh;
  const float scale = 1.0f / __builtin_sqrtf(static_cast<float>(d));
  const int64_t tasks = b * h;
  const int64_t ldk = RoundUp(t, 2 * kLanes);
#pragma omp parallel if (Parallel(b * h * t * t * d))
  {
    float* kt = new float[d * ldk];
    float* vc = new float[t * d];
    float* s = new float[kGroupRows * ldk];
    float* o = new float[kGroupRows * d];
    // One task per (batch, head): its keys are transposed, and its values packed, once for
    // all its rows.
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t hi = task % h;
      const int64_t bi = task / h;
      const int64_t g = hi / group;
      const float* base = qkv + bi * t * row;
      Transpose(kt, ldk, base + (h + g) * d, row, t, ldk, d);
      PackRows(vc, base + (h + kvh + g) * d, row, t, d);
      float* out_rows = out + (bi * t) * h * d + hi * d;
      float* lse_rows = lse + (bi * h + hi) * t;
      const float* q = base + hi * d;
      int64_t i = 0;
      for (; i + kGroupRows <= t; i += kGroupRows) {
        ForwardRows<kGroupRows>(out_rows + i * h * d, lse_rows + i, s, ldk, o, q + i * row, row,
                                kt, ldk, vc, d, i, h, d, scale);
      }
      for (; i < t; ++i) {
        ForwardRows<1>(out_rows + i * h * d, lse_rows + i, s, ldk, o, q + i * row, row, kt, ldk,
                       vc, d, i, h, d, scale);
      }
    }
    delete[] kt;
    delete[] vc;
    delete[] s;
    delete[] o;
  }
}

void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                     int64_t len, int64_t h, int64_t kvh, int64_t d) {
  const int64_t group = h / kvh;
  const int64_t stride = kvh * d;  // cache floats per position
  const float scale = 1.0f / __builtin_sqrtf(static_cast<float>(d));
  const int64_t ldk = RoundUp(len, 2 * kLanes);
#pragma omp parallel if (Parallel(h * len * d))
  {
    float* kt = new float[d * ldk];
    float* s = new float[ldk];
    float* o = new float[d];
#pragma omp for schedule(static)
    for (int64_t hi = 0; hi < h; ++hi) {
      const int64_t g = hi / group;
      Transpose(kt, ldk, k_cache + g * d, stride, len, RoundUp(len, kLanes), d);
      DotRows<1>(s, ldk, q + hi * d, d, kt, ldk, len, d, scale);
      const RowStats st = SoftmaxRow(s, len, len);
      WeightedRows<1>(o, d, s, ldk, v_cache + g * d, stride, len, d);
      FinishRow(out + hi * d, nullptr, o, st, d);
    }
    delete[] kt;
    delete[] s;
    delete[] o;
  }
}

// Rows [i, i + R) of a backward tile: p = exp(s - lse) and ds = p (dp - D) into the tile
// (zero up to `pad`), and dq = ds K of those rows added to dqkv. kc: the keys packed (len, d).
template <int R>
void BackwardRows(float* p, float* ds, int64_t ldp, float* dq, const float* q, const float* dy,
                  int64_t ldy, int64_t row, const float* kt, const float* vt, int64_t ldk,
                  const float* kc, const float* row_lse, const float* di, float* dq_out,
                  int64_t i, int64_t pad, int64_t d, float scale, bool accumulate) {
  const int64_t len = i + R;
  DotRows<R>(p, ldp, q, row, kt, ldk, len, d, scale);
  DotRows<R>(ds, ldp, dy, ldy, vt, ldk, len, d, 1.0f);
  for (int r = 0; r < R; ++r) {
    float* pr = p + r * ldp;
    float* dsr = ds + r * ldp;
    const int64_t valid = i + r + 1;
    const float li = row_lse[i + r], dii = di[i + r];
    // Whole vectors, the masked entries selected to zero (no scalar remainder: see
    // SoftmaxRow); the scores were computed up to len rounded up to kLanes.
    const int64_t full = RoundUp(valid, kLanes);
    for (int64_t j0 = 0; j0 < full; j0 += kLanes) {
      const int rest = static_cast<int>(valid - j0);
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        const float pj = l < rest ? ExpF(pr[j0 + l] - li) : 0.0f;
        pr[j0 + l] = pj;
        dsr[j0 + l] = l < rest ? pj * (dsr[j0 + l] - dii) : 0.0f;
      }
    }
    for (int64_t j = full; j < pad; ++j) pr[j] = dsr[j] = 0.0f;
  }
  WeightedRows<R>(dq, d, ds, ldp, kc, d, len, d);
  for (int r = 0; r < R; ++r) {
    float* dst = dq_out + r * row;
    if (accumulate) {
#pragma omp simd
      for (int64_t x = 0; x < d; ++x) dst[x] += scale * dq[r * d + x];
    } else {
#pragma omp simd
      for (int64_t x = 0; x < d; ++x) dst[x] = scale * dq[r * d + x];
    }
  }
}

// Backward, one task per (batch, kv head): the task owns dK/dV of its kv head and dQ of the
// query heads of its group, so nothing is shared between tasks and every sum runs in a fixed
// order. Per tile of query rows:
//   p = exp(s - lse), dp = dout V^T, ds = p (dp - D_i) with D_i = dout_i . out_i,
//   dQ = scale ds K, dK += scale ds^T Q, dV += p^T dout.
// Every element of dqkv is stored once (each query row's dQ by its tile, dK and dV at the end
// of their task), so the written form (accumulate = false) covers it all.
void AttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                       const float* lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                       int64_t d, bool accumulate) {
  const int64_t row = (h + 2 * kvh) * d;
  const int64_t group = h / kvh;
  const float scale = 1.0f / __builtin_sqrtf(static_cast<float>(d));
  const int64_t tasks = b * kvh;
  const int64_t ldk = RoundUp(t, 2 * kLanes);
  const int64_t hd = h * d;  // dout / out floats per token
#pragma omp parallel if (Parallel(b * h * t * t * d))
  {
    float* kt = new float[d * ldk];
    float* vt = new float[d * ldk];
    float* kc = new float[t * d];
    float* p = new float[kTileRows * ldk];
    float* ds = new float[kTileRows * ldk];
    float* dq = new float[kGroupRows * d];
    float* dk = new float[t * d];
    float* dv = new float[t * d];
    float* di = new float[t];
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t g = task % kvh;
      const int64_t bi = task / kvh;
      const float* base = qkv + bi * t * row;
      const float* k = base + (h + g) * d;
      const float* v = base + (h + kvh + g) * d;
      float* dbase = dqkv + bi * t * row;
      Transpose(kt, ldk, k, row, t, ldk, d);
      Transpose(vt, ldk, v, row, t, ldk, d);
      PackRows(kc, k, row, t, d);
      Zero(dk, t * d);
      Zero(dv, t * d);
      for (int64_t hi = g * group; hi < (g + 1) * group; ++hi) {
        const float* dy = dout + bi * t * hd + hi * d;  // row i at dy + i * hd
        const float* y = out + bi * t * hd + hi * d;
        const float* row_lse = lse + (bi * h + hi) * t;
        for (int64_t i = 0; i < t; ++i) {
          float sdot = 0.0f;
#pragma omp simd reduction(+ : sdot)
          for (int64_t x = 0; x < d; ++x) sdot += dy[i * hd + x] * y[i * hd + x];
          di[i] = sdot;
        }
        for (int64_t i0 = 0; i0 < t; i0 += kTileRows) {
          const int64_t rows = Min(kTileRows, t - i0);
          const int64_t len = i0 + rows;  // keys seen by the tile's last row
          const float* qi = base + i0 * row + hi * d;
          const float* dyi = dy + i0 * hd;
          float* dq_out = dbase + i0 * row + hi * d;
          int64_t r = 0;
          for (; r + kGroupRows <= rows; r += kGroupRows) {
            BackwardRows<kGroupRows>(p + r * ldk, ds + r * ldk, ldk, dq, qi + r * row,
                                     dyi + r * hd, hd, row, kt, vt, ldk, kc, row_lse, di,
                                     dq_out + r * row, i0 + r, len, d, scale, accumulate);
          }
          for (; r < rows; ++r) {
            BackwardRows<1>(p + r * ldk, ds + r * ldk, ldk, dq, qi + r * row, dyi + r * hd, hd,
                            row, kt, vt, ldk, kc, row_lse, di, dq_out + r * row, i0 + r, len, d,
                            scale, accumulate);
          }
          AccumulateOuter(dv, d, p, ldk, dyi, hd, rows, len, d);
          AccumulateOuter(dk, d, ds, ldk, qi, row, rows, len, d);
        }
      }
      for (int64_t j = 0; j < t; ++j) {
        float* dkr = dbase + j * row + (h + g) * d;
        float* dvr = dbase + j * row + (h + kvh + g) * d;
        if (accumulate) {
#pragma omp simd
          for (int64_t x = 0; x < d; ++x) {
            dkr[x] += scale * dk[j * d + x];
            dvr[x] += dv[j * d + x];
          }
        } else {
#pragma omp simd
          for (int64_t x = 0; x < d; ++x) {
            dkr[x] = scale * dk[j * d + x];
            dvr[x] = dv[j * d + x];
          }
        }
      }
    }
    delete[] kt;
    delete[] vt;
    delete[] kc;
    delete[] p;
    delete[] ds;
    delete[] dq;
    delete[] dk;
    delete[] dv;
    delete[] di;
  }
}

// ---- LayerNorm --------------------------------------------------------------------------------

void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int64_t n, int64_t c, float eps) {
  const float inv_c = 1.0f / static_cast<float>(c);
#pragma omp parallel for schedule(static) if (Parallel(n * c))
  for (int64_t i = 0; i < n; ++i) {
    const float* x = inp + i * c;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < c; ++j) sum += x[j];
    const float m = sum * inv_c;
    // Two passes (mean, then squared deviations) instead of E[x^2] - m^2, which cancels
    // catastrophically when |mean| >> std.
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < c; ++j) {
      const float dx = x[j] - m;
      sq += dx * dx;
    }
    const float s = 1.0f / __builtin_sqrtf(sq * inv_c + eps);
    float* y = out + i * c;
    if (bias != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) y[j] = (x[j] - m) * s * weight[j] + bias[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) y[j] = (x[j] - m) * s * weight[j];
    }
    mean[i] = m;
    rstd[i] = s;
  }
}

void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t n, int64_t c) {
  const float inv_c = 1.0f / static_cast<float>(c);
  if (dinp != nullptr) {
    // With xhat = (x - mean) * rstd and g = dout * weight:
    //   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
#pragma omp parallel for schedule(static) if (Parallel(n * c))
    for (int64_t i = 0; i < n; ++i) {
      const float* x = inp + i * c;
      const float* dy = dout + i * c;
      const float m = mean[i];
      const float s = rstd[i];
      float g_sum = 0.0f;
      float gx_sum = 0.0f;
#pragma omp simd reduction(+ : g_sum, gx_sum)
      for (int64_t j = 0; j < c; ++j) {
        const float g = dy[j] * weight[j];
        g_sum += g;
        gx_sum += g * ((x[j] - m) * s);
      }
      const float g_mean = g_sum * inv_c;
      const float gx_mean = gx_sum * inv_c;
      float* dx = dinp + i * c;
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) {
        const float xhat = (x[j] - m) * s;
        dx[j] += (dy[j] * weight[j] - g_mean - xhat * gx_mean) * s;
      }
    }
  }
  if (dweight == nullptr && dbias == nullptr) return;
  // Parameter gradients reduce over rows: one task per column block, rows in order, double
  // accumulators, so the sums do not depend on the thread count.
  const int64_t width = ColumnBlockWidth(c);
  const int64_t blocks = (c + width - 1) / width;
#pragma omp parallel for schedule(static) if (Parallel(n * c))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t j0 = blk * width;
    const int64_t w = Min(width, c - j0);
    double acc_w[kMaxColumnBlock];
    double acc_b[kMaxColumnBlock];
    for (int64_t j = 0; j < kMaxColumnBlock; ++j) acc_w[j] = acc_b[j] = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const float* x = inp + i * c + j0;
      const float* dy = dout + i * c + j0;
      const float m = mean[i];
      const float s = rstd[i];
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        acc_w[j] += static_cast<double>(dy[j] * ((x[j] - m) * s));
        acc_b[j] += dy[j];
      }
    }
    if (dweight != nullptr) {
      for (int64_t j = 0; j < w; ++j) dweight[j0 + j] += static_cast<float>(acc_w[j]);
    }
    if (dbias != nullptr) {
      for (int64_t j = 0; j < w; ++j) dbias[j0 + j] += static_cast<float>(acc_b[j]);
    }
  }
}

// ---- AdamW ------------------------------------------------------------------------------------

void AdamW(float* param, const float* grad, float* m, float* v, int64_t n,
           const AdamWArgs& args) {
  // The scalars of kernels/adamw.h's AdamWStepConstants (double, then fp32, as torch), used in
  // fp32 elementwise ops in torch's order (torch.optim.AdamW, single-tensor path). One fused
  // pass over the four arrays (torch's foreach path makes about seven).
  const AdamWConstants k = AdamWStepConstants(args);
  const float decay = k.decay, b1 = k.b1, b2 = k.b2;
  const float one_minus_b1 = k.one_minus_b1, one_minus_b2 = k.one_minus_b2;
  const float step_size = k.step_size, bc2_sqrt = k.bc2_sqrt, eps = k.eps;
  const float grad_scale = k.grad_scale;
#pragma omp parallel for simd schedule(static) if (parallel : Parallel(n))
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * grad_scale;
    const float mi = m[i] * b1 + g * one_minus_b1;
    const float vi = v[i] * b2 + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = __builtin_sqrtf(vi) / bc2_sqrt + eps;
    param[i] = param[i] * decay - step_size * (mi / denom);
  }
}

// ---- Small elementwise passes -----------------------------------------------------------------

void Add(float* out, const float* a, const float* b, int64_t n) {
  // No restrict: out may alias a (in-place residual add).
#pragma omp parallel for simd schedule(static) if (parallel : Parallel(n))
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void Accumulate(float* dst, const float* src, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : Parallel(n))
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

void ColumnSums(float* dst, const float* x, int64_t n, int64_t c) {
  // Row-major walk over column blocks: contiguous loads, and each column's sum is taken in
  // row order in double whatever the thread count, so the result is deterministic.
  const int64_t width = ColumnBlockWidth(c);
  const int64_t blocks = (c + width - 1) / width;
#pragma omp parallel for schedule(static) if (Parallel(n * c))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t j0 = blk * width;
    const int64_t w = Min(width, c - j0);
    double acc[kMaxColumnBlock];
    for (int64_t j = 0; j < kMaxColumnBlock; ++j) acc[j] = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const float* r = x + i * c + j0;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) acc[j] += r[j];
    }
    for (int64_t j = 0; j < w; ++j) dst[j0 + j] += static_cast<float>(acc[j]);
  }
}

// Fixed-size chunks, each summed on its own and then added in chunk order: the result does not
// depend on the thread count, so a run's clipping is reproducible on any machine.
constexpr int64_t kSquaresChunk = int64_t{1} << 15;

double ChunkSumOfSquares(const float* x, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

double SumOfSquares(const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t chunks = (n + kSquaresChunk - 1) / kSquaresChunk;
  if (chunks == 1) return ChunkSumOfSquares(x, n);
  double* partial = new double[chunks];
#pragma omp parallel for schedule(static)
  for (int64_t ci = 0; ci < chunks; ++ci) {
    const int64_t begin = ci * kSquaresChunk;
    partial[ci] = ChunkSumOfSquares(x + begin, Min(kSquaresChunk, n - begin));
  }
  double total = 0.0;
  for (int64_t ci = 0; ci < chunks; ++ci) total += partial[ci];
  delete[] partial;
  return total;
}

// One vector of zeros stored at p (aligned to the vector's size) past the caches. x86 has the
// instruction at every level (SSE's movntps); elsewhere an ordinary store.
inline void StreamZeroVector(float* p) {
#if defined(__x86_64__) && LATTICE_SIMD_LANES == 16
  _mm512_stream_ps(p, _mm512_setzero_ps());
#elif defined(__x86_64__) && LATTICE_SIMD_LANES == 8
  _mm256_stream_ps(p, _mm256_setzero_ps());
#elif defined(__x86_64__)
  _mm_stream_ps(p, _mm_setzero_ps());
#else
  for (int64_t l = 0; l < kLanes; ++l) p[l] = 0.0f;
#endif
}

void ZeroFloats(float* x, int64_t n, bool streaming) {
  if (!streaming) {
#pragma omp parallel for simd schedule(static) if (parallel : Parallel(n))
    for (int64_t i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  constexpr int64_t kAlign = kLanes * static_cast<int64_t>(sizeof(float));
#pragma omp parallel
  {
    // Each thread an equal contiguous share; vectors from the first aligned address on.
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t begin = n * id / threads, end = n * (id + 1) / threads;
    int64_t i = begin;
    while (i < end && reinterpret_cast<uintptr_t>(x + i) % kAlign != 0) x[i++] = 0.0f;
    for (; i + kLanes <= end; i += kLanes) StreamZeroVector(x + i);
    for (; i < end; ++i) x[i] = 0.0f;
#if defined(__x86_64__)
    // Streaming stores are weakly ordered: drain them before the region's closing barrier
    // lets other threads read the buffer.
    _mm_sfence();
#endif
  }
}

}  // namespace
}  // namespace lattice::kernels::cpu::internal::LATTICE_SIMD_NS

namespace lattice::kernels::cpu::internal {

#define LATTICE_SIMD_STR2(x) #x
#define LATTICE_SIMD_STR(x) LATTICE_SIMD_STR2(x)
extern const SimdOps LATTICE_SIMD_TABLE = {
    SimdLevel::LATTICE_SIMD_LEVEL,
    LATTICE_SIMD_STR(LATTICE_SIMD_NS),
    LATTICE_SIMD_NS::GeluForward,
    LATTICE_SIMD_NS::GeluBackward,
    LATTICE_SIMD_NS::BiasGeluForward,
    LATTICE_SIMD_NS::CrossEntropyForward,
    LATTICE_SIMD_NS::CrossEntropyBackward,
    LATTICE_SIMD_NS::CrossEntropyForwardProbs,
    LATTICE_SIMD_NS::CrossEntropyBackwardProbs,
    LATTICE_SIMD_NS::AttentionForward,
    LATTICE_SIMD_NS::AttentionBackward,
    LATTICE_SIMD_NS::AttentionDecode,
    LATTICE_SIMD_NS::LayerNormForward,
    LATTICE_SIMD_NS::LayerNormBackward,
    LATTICE_SIMD_NS::AdamW,
    LATTICE_SIMD_NS::Add,
    LATTICE_SIMD_NS::Accumulate,
    LATTICE_SIMD_NS::ColumnSums,
    LATTICE_SIMD_NS::SumOfSquares,
    LATTICE_SIMD_NS::ZeroFloats,
};
#undef LATTICE_SIMD_STR
#undef LATTICE_SIMD_STR2

}  // namespace lattice::kernels::cpu::internal
