// Mixed-precision storage on a backend that computes in fp32 (the CPU's): a Backend that runs
// every op on an inner backend and then rounds what the op STORED into activation memory to the
// compute dtype (bf16 or fp16, round to nearest even: kernels/mixed_precision.h), so an fp32
// buffer holds exactly the values a GPU's bf16/fp16 tensor would hold after the same op. The
// arithmetic inside an op stays fp32, as a GPU's does (tensor cores and fused kernels accumulate
// in fp32 and round once at the store).
//
// What is rounded and what is not (docs/precision.md):
//   rounded  every activation an op writes and every activation gradient (out, dinp, dqkv,
//            dx, the norm and matmul outputs, the residual stream, the classifier's dhidden);
//   fp32     the norms' mean and rstd, attention's log-sum-exp, the per-token losses, the device
//            scalars, every PARAMETER gradient (dweight, dbias, dwte, dwpe: Megatron's fp32
//            main_grad, accumulated with +=), the optimizer (fp32 masters and moments) and
//            copies, casts, zero and fill (which store what they are given).
// The parameters the ops read are the optimizer's compute copy (the fp32 master rounded to the
// compute dtype, model/optimizer.h), so weights are rounded once per update, not per op.
//
// The inner backend must outlive this one. Memory, streams and scalars are the inner
// backend's: tensors of one are tensors of the other.
#ifndef LATTICE_KERNELS_STORAGE_ROUNDING_BACKEND_H_
#define LATTICE_KERNELS_STORAGE_ROUNDING_BACKEND_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"

namespace lattice::kernels {

class StorageRoundingBackend final : public Backend {
 public:
  // storage: kBF16 or kF16.
  StorageRoundingBackend(Backend& inner, DType storage);

  Backend& inner() const { return inner_; }
  DType storage() const { return storage_; }

  std::string name() const override { return inner_.name(); }
  Device device() const override { return inner_.device(); }
  std::shared_ptr<Storage> AllocateStorage(int64_t bytes) override {
    return inner_.AllocateStorage(bytes);
  }
  int64_t storage_allocations() const override { return inner_.storage_allocations(); }
  DeviceScalars AllocateScalars(int n) override { return inner_.AllocateScalars(n); }
  void Cast(TensorView dst, ConstView src) override { inner_.Cast(dst, src); }
  void Copy(TensorView dst, ConstView src) override { inner_.Copy(dst, src); }
  void CopyFromHost(TensorView dst, const void* host, DType host_dtype, int64_t n) override {
    inner_.CopyFromHost(dst, host, host_dtype, n);
  }
  void CopyToHost(void* host, DType host_dtype, ConstView src, int64_t n) override {
    inner_.CopyToHost(host, host_dtype, src, n);
  }
  void Zero(TensorView x) override { inner_.Zero(x); }
  void Fill(TensorView x, float value) override { inner_.Fill(x, value); }
  void RoundThrough(TensorView x, DType storage) override { inner_.RoundThrough(x, storage); }
  Stream& stream() override { return inner_.stream(); }
  std::unique_ptr<Event> CreateEvent() override { return inner_.CreateEvent(); }
  void SetNumThreads(int n) override { inner_.SetNumThreads(n); }
  int NumThreads() const override { return inner_.NumThreads(); }
  int DefaultThreads(int affinity_cores, int node_cores, int local_ranks) const override {
    return inner_.DefaultThreads(affinity_cores, node_cores, local_ranks);
  }
  std::vector<std::pair<std::string, std::string>> Properties() const override;
  double GemmRate(int64_t m, int64_t n, int64_t k, double seconds) override {
    return inner_.GemmRate(m, n, k, seconds);
  }

  void ZeroScalars(DeviceScalars& s) override { inner_.ZeroScalars(s); }
  void AccumulateSum(DeviceScalars& s, int slot, ConstView x) override {
    inner_.AccumulateSum(s, slot, x);
  }
  void AccumulateSumOfSquares(DeviceScalars& s, int slot, ConstView x) override {
    inner_.AccumulateSumOfSquares(s, slot, x);
  }
  void ReadScalars(const DeviceScalars& s, double* host) override { inner_.ReadScalars(s, host); }

