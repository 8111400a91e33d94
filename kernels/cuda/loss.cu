// Embeddings (whole and vocab-parallel shards) and softmax cross-entropy (whole and sharded).
// Gradients that scatter by token are summed by one thread per column over the tokens in order:
// deterministic, no atomics.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace lattice::kernels::cuda {
namespace {

__global__ void EmbeddingForwardKernel(float* out, const int32_t* tokens, const float* wte,
                                       const float* wpe, int64_t b, int64_t t, int64_t c,
                                       int64_t pos_offset) {
  LATTICE_CUDA_FOR(i, b * t * c) {
    const int64_t row = i / c, j = i % c;
    float x = wte[static_cast<int64_t>(tokens[row]) * c + j];
    if (wpe != nullptr) x += wpe[(pos_offset + row % t) * c + j];
    out[i] = x;
  }
}

__global__ void TokenScatterKernel(float* dwte, const float* dout, const int32_t* tokens,
                                   int64_t n, int64_t c, int64_t row_begin, int64_t rows) {
  LATTICE_CUDA_FOR(j, c) {
    for (int64_t r = 0; r < n; ++r) {
      const int64_t tok = static_cast<int64_t>(tokens[r]) - row_begin;
      if (tok >= 0 && tok < rows) dwte[tok * c + j] += dout[r * c + j];
    }
  }
}

// dwpe[pos_offset + ti] += sum over the batch, in batch order.
__global__ void PositionGradKernel(float* dwpe, const float* dout, int64_t b, int64_t t, int64_t c,
                                   int64_t pos_offset) {
  LATTICE_CUDA_FOR(i, t * c) {
    const int64_t ti = i / c, j = i % c;
    float acc = 0;
    for (int64_t bi = 0; bi < b; ++bi) acc += dout[(bi * t + ti) * c + j];
    dwpe[(pos_offset + ti) * c + j] += acc;
  }
}

__global__ void PositionForwardKernel(float* x, const float* wpe, int64_t rows, int64_t c,
                                      int64_t first_row, int64_t t, int64_t pos0) {
  LATTICE_CUDA_FOR(i, rows * c) {
    const int64_t r = i / c, j = i % c;
    x[i] += wpe[((first_row + r) % t + pos0) * c + j];
  }
}

// Serial over rows per column, as the CPU's (positions repeat across the batch).
__global__ void PositionBackwardKernel(float* dwpe, const float* dx, int64_t rows, int64_t c,
                                       int64_t first_row, int64_t t) {
  LATTICE_CUDA_FOR(j, c) {
    for (int64_t r = 0; r < rows; ++r) dwpe[((first_row + r) % t) * c + j] += dx[r * c + j];
  }
}

__global__ void EmbeddingShardForwardKernel(float* out, const int32_t* tokens,
                                            const float* wte_rows, int64_t row_begin,
                                            int64_t rows, int64_t n, int64_t c) {
  LATTICE_CUDA_FOR(i, n * c) {
    const int64_t r = i / c, j = i % c;
    const int64_t tok = static_cast<int64_t>(tokens[r]) - row_begin;
    out[i] = tok >= 0 && tok < rows ? wte_rows[tok * c + j] : 0.0f;
  }
}

__device__ __forceinline__ bool Counted(const int32_t* targets, const float* mask, int64_t i) {
  return targets[i] >= 0 && (mask == nullptr || mask[i] != 0.0f);
}
__device__ __forceinline__ float MaskOf(const float* mask, int64_t i) {
  return mask == nullptr ? 1.0f : mask[i];
}

// One block per row: max and sum of exp over the V real columns.
__global__ void CrossEntropyForwardKernel(float* losses, float* probs_out, const float* logits,
                                          const int32_t* targets, const float* mask, int64_t v,
                                          int64_t vp) {
  __shared__ float scratch[32];
  const int64_t i = blockIdx.x;
  const float* x = logits + i * vp;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, x[j]);
  m = BlockReduce<float, true>(m, scratch);
  float sum = 0;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) sum += expf(x[j] - m);
  sum = BlockReduce<float, false>(sum, scratch);
  const bool counted = Counted(targets, mask, i);
  if (threadIdx.x == 0) {
    losses[i] = counted ? (m + logf(sum) - x[targets[i]]) * MaskOf(mask, i) : 0.0f;
  }
  if (probs_out != nullptr) {
    __syncthreads();  // every thread has read x[targets[i]] and the row before it is replaced
    float* p = probs_out + i * vp;
    const float inv = 1.0f / sum;
    for (int64_t j = threadIdx.x; j < vp; j += blockDim.x) {
      p[j] = counted && j < v ? expf(x[j] - m) * inv : 0.0f;
    }
  }
}

