#ifndef LATTICE_KERNELS_VOCAB_PARALLEL_H_
#define LATTICE_KERNELS_VOCAB_PARALLEL_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// Vocab-parallel (tensor-parallel) cross-entropy and embedding, as Megatron's
// vocab_parallel_cross_entropy and VocabParallelEmbedding. A rank holds the columns (for the
// output projection) or rows (for the embedding table) [begin, begin + count) of the padded
// vocabulary Vp; only global ids < V are real tokens. These kernels do the per-rank arithmetic;
// the tensor-parallel driver does the collectives between them:
//
//   CrossEntropyShardMax -> all-reduce(max) of row_max
//   CrossEntropyShardStats -> all-reduce(sum) of sum_exp and target_logit
//   CrossEntropyShardLoss (identical on every rank)
//   CrossEntropyShardBackward (no collective: each rank writes its own columns)
//
// With tp = 1 (col_begin = 0, cols = Vp) the results equal CrossEntropyForward/Backward's up to
// the order of the exp-sum. Conventions as in cross_entropy.h: a target < 0 is ignored (loss 0,
// no gradient), loss_mask (N) may be null (all 1), and a row with mask 0 counts as ignored.

// row_max (N) = max over this shard's real columns (global column < V) of logits[i, :];
// -inf for a shard that is all padding. logits (N, cols), global columns
// [col_begin, col_begin + cols).
void CrossEntropyShardMax(float* row_max, const float* logits, int64_t n, int64_t cols,
                          int64_t col_begin, int64_t v);

// row_max (N) is the GLOBAL max (after the all-reduce). sum_exp (N) = sum over this shard's real
// columns of exp(logits[i, j] - row_max[i]) (0 for an all-padding shard); target_logit (N) =
// logits[i, targets[i] - col_begin] if this shard holds targets[i], else 0 (also for targets < 0).
// Both are partial sums for the all-reduce. Checks targets[i] < V.
void CrossEntropyShardStats(float* sum_exp, float* target_logit, const float* logits,
                            const int32_t* targets, const float* row_max, int64_t n, int64_t cols,
                            int64_t col_begin, int64_t v);

// From the GLOBAL row_max, sum_exp and target_logit: losses (N) = (row_max + log(sum_exp) -
// target_logit) * mask, 0 for ignored rows. Returns the number of counted rows (targets >= 0
// and mask != 0), as CrossEntropyForward does.
int64_t CrossEntropyShardLoss(float* losses, const float* row_max, const float* sum_exp,
                              const float* target_logit, const int32_t* targets,
                              const float* loss_mask, int64_t n);

// dlogits (N, cols) += (softmax(logits) - onehot(target)) * dloss * mask on this shard's real
// columns, from the GLOBAL row_max and sum_exp; padding columns and ignored rows get nothing.
// dlogits may alias logits: then every element is overwritten (padding and ignored rows with 0),
// as in CrossEntropyBackward.
void CrossEntropyShardBackward(float* dlogits, const float* logits, const int32_t* targets,
                               const float* loss_mask, const float* row_max,
                               const float* sum_exp, float dloss, int64_t n, int64_t cols,
                               int64_t col_begin, int64_t v);

// out (N, C) = wte_rows[tokens[i] - row_begin] if row_begin <= tokens[i] < row_begin + rows,
// else 0: the all-reduce(sum) over the tensor-parallel group completes the lookup.
// wte_rows (rows, C) is this rank's slice of the (Vp, C) table. No position embedding.
void EmbeddingShardForward(float* out, const int32_t* tokens, const float* wte_rows,
                           int64_t row_begin, int64_t rows, int64_t n, int64_t c);

// dwte_rows (rows, C) += dout[i] for every token i this shard holds (others skipped).
// Deterministic: summed in token order whatever the thread count.
void EmbeddingShardBackward(float* dwte_rows, const float* dout, const int32_t* tokens,
                            int64_t row_begin, int64_t rows, int64_t n, int64_t c);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_VOCAB_PARALLEL_H_
