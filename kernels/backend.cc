#include "kernels/backend.h"

#include <algorithm>
#include <utility>

#include "runtime/status.h"

namespace lattice::kernels {

Arena::Arena(Backend& backend, int64_t capacity_bytes) : backend_(backend) {
  if (capacity_bytes > 0) NewBlock(capacity_bytes);
}

void Arena::NewBlock(int64_t bytes) {
  blocks_.push_back(backend_.AllocateStorage(bytes));
  offset_ = 0;
  capacity_ += bytes;
}

void Arena::Reserve(int64_t bytes) {
  if (!blocks_.empty() && static_cast<int64_t>(blocks_.back()->bytes()) - offset_ >= bytes) {
    return;
  }
  NewBlock(std::max(bytes, kAlignBytes));
}

Tensor Arena::Allocate(Shape shape, DType dtype) {
  const int64_t bytes = AlignedBytes(NumElements(shape), dtype);
  Reserve(bytes);
  Tensor t(blocks_.back(), static_cast<size_t>(offset_), std::move(shape), dtype);
  offset_ += bytes;
  used_ += bytes;
  ++allocations_;
  return t;
}

// ---- Document masking: only backends that answer SupportsDocumentMasking() implement it ----

namespace {
[[noreturn]] void NoDocumentMasking(const char* op) {
  LATTICE_CHECK_MSG(false, op);
  __builtin_unreachable();
}
}  // namespace

namespace {

// The chunked classifier from the backend's own ops (kernels/classifier_cpu.cc's algorithm):
// per chunk of rows, its logits, losses and (train) their gradient in place, then the chunk's
// input gradient and its share of the weight gradient.
void ComposedClassifier(Backend& be, bool train, TensorView dhidden, TensorView dweight,
                        TensorView scratch, ConstView hidden, ConstView weight, ConstView targets,
                        ConstView loss_mask, const cpu::ClassifierArgs& a,
                        const cpu::ClassifierAllReduce& reduce, DeviceScalars& s, int slot) {
  const bool tp = static_cast<bool>(reduce);
  const int64_t chunk = a.chunk_tokens;
  LATTICE_CHECK_MSG(a.n >= 0 && a.c > 0 && a.rows > 0 && chunk > 0, "classifier: bad shape");
  LATTICE_CHECK_MSG(scratch.numel >= cpu::ClassifierScratchFloats(chunk, a.rows),
                    "classifier: scratch too small");
  LATTICE_CHECK_MSG(tp || (a.row_begin == 0 && a.v <= a.rows),
                    "classifier without a tensor-parallel reduce needs the whole vocabulary");
  // Scratch: logits (chunk, rows), then per chunk row its loss, its max, and its exp-sum and
  // target logit side by side (one all-reduce of 2m floats).
  const TensorView logits = scratch.Sub(0, chunk * a.rows);
  const TensorView losses = scratch.Sub(chunk * a.rows, chunk);
  const TensorView row_max = scratch.Sub(chunk * a.rows + chunk, chunk);
  const TensorView sums = scratch.Sub(chunk * a.rows + 2 * chunk, 2 * chunk);
  for (int64_t begin = 0; begin < a.n; begin += chunk) {
    const int64_t m = std::min(chunk, a.n - begin);
    const ConstView h = hidden.Sub(begin * a.c, m * a.c);
    const ConstView t = targets.Sub(begin, m);
    const ConstView mask = loss_mask.present() ? loss_mask.Sub(begin, m) : ConstView();
    const TensorView lg = logits.Sub(0, m * a.rows);
    const TensorView ls = losses.Sub(0, m);
    be.MatmulForward(lg, h, weight, ConstView(), m, a.c, a.rows);
    if (!tp) {
      if (train) {
        be.CrossEntropyForwardProbs(ls, lg, t, mask, m, a.v, a.rows);
        be.CrossEntropyBackwardProbs(lg, t, mask, a.dloss, m, a.v, a.rows);
      } else {
        be.CrossEntropyForward(ls, lg, t, mask, m, a.v, a.rows);
      }
    } else {
      const TensorView rm = row_max.Sub(0, m), sum_exp = sums.Sub(0, m), tl = sums.Sub(m, m);
      be.CrossEntropyShardMax(rm, lg, m, a.rows, a.row_begin, a.v);
      reduce(rm.f32(), m, cpu::ReduceOp::kMax);
      be.CrossEntropyShardStats(sum_exp, tl, lg, t, rm, m, a.rows, a.row_begin, a.v);
      reduce(sums.f32(), 2 * m, cpu::ReduceOp::kSum);
      be.CrossEntropyShardLoss(ls, rm, sum_exp, tl, t, mask, m);
      if (train) {
        be.CrossEntropyShardBackward(lg, lg, t, mask, rm, sum_exp, a.dloss, m, a.rows,
                                     a.row_begin, a.v);
      }
    }
    if (train) {
      be.MatmulBackwardTo(dhidden.Sub(begin * a.c, m * a.c), dweight, TensorView(), lg, h,
                          weight, m, a.c, a.rows);
    }
    be.AccumulateSum(s, slot, ls);
  }
}

}  // namespace

void Backend::ClassifierForwardBackward(TensorView dhidden, TensorView dweight,
                                        TensorView scratch, ConstView hidden, ConstView weight,
                                        ConstView targets, ConstView loss_mask,
                                        const cpu::ClassifierArgs& args,
                                        const cpu::ClassifierAllReduce& reduce,
                                        DeviceScalars& s, int slot) {
  ComposedClassifier(*this, /*train=*/true, dhidden, dweight, scratch, hidden, weight, targets,
                     loss_mask, args, reduce, s, slot);
}

void Backend::ClassifierForward(TensorView scratch, ConstView hidden, ConstView weight,
                                ConstView targets, ConstView loss_mask,
                                const cpu::ClassifierArgs& args,
                                const cpu::ClassifierAllReduce& reduce, DeviceScalars& s,
                                int slot) {
  ComposedClassifier(*this, /*train=*/false, TensorView(), TensorView(), scratch, hidden, weight,
                     targets, loss_mask, args, reduce, s, slot);
}

void Backend::AttentionForwardDocs(TensorView, TensorView, ConstView, ConstView, int64_t,
                                   int64_t, int64_t, int64_t, int64_t) {
  NoDocumentMasking("this backend has no document-masked attention.fwd");
}
void Backend::AttentionBackwardDocsTo(TensorView, ConstView, ConstView, ConstView, ConstView,
                                      ConstView, int64_t, int64_t, int64_t, int64_t, int64_t) {
  NoDocumentMasking("this backend has no document-masked attention.bwd");
}
void Backend::RopeForwardDocs(TensorView, ConstView, int64_t, int64_t, int64_t, int64_t, int64_t,
                              float) {
  NoDocumentMasking("this backend has no per-example rope.fwd");
}
void Backend::RopeBackwardDocs(TensorView, ConstView, int64_t, int64_t, int64_t, int64_t,
                               int64_t, float) {
  NoDocumentMasking("this backend has no per-example rope.bwd");
}
void Backend::PositionEmbeddingForwardDocs(TensorView, ConstView, ConstView, int64_t, int64_t,
                                           int64_t, int64_t) {
  NoDocumentMasking("this backend has no per-example position_embedding.fwd");
}
void Backend::PositionEmbeddingBackwardDocs(TensorView, ConstView, ConstView, int64_t, int64_t,
                                            int64_t, int64_t) {
  NoDocumentMasking("this backend has no per-example position_embedding.bwd");
}

}  // namespace lattice::kernels
