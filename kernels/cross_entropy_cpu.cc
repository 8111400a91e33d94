#include "kernels/cross_entropy.h"
#include "kernels/simd.h"
#include "runtime/profiler.h"
#include "runtime/status.h"

// The row loops (max, exp-sum with the max subtracted, one exp per element) live in
// kernels/simd/ops.inl.
namespace lattice::kernels::cpu {
namespace {

void CheckTargets(const int32_t* targets, int64_t n, int64_t v, int64_t vp) {
  LATTICE_CHECK(v > 0 && v <= vp);
  for (int64_t i = 0; i < n; ++i) {
    LATTICE_CHECK_MSG(targets[i] < v, "cross-entropy target outside the vocabulary");
  }
}

}  // namespace

int64_t CrossEntropyForward(float* losses, const float* logits, const int32_t* targets,
                            const float* loss_mask, int64_t n, int64_t v, int64_t vp) {
  profiler::Scope scope("cross_entropy.fwd", profiler::Category::kElementwise);
  CheckTargets(targets, n, v, vp);
  return internal::Simd().cross_entropy_forward(losses, logits, targets, loss_mask, n, v, vp);
}

void CrossEntropyBackward(float* dlogits, const float* logits, const int32_t* targets,
                          const float* loss_mask, float dloss, int64_t n, int64_t v, int64_t vp) {
  profiler::Scope scope("cross_entropy.bwd", profiler::Category::kElementwise);
  CheckTargets(targets, n, v, vp);
  internal::Simd().cross_entropy_backward(dlogits, logits, targets, loss_mask, dloss, n, v, vp);
}

int64_t CrossEntropyForwardProbs(float* losses, float* logits, const int32_t* targets,
                                 const float* loss_mask, int64_t n, int64_t v, int64_t vp) {
  profiler::Scope scope("cross_entropy.fwd", profiler::Category::kElementwise);
  CheckTargets(targets, n, v, vp);
  return internal::Simd().cross_entropy_forward_probs(losses, logits, targets, loss_mask, n, v,
                                                      vp);
}

void CrossEntropyBackwardProbs(float* probs, const int32_t* targets, const float* loss_mask,
                               float dloss, int64_t n, int64_t v, int64_t vp) {
  profiler::Scope scope("cross_entropy.bwd", profiler::Category::kElementwise);
  CheckTargets(targets, n, v, vp);
  internal::Simd().cross_entropy_backward_probs(probs, targets, loss_mask, dloss, n, v, vp);
}

}  // namespace lattice::kernels::cpu
