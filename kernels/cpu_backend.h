// The CPU backend: kernels/backend.h's ops on host memory, each one a call of the kernels::cpu
// function of the same name (no new arithmetic: the seam changes no number and no speed).
#ifndef LATTICE_KERNELS_CPU_BACKEND_H_
#define LATTICE_KERNELS_CPU_BACKEND_H_

#include <atomic>
#include <memory>
#include <string>

#include "kernels/backend.h"

namespace lattice::kernels {

// Synchronous: an op has finished when its call returns, so the stream and its events have
// nothing to wait for.
class CpuStream final : public Stream {
 public:
  void Synchronize() override {}
};

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::Cpu(); }

  std::shared_ptr<Storage> AllocateStorage(int64_t bytes) override;
  int64_t storage_allocations() const override { return allocations_.load(); }
  DeviceScalars AllocateScalars(int n) override;
  void Cast(TensorView dst, ConstView src) override;
  void Copy(TensorView dst, ConstView src) override;
  void CopyFromHost(TensorView dst, const void* host, DType host_dtype, int64_t n) override;
  void CopyToHost(void* host, DType host_dtype, ConstView src, int64_t n) override;
  void Zero(TensorView x) override;
  void Fill(TensorView x, float value) override;
  void RoundThrough(TensorView x, DType storage) override;
  Stream& stream() override { return stream_; }
  std::unique_ptr<Event> CreateEvent() override;
  void SetNumThreads(int n) override;
  int NumThreads() const override;
  int DefaultThreads(int affinity_cores, int node_cores, int local_ranks) const override;
  std::vector<std::pair<std::string, std::string>> Properties() const override;
  double GemmRate(int64_t m, int64_t n, int64_t k, double seconds) override;

  void ZeroScalars(DeviceScalars& s) override;
  void AccumulateSum(DeviceScalars& s, int slot, ConstView x) override;
  void AccumulateSumOfSquares(DeviceScalars& s, int slot, ConstView x) override;
  void ReadScalars(const DeviceScalars& s, double* host) override;

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
                         int64_t b, int64_t t, int64_t c, int64_t pos_offset) override;
  void PositionEmbeddingForward(TensorView x, ConstView wpe, int64_t rows, int64_t c,
                                int64_t first_row, int64_t t, int64_t pos0) override;
  void PositionEmbeddingBackward(TensorView dwpe, ConstView dx, int64_t rows, int64_t c,
                                 int64_t first_row, int64_t t) override;
  bool SupportsDocumentMasking() const override { return true; }
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
                                     int64_t t) override;
  void CrossEntropyForward(TensorView losses, ConstView logits, ConstView targets,
                           ConstView loss_mask, int64_t n, int64_t v, int64_t vp) override;
  void CrossEntropyBackward(TensorView dlogits, ConstView logits, ConstView targets,
                            ConstView loss_mask, float dloss, int64_t n, int64_t v,
                            int64_t vp) override;
  void CrossEntropyForwardProbs(TensorView losses, TensorView logits, ConstView targets,
                                ConstView loss_mask, int64_t n, int64_t v, int64_t vp) override;
  void CrossEntropyBackwardProbs(TensorView probs, ConstView targets, ConstView loss_mask,
                                 float dloss, int64_t n, int64_t v, int64_t vp) override;
  void CrossEntropyShardMax(TensorView row_max, ConstView logits, int64_t n, int64_t cols,
                            int64_t col_begin, int64_t v) override;
  void CrossEntropyShardStats(TensorView sum_exp, TensorView target_logit, ConstView logits,
                              ConstView targets, ConstView row_max, int64_t n, int64_t cols,
                              int64_t col_begin, int64_t v) override;
  void CrossEntropyShardLoss(TensorView losses, ConstView row_max, ConstView sum_exp,
                             ConstView target_logit, ConstView targets, ConstView loss_mask,
                             int64_t n) override;
  void CrossEntropyShardBackward(TensorView dlogits, ConstView logits, ConstView targets,
                                 ConstView loss_mask, ConstView row_max, ConstView sum_exp,
                                 float dloss, int64_t n, int64_t cols, int64_t col_begin,
                                 int64_t v) override;
  void ClassifierForwardBackward(TensorView dhidden, TensorView dweight, TensorView scratch,
                                 ConstView hidden, ConstView weight, ConstView targets,
                                 ConstView loss_mask, const cpu::ClassifierArgs& args,
                                 const cpu::ClassifierAllReduce& reduce, DeviceScalars& s,
                                 int slot) override;
  void ClassifierForward(TensorView scratch, ConstView hidden, ConstView weight,
                         ConstView targets, ConstView loss_mask, const cpu::ClassifierArgs& args,
                         const cpu::ClassifierAllReduce& reduce, DeviceScalars& s,
                         int slot) override;
  void EmbeddingShardForward(TensorView out, ConstView tokens, ConstView wte_rows,
                             int64_t row_begin, int64_t rows, int64_t n, int64_t c) override;
  void EmbeddingShardBackward(TensorView dwte_rows, ConstView dout, ConstView tokens,
                              int64_t row_begin, int64_t rows, int64_t n, int64_t c) override;
  void ResidualForward(TensorView out, ConstView a, ConstView b, int64_t n) override;
  void ResidualBackward(TensorView da, TensorView db, ConstView dout, int64_t n) override;
  void AdamWUpdate(TensorView param, ConstView grad, TensorView m, TensorView v, int64_t n,
                   const AdamWArgs& args) override;
  void Scale(TensorView x, int64_t n, float scale) override;
  void FillNormal(TensorView x, uint64_t seed, const std::string& stream, int64_t rows,
                  int64_t cols, int64_t stride, int64_t first_index, int64_t index_stride,
                  float std) override;

 private:
  CpuStream stream_;
  std::atomic<int64_t> allocations_{0};
};

}  // namespace lattice::kernels

#endif  // LATTICE_KERNELS_CPU_BACKEND_H_