__global__ void CrossEntropyBackwardKernel(float* dlogits, const float* logits,
                                           const int32_t* targets, const float* mask,
                                           float dloss, int64_t v, int64_t vp, bool from_probs) {
  __shared__ float scratch[32];
  const int64_t i = blockIdx.x;
  const float* x = logits + i * vp;
  float* dx = dlogits + i * vp;
  const bool overwrite = dlogits == logits;
  const bool counted = Counted(targets, mask, i);
  float m = 0, inv = 1;
  if (!from_probs) {
    m = -INFINITY;
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, x[j]);
    m = BlockReduce<float, true>(m, scratch);
    float sum = 0;
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) sum += expf(x[j] - m);
    inv = 1.0f / BlockReduce<float, false>(sum, scratch);
    __syncthreads();  // all reads of the row are done before an in-place write
  }
  const float scale = counted ? dloss * MaskOf(mask, i) : 0.0f;
  const int64_t target = targets[i];
  for (int64_t j = threadIdx.x; j < vp; j += blockDim.x) {
    float g = 0;
    if (counted && j < v) {
      const float p = from_probs ? x[j] : expf(x[j] - m) * inv;
      g = (p - (j == target ? 1.0f : 0.0f)) * scale;
    }
    dx[j] = overwrite ? g : dx[j] + g;
  }
}

__global__ void ShardMaxKernel(float* row_max, const float* logits, int64_t cols,
                               int64_t col_begin, int64_t v) {
  __shared__ float scratch[32];
  const int64_t i = blockIdx.x;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    if (col_begin + j < v) m = fmaxf(m, logits[i * cols + j]);
  }
  m = BlockReduce<float, true>(m, scratch);
  if (threadIdx.x == 0) row_max[i] = m;
}

__global__ void ShardStatsKernel(float* sum_exp, float* target_logit, const float* logits,
                                 const int32_t* targets, const float* row_max, int64_t cols,
                                 int64_t col_begin, int64_t v) {
  __shared__ float scratch[32];
  const int64_t i = blockIdx.x;
  const float m = row_max[i];
  float sum = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    if (col_begin + j < v) sum += expf(logits[i * cols + j] - m);
  }
  sum = BlockReduce<float, false>(sum, scratch);
  if (threadIdx.x == 0) {
    sum_exp[i] = sum;
    const int64_t local = static_cast<int64_t>(targets[i]) - col_begin;
    target_logit[i] = targets[i] >= 0 && local >= 0 && local < cols ? logits[i * cols + local] : 0.0f;
  }
}

__global__ void ShardLossKernel(float* losses, const float* row_max, const float* sum_exp,
                                const float* target_logit, const int32_t* targets,
                                const float* mask, int64_t n) {
  LATTICE_CUDA_FOR(i, n) {
    losses[i] = Counted(targets, mask, i)
                    ? (row_max[i] + logf(sum_exp[i]) - target_logit[i]) * MaskOf(mask, i)
                    : 0.0f;
  }
}

__global__ void ShardBackwardKernel(float* dlogits, const float* logits, const int32_t* targets,
                                    const float* mask, const float* row_max, const float* sum_exp,
                                    float dloss, int64_t n, int64_t cols, int64_t col_begin,
                                    int64_t v) {
  const bool overwrite = dlogits == logits;
  LATTICE_CUDA_FOR(idx, n * cols) {
    const int64_t i = idx / cols, j = idx % cols;
    float g = 0;
    if (Counted(targets, mask, i) && col_begin + j < v) {
      const float p = expf(logits[idx] - row_max[i]) / sum_exp[i];
      g = (p - (col_begin + j == targets[i] ? 1.0f : 0.0f)) * dloss * MaskOf(mask, i);
    }
    dlogits[idx] = overwrite ? g : dlogits[idx] + g;
  }
}

}  // namespace

