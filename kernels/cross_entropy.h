#ifndef LATTICE_KERNELS_CROSS_ENTROPY_H_
#define LATTICE_KERNELS_CROSS_ENTROPY_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// Softmax cross-entropy over a padded vocabulary. logits (N, Vp); only the first V columns are
// real tokens: the padding columns [V, Vp) are excluded from the softmax (as if -inf).
// targets (N): a target < 0 is ignored (loss 0, no gradient); loss_mask (N) may be null, else
// row i's loss is multiplied by loss_mask[i] (0 drops it).
// losses (N) = -log softmax(logits[i])[targets[i]] * mask ; returns the number of counted rows
// (targets >= 0 and mask != 0).
int64_t CrossEntropyForward(float* losses, const float* logits, const int32_t* targets,
                            const float* loss_mask, int64_t n, int64_t v, int64_t vp);

// dlogits (N, Vp) += (softmax(logits) - onehot(target)) * dloss * mask, for the V real
// columns; padding columns get 0. dloss is the same scalar for every row (e.g. 1/num_tokens).
// dlogits may alias logits (then it is overwritten, not accumulated): the fused path that
// saves the (N, Vp) buffer, as llm.c does.
void CrossEntropyBackward(float* dlogits, const float* logits, const int32_t* targets,
                          const float* loss_mask, float dloss, int64_t n, int64_t v, int64_t vp);

// The training head's pair, which computes each exp once: the forward returns the losses as
// CrossEntropyForward and replaces logits (N, Vp) by the softmax probabilities (padding
// columns, ignored and masked rows: 0); the backward turns those probabilities, in place, into
// the gradient (softmax - onehot) * dloss * mask that CrossEntropyBackward's in-place form
// writes.
int64_t CrossEntropyForwardProbs(float* losses, float* logits, const int32_t* targets,
                                 const float* loss_mask, int64_t n, int64_t v, int64_t vp);
void CrossEntropyBackwardProbs(float* probs, const int32_t* targets, const float* loss_mask,
                               float dloss, int64_t n, int64_t v, int64_t vp);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_CROSS_ENTROPY_H_
