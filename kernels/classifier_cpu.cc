#include "kernels/classifier.h"

#include <algorithm>

#include "kernels/cross_entropy.h"
#include "kernels/matmul.h"
#include "kernels/vocab_parallel.h"
#include "runtime/status.h"

// Each step is an existing kernel, which opens its own profiler scope (matmul, cross_entropy),
// so the per-op table shows the classifier's GEMMs with the other GEMMs.
namespace lattice::kernels::cpu {
namespace {

void CheckArgs(const ClassifierArgs& a, const float* scratch, bool tensor_parallel) {
  LATTICE_CHECK(a.n >= 0 && a.c > 0 && a.v > 0 && a.rows > 0 && a.row_begin >= 0);
  LATTICE_CHECK_MSG(a.chunk_tokens > 0, "classifier: chunk_tokens must be positive");
  LATTICE_CHECK(scratch != nullptr);
  if (!tensor_parallel) {
    // One rank holds the whole padded vocabulary.
    LATTICE_CHECK_MSG(a.row_begin == 0 && a.v <= a.rows,
                      "classifier without a tensor-parallel reduce needs the whole vocabulary");
  }
}

ClassifierLoss Run(bool train, float* dhidden, float* dweight, float* scratch,
                   const float* hidden, const float* weight, const int32_t* targets,
                   const float* loss_mask, const ClassifierArgs& a,
                   const ClassifierAllReduce& reduce) {
  const bool tp = static_cast<bool>(reduce);
  CheckArgs(a, scratch, tp);
  if (train) LATTICE_CHECK(dhidden != nullptr);
  const int64_t chunk = a.chunk_tokens;
  // Scratch (ClassifierScratchFloats): logits (chunk, rows), then per chunk row its loss, its
  // max, and its exp-sum and target logit side by side, so that the two sums travel in one
  // all-reduce of 2m floats (m rows in this chunk).
  float* logits = scratch;
  float* losses = logits + chunk * a.rows;
  float* row_max = losses + chunk;
  float* sums = row_max + chunk;
  ClassifierLoss out;
  for (int64_t begin = 0; begin < a.n; begin += chunk) {
    const int64_t m = std::min(chunk, a.n - begin);
    const float* h = hidden + begin * a.c;
    const int32_t* t = targets + begin;
    const float* mask = loss_mask != nullptr ? loss_mask + begin : nullptr;
    MatmulForward(logits, h, weight, nullptr, m, a.c, a.rows);
    int64_t counted = 0;
    if (!tp) {
      if (train) {
        // The logits become the probabilities, then in place their gradient.
        counted = CrossEntropyForwardProbs(losses, logits, t, mask, m, a.v, a.rows);
        CrossEntropyBackwardProbs(logits, t, mask, a.dloss, m, a.v, a.rows);
      } else {
        counted = CrossEntropyForward(losses, logits, t, mask, m, a.v, a.rows);
      }
    } else {
      float* sum_exp = sums;
      float* target_logit = sums + m;
      CrossEntropyShardMax(row_max, logits, m, a.rows, a.row_begin, a.v);
      reduce(row_max, m, ReduceOp::kMax);
      CrossEntropyShardStats(sum_exp, target_logit, logits, t, row_max, m, a.rows, a.row_begin,
                             a.v);
      reduce(sums, 2 * m, ReduceOp::kSum);
      counted = CrossEntropyShardLoss(losses, row_max, sum_exp, target_logit, t, mask, m);
      if (train) {
        CrossEntropyShardBackward(logits, logits, t, mask, row_max, sum_exp, a.dloss, m, a.rows,
                                  a.row_begin, a.v);
      }
    }
    if (train) {
      // dhidden rows = dlogits @ weight (written); dweight += dlogits^T @ hidden rows.
      MatmulBackwardTo(dhidden + begin * a.c, dweight, nullptr, logits, h, weight, m, a.c,
                       a.rows);
    }
    // Row order across chunks, as the unfused head sums its (N) losses.
    for (int64_t i = 0; i < m; ++i) out.loss_sum += losses[i];
    out.count += counted;
  }
  return out;
}

}  // namespace

int64_t ClassifierScratchFloats(int64_t chunk_tokens, int64_t rows) {
  LATTICE_CHECK(chunk_tokens > 0 && rows > 0);
  int64_t floats = 0;
  LATTICE_CHECK_MSG(!__builtin_mul_overflow(chunk_tokens, rows + 4, &floats),
                    "classifier scratch size overflows int64");
  return floats;
}

ClassifierLoss ClassifierForwardBackward(float* dhidden, float* dweight, float* scratch,
                                         const float* hidden, const float* weight,
                                         const int32_t* targets, const float* loss_mask,
                                         const ClassifierArgs& args,
                                         const ClassifierAllReduce& reduce) {
  return Run(/*train=*/true, dhidden, dweight, scratch, hidden, weight, targets, loss_mask, args,
             reduce);
}

ClassifierLoss ClassifierForward(float* scratch, const float* hidden, const float* weight,
                                 const int32_t* targets, const float* loss_mask,
                                 const ClassifierArgs& args, const ClassifierAllReduce& reduce) {
  return Run(/*train=*/false, nullptr, nullptr, scratch, hidden, weight, targets, loss_mask, args,
             reduce);
}

}  // namespace lattice::kernels::cpu