void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                      int64_t b, int64_t t, int64_t c, int64_t pos_offset, cudaStream_t s) {
  if (b * t * c > 0) {
    EmbeddingForwardKernel<<<GridFor(b * t * c), kThreads, 0, s>>>(out, tokens, wte, wpe, b, t, c,
                                                                   pos_offset);
  }
}
void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                       int64_t b, int64_t t, int64_t c, int64_t pos_offset, cudaStream_t s) {
  if (b * t * c == 0) return;
  if (dwte != nullptr) {
    TokenScatterKernel<<<GridFor(c), kThreads, 0, s>>>(dwte, dout, tokens, b * t, c, 0,
                                                       int64_t{1} << 40);
  }
  if (dwpe != nullptr) {
    PositionGradKernel<<<GridFor(t * c), kThreads, 0, s>>>(dwpe, dout, b, t, c, pos_offset);
  }
}
void PositionEmbeddingForward(float* x, const float* wpe, int64_t rows, int64_t c,
                              int64_t first_row, int64_t t, int64_t pos0, cudaStream_t s) {
  if (rows * c > 0) {
    PositionForwardKernel<<<GridFor(rows * c), kThreads, 0, s>>>(x, wpe, rows, c, first_row, t,
                                                                 pos0);
  }
}
void PositionEmbeddingBackward(float* dwpe, const float* dx, int64_t rows, int64_t c,
                               int64_t first_row, int64_t t, cudaStream_t s) {
  if (rows * c > 0) {
    PositionBackwardKernel<<<GridFor(c), kThreads, 0, s>>>(dwpe, dx, rows, c, first_row, t);
  }
}
void EmbeddingShardForward(float* out, const int32_t* tokens, const float* wte_rows,
                           int64_t row_begin, int64_t rows, int64_t n, int64_t c,
                           cudaStream_t s) {
  if (n * c > 0) {
    EmbeddingShardForwardKernel<<<GridFor(n * c), kThreads, 0, s>>>(out, tokens, wte_rows,
                                                                    row_begin, rows, n, c);
  }
}
void EmbeddingShardBackward(float* dwte_rows, const float* dout, const int32_t* tokens,
                            int64_t row_begin, int64_t rows, int64_t n, int64_t c,
                            cudaStream_t s) {
  if (n * c > 0) {
    TokenScatterKernel<<<GridFor(c), kThreads, 0, s>>>(dwte_rows, dout, tokens, n, c, row_begin,
                                                       rows);
  }
}
void CrossEntropyForward(float* losses, float* probs_out, const float* logits,
                         const int32_t* targets, const float* loss_mask, int64_t n, int64_t v,
                         int64_t vp, cudaStream_t s) {
  if (n > 0) {
    CrossEntropyForwardKernel<<<static_cast<unsigned>(n), kThreads, 0, s>>>(
        losses, probs_out, logits, targets, loss_mask, v, vp);
  }
}
void CrossEntropyBackward(float* dlogits, const float* logits, const int32_t* targets,
                          const float* loss_mask, float dloss, int64_t n, int64_t v, int64_t vp,
                          bool from_probs, cudaStream_t s) {
  if (n > 0) {
    CrossEntropyBackwardKernel<<<static_cast<unsigned>(n), kThreads, 0, s>>>(
        dlogits, logits, targets, loss_mask, dloss, v, vp, from_probs);
  }
}
void CrossEntropyShardMax(float* row_max, const float* logits, int64_t n, int64_t cols,
                          int64_t col_begin, int64_t v, cudaStream_t s) {
  if (n > 0) {
    ShardMaxKernel<<<static_cast<unsigned>(n), kThreads, 0, s>>>(row_max, logits, cols,
                                                                 col_begin, v);
  }
}
void CrossEntropyShardStats(float* sum_exp, float* target_logit, const float* logits,
                            const int32_t* targets, const float* row_max, int64_t n,
                            int64_t cols, int64_t col_begin, int64_t v, cudaStream_t s) {
  if (n > 0) {
    ShardStatsKernel<<<static_cast<unsigned>(n), kThreads, 0, s>>>(
        sum_exp, target_logit, logits, targets, row_max, cols, col_begin, v);
  }
}
void CrossEntropyShardLoss(float* losses, const float* row_max, const float* sum_exp,
                           const float* target_logit, const int32_t* targets,
                           const float* loss_mask, int64_t n, cudaStream_t s) {
  if (n > 0) {
    ShardLossKernel<<<GridFor(n), kThreads, 0, s>>>(losses, row_max, sum_exp, target_logit,
                                                    targets, loss_mask, n);
  }
}
void CrossEntropyShardBackward(float* dlogits, const float* logits, const int32_t* targets,
                               const float* loss_mask, const float* row_max,
                               const float* sum_exp, float dloss, int64_t n, int64_t cols,
                               int64_t col_begin, int64_t v, cudaStream_t s) {
  if (n * cols > 0) {
    ShardBackwardKernel<<<GridFor(n * cols), kThreads, 0, s>>>(
        dlogits, logits, targets, loss_mask, row_max, sum_exp, dloss, n, cols, col_begin, v);
  }
}

}  // namespace lattice::kernels::cuda