  void MatmulForward(TensorView out, ConstView inp, ConstView weight, ConstView bias, int64_t n,
                     int64_t c, int64_t oc) override;
  void MatmulBackward(TensorView dinp, TensorView dweight, TensorView dbias, ConstView dout,
                      ConstView inp, ConstView weight, int64_t n, int64_t c,
                      int64_t oc) override;
  void MatmulBackwardTo(TensorView dinp, TensorView dweight, TensorView dbias, ConstView dout,
                        ConstView inp, ConstView weight, int64_t n, int64_t c,
                        int64_t oc) override;
  void AddRowBias(TensorView x, ConstView bias, int64_t rows, int64_t c) override;
  void LayerNormForward(TensorView out, TensorView mean, TensorView rstd, ConstView inp,
                        ConstView weight, ConstView bias, int64_t n, int64_t c,
                        float eps) override;
  void LayerNormBackward(TensorView dinp, TensorView dweight, TensorView dbias, ConstView dout,
                         ConstView inp, ConstView weight, ConstView mean, ConstView rstd,
                         int64_t n, int64_t c) override;
  void RmsNormForward(TensorView out, TensorView rstd, ConstView inp, ConstView weight, int64_t n,
                      int64_t c, float eps) override;
  void RmsNormBackward(TensorView dinp, TensorView dweight, ConstView dout, ConstView inp,
                       ConstView weight, ConstView rstd, int64_t n, int64_t c) override;
  void AttentionForward(TensorView out, TensorView lse, ConstView qkv, int64_t b, int64_t t,
                        int64_t h, int64_t kvh, int64_t d) override;
  void AttentionBackward(TensorView dqkv, ConstView dout, ConstView qkv, ConstView out,
                         ConstView lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                         int64_t d) override;
  void AttentionBackwardTo(TensorView dqkv, ConstView dout, ConstView qkv, ConstView out,
                           ConstView lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                           int64_t d) override;
  void AttentionDecode(TensorView out, ConstView q, ConstView k_cache, ConstView v_cache,
                       int64_t len, int64_t h, int64_t kvh, int64_t d) override;
  void GeluForward(TensorView out, ConstView inp, int64_t n) override;
  void GeluBackward(TensorView dinp, ConstView inp, ConstView dout, int64_t n) override;
  void GeluBackwardTo(TensorView dinp, ConstView inp, ConstView dout, int64_t n) override;
  void BiasGeluForward(TensorView pre, TensorView out, ConstView bias, int64_t n,
                       int64_t f) override;
  void SwiGluForward(TensorView out, ConstView inp, int64_t n, int64_t f) override;
  void SwiGluBackward(TensorView dinp, ConstView inp, ConstView dout, int64_t n,
                      int64_t f) override;
  void RopeForward(TensorView x, int64_t b, int64_t t, int64_t heads, int64_t d,
                   int64_t row_stride, int64_t pos_offset, float theta) override;
  void RopeBackward(TensorView dx, int64_t b, int64_t t, int64_t heads, int64_t d,
                    int64_t row_stride, int64_t pos_offset, float theta) override;
  void EmbeddingForward(TensorView out, ConstView tokens, ConstView wte, ConstView wpe, int64_t b,
                        int64_t t, int64_t c, int64_t pos_offset) override;
  void EmbeddingBackward(TensorView dwte, TensorView dwpe, ConstView dout, ConstView tokens,
                         int64_t b, int64_t t, int64_t c, int64_t pos_offset) override {
    inner_.EmbeddingBackward(dwte, dwpe, dout, tokens, b, t, c, pos_offset);
  }
  void PositionEmbeddingForward(TensorView x, ConstView wpe, int64_t rows, int64_t c,
                                int64_t first_row, int64_t t, int64_t pos0) override;
  void PositionEmbeddingBackward(TensorView dwpe, ConstView dx, int64_t rows, int64_t c,
                                 int64_t first_row, int64_t t) override {
    inner_.PositionEmbeddingBackward(dwpe, dx, rows, c, first_row, t);
  }
  bool SupportsDocumentMasking() const override { return inner_.SupportsDocumentMasking(); }
  void AttentionForwardDocs(TensorView out, TensorView lse, ConstView qkv, ConstView doc_starts,
                            int64_t b, int64_t t, int64_t h, int64_t kvh, int64_t d) override;
  void AttentionBackwardDocsTo(TensorView dqkv, ConstView dout, ConstView qkv, ConstView out,
                               ConstView lse, ConstView doc_starts, int64_t b, int64_t t,
                               int64_t h, int64_t kvh, int64_t d) override;
  void RopeForwardDocs(TensorView x, ConstView doc_starts, int64_t b, int64_t t, int64_t heads,
                       int64_t d, int64_t row_stride, float theta) override;
  void RopeBackwardDocs(TensorView dx, ConstView doc_starts, int64_t b, int64_t t, int64_t heads,
                        int64_t d, int64_t row_stride, float theta) override;
  void PositionEmbeddingForwardDocs(TensorView x, ConstView wpe, ConstView doc_starts,
                                    int64_t rows, int64_t c, int64_t first_row,
                                    int64_t t) override;
  void PositionEmbeddingBackwardDocs(TensorView dwpe, ConstView dx, ConstView doc_starts,
                                     int64_t rows, int64_t c, int64_t first_row,
                                     int64_t t) override {
    inner_.PositionEmbeddingBackwardDocs(dwpe, dx, doc_starts, rows, c, first_row, t);
  }
  // The per-token losses and the shard statistics are fp32; the logit gradients are stored.
  void CrossEntropyForward(TensorView losses, ConstView logits, ConstView targets,
                           ConstView loss_mask, int64_t n, int64_t v, int64_t vp) override {
    inner_.CrossEntropyForward(losses, logits, targets, loss_mask, n, v, vp);
  }
  void CrossEntropyBackward(TensorView dlogits, ConstView logits, ConstView targets,
                            ConstView loss_mask, float dloss, int64_t n, int64_t v,
                            int64_t vp) override;
  void CrossEntropyForwardProbs(TensorView losses, TensorView logits, ConstView targets,
                                ConstView loss_mask, int64_t n, int64_t v, int64_t vp) override {
    inner_.CrossEntropyForwardProbs(losses, logits, targets, loss_mask, n, v, vp);
  }
  void CrossEntropyBackwardProbs(TensorView probs, ConstView targets, ConstView loss_mask,
                                 float dloss, int64_t n, int64_t v, int64_t vp) override;
  void CrossEntropyShardMax(TensorView row_max, ConstView logits, int64_t n, int64_t cols,
                            int64_t col_begin, int64_t v) override {
    inner_.CrossEntropyShardMax(row_max, logits, n, cols, col_begin, v);
  }
  void CrossEntropyShardStats(TensorView sum_exp, TensorView target_logit, ConstView logits,
                              ConstView targets, ConstView row_max, int64_t n, int64_t cols,
                              int64_t col_begin, int64_t v) override {
    inner_.CrossEntropyShardStats(sum_exp, target_logit, logits, targets, row_max, n, cols,
                                  col_begin, v);
  }
  void CrossEntropyShardLoss(TensorView losses, ConstView row_max, ConstView sum_exp,
                             ConstView target_logit, ConstView targets, ConstView loss_mask,
                             int64_t n) override {
    inner_.CrossEntropyShardLoss(losses, row_max, sum_exp, target_logit, targets, loss_mask, n);
  }
  void CrossEntropyShardBackward(TensorView dlogits, ConstView logits, ConstView targets,
                                 ConstView loss_mask, ConstView row_max, ConstView sum_exp,
                                 float dloss, int64_t n, int64_t cols, int64_t col_begin,
                                 int64_t v) override;
  // The fused head: its chunk logits live and die inside the op (fp32, as in a fused GPU
  // kernel's registers and shared memory); dhidden is stored, dweight is a parameter gradient.
  void ClassifierForwardBackward(TensorView dhidden, TensorView dweight, TensorView scratch,
                                 ConstView hidden, ConstView weight, ConstView targets,
                                 ConstView loss_mask, const ClassifierArgs& args,
                                 const ClassifierAllReduce& reduce, DeviceScalars& s,
                                 int slot) override;
  void ClassifierForward(TensorView scratch, ConstView hidden, ConstView weight,
                         ConstView targets, ConstView loss_mask, const ClassifierArgs& args,
                         const ClassifierAllReduce& reduce, DeviceScalars& s,
                         int slot) override {
    inner_.ClassifierForward(scratch, hidden, weight, targets, loss_mask, args, reduce, s, slot);
  }
  void EmbeddingShardForward(TensorView out, ConstView tokens, ConstView wte_rows,
                             int64_t row_begin, int64_t rows, int64_t n, int64_t c) override;
  void EmbeddingShardBackward(TensorView dwte_rows, ConstView dout, ConstView tokens,
                              int64_t row_begin, int64_t rows, int64_t n, int64_t c) override {
    inner_.EmbeddingShardBackward(dwte_rows, dout, tokens, row_begin, rows, n, c);
  }
  void ResidualForward(TensorView out, ConstView a, ConstView b, int64_t n) override;
  void ResidualBackward(TensorView da, TensorView db, ConstView dout, int64_t n) override;
  void AdamWUpdate(TensorView param, ConstView grad, TensorView m, TensorView v, int64_t n,
                   const AdamWArgs& args) override {
    inner_.AdamWUpdate(param, grad, m, v, n, args);
  }
  void Scale(TensorView x, int64_t n, float scale) override { inner_.Scale(x, n, scale); }
  void FillNormal(TensorView x, uint64_t seed, const std::string& stream, int64_t rows,
                  int64_t cols, int64_t stride, int64_t first_index, int64_t index_stride,
                  float std) override {
    inner_.FillNormal(x, seed, stream, rows, cols, stride, first_index, index_stride, std);
  }

 private:
  // Rounds the first n elements of x (nothing when x is absent).
  void Store(TensorView x, int64_t n);
  // Rounds the rows*heads*d elements of b*t rows of `row_stride` starting at x.data.
  void StoreHeads(TensorView x, int64_t rows, int64_t heads, int64_t d, int64_t row_stride);

  Backend& inner_;
  DType storage_;
};

}  // namespace lattice::kernels

#endif  // LATTICE_KERNELS_STORAGE_ROUNDING_BACKEND_H_
