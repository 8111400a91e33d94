// The chunked classifier: the final linear layer (the lm head) fused with softmax
// cross-entropy, taken a chunk of tokens at a time so that the (tokens, vocab) logits are never
// stored whole: a 128K vocabulary at 8K tokens per micro-batch would be 4 GiB of fp32 logits
// and as much again for their gradient. The idea of llm.c's fused classifier and Liger
// Kernel's fused linear cross-entropy: for each chunk of rows, compute its logits, its losses
// and (training) the logits' gradient in place, then the chunk's input gradient and its share
// of the weight gradient, and drop the logits. The scratch is one chunk's logits plus a few
// floats per row.
//
// Numbers: each chunk runs the same GEMMs (kernels/matmul.h) and cross-entropy kernels
// (kernels/cross_entropy.h, kernels/vocab_parallel.h) as the unfused head, on its rows, so
// every per-row value is the unfused path's computation; only the weight gradient's sum over
// tokens is taken chunk by chunk (chunk partial sums added in order), a different rounding of
// the same sum.
//
// Vocab-parallel: with tensor parallelism each rank holds the rows [row_begin, row_begin +
// rows) of the (Vp, C) head and computes only its columns of the logits. A row's max, its
// exp-sum and its target logit are reduced over the tensor-parallel group between the steps,
// as in Megatron's vocab_parallel_cross_entropy; the kernel asks the caller's all-reduce
// callback for them (one max and one sum per chunk), so it knows no communicator and tests can
// simulate the group in one process. The input gradient it writes is this rank's partial sum:
// the caller all-reduces (or, with sequence parallelism, reduce-scatters) it over the group, as
// the column-parallel head's backward does today.
#ifndef LATTICE_KERNELS_CLASSIFIER_H_
#define LATTICE_KERNELS_CLASSIFIER_H_

#include <cstdint>
#include <functional>

namespace lattice::kernels::cpu {

enum class ReduceOp { kSum, kMax };

// In place over the tensor-parallel group: data (count) becomes the element-wise op of every
// rank's data (count). Every rank calls it in the same order with the same counts.
using ClassifierAllReduce = std::function<void(float* data, int64_t count, ReduceOp op)>;

struct ClassifierArgs {
  int64_t n = 0;             // tokens: rows of hidden, targets, dhidden
  int64_t c = 0;             // hidden size
  int64_t v = 0;             // real vocabulary size: global ids >= v are padding (no softmax)
  int64_t rows = 0;          // weight rows held here: Vp, or this rank's Vp / tp
  int64_t row_begin = 0;     // global vocab id of weight row 0 (0 without tensor parallelism)
  int64_t chunk_tokens = 0;  // tokens per chunk (> 0; the last chunk may be shorter)
  // Training: d(total loss) / d(each counted token's loss), e.g. 1 / tokens in the global
  // batch; the fused pass needs it before the forward, which the engine knows then.
  float dloss = 0;
};

struct ClassifierLoss {
  double loss_sum = 0;  // sum over rows of loss * mask, added in row order in double
  int64_t count = 0;    // counted rows: target >= 0 and mask != 0
};

// Floats of scratch a call needs: chunk_tokens x rows of logits plus 4 per chunk row (losses,
// max, exp-sum and target logit). Allocate once, from the arena, for the largest call.
int64_t ClassifierScratchFloats(int64_t chunk_tokens, int64_t rows);

// Loss and gradients of the head, for training.
//   hidden (N, C): the final norm's output; weight (rows, C): the head (tied embedding layout,
//   one row per vocab id); targets (N): a target < 0 is ignored (loss 0, no gradient), others
//   < v; loss_mask (N) or null: row i's loss weighted by loss_mask[i], 0 drops it.
//   dhidden (N, C) is WRITTEN (the rows' input gradient; 0 for ignored rows); dweight (rows, C)
//   ACCUMULATES (+=; null: not wanted); scratch: ClassifierScratchFloats floats.
//   reduce: null for one rank (then row_begin = 0 and v <= rows); else the tensor-parallel
//   all-reduce, and dhidden is this rank's partial sum (header comment).
// Returns the loss sum and count, identical on every rank of the group.
ClassifierLoss ClassifierForwardBackward(float* dhidden, float* dweight, float* scratch,
                                         const float* hidden, const float* weight,
                                         const int32_t* targets, const float* loss_mask,
                                         const ClassifierArgs& args,
                                         const ClassifierAllReduce& reduce = nullptr);

// The loss alone (evaluation): as above without gradients; args.dloss is not used.
ClassifierLoss ClassifierForward(float* scratch, const float* hidden, const float* weight,
                                 const int32_t* targets, const float* loss_mask,
                                 const ClassifierArgs& args,
                                 const ClassifierAllReduce& reduce = nullptr);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_CLASSIFIER_H_
