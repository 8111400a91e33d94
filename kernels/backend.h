// The seam between the model and the device that computes it (the ggml-backend / llm.c idea):
// one interface with a method per op of the kernel headers (kernels/<op>.h), on dtype-tagged
// non-owning views, plus the memory and ordering primitives a device needs (storage, arenas,
// copies with cast, zero, fill, streams and events). model/, parallel/ and `lattice bench` call
// only this; CpuBackend (kernels/cpu_backend.h) implements it with kernels::cpu, and the CUDA
// backend plugs in behind the same methods.
//
// Conventions are the kernel headers' (kernels/README.md): row-major, contiguous, `+=` for
// backward outputs except the *To variants. A view whose data is null is an absent optional
// argument (a bias of Llama, a gradient that is not needed). Every view carries its element
// count; a backend checks that each argument holds at least what the op reads or writes.
#ifndef LATTICE_KERNELS_BACKEND_H_
#define LATTICE_KERNELS_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/classifier.h"
#include "runtime/dtype.h"
#include "runtime/tensor.h"

namespace lattice::kernels {

// The fused classifier's arguments and tensor-parallel callback (kernels/classifier.h), as the
// seam's ClassifierForwardBackward / ClassifierForward take them.
using ClassifierArgs = cpu::ClassifierArgs;
using ClassifierAllReduce = cpu::ClassifierAllReduce;
using ClassifierReduceOp = cpu::ReduceOp;
using cpu::ClassifierScratchFloats;

// A writable range of device memory: `numel` elements of `dtype` from `data`.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t numel = 0;

  bool present() const { return data != nullptr; }
  float* f32() const { return static_cast<float*>(data); }
  int32_t* i32() const { return static_cast<int32_t*>(data); }
  // Elements [begin, begin + n) (n = -1: to the end).
  TensorView Sub(int64_t begin, int64_t n = -1) const {
    return TensorView{static_cast<char*>(data) + begin * static_cast<int64_t>(DTypeSize(dtype)),
                      dtype, n < 0 ? numel - begin : n};
  }
};

// A read-only range of device memory.
struct ConstView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t numel = 0;

  ConstView() = default;
  ConstView(const void* d, DType t, int64_t n) : data(d), dtype(t), numel(n) {}
  ConstView(const TensorView& v) : data(v.data), dtype(v.dtype), numel(v.numel) {}  // NOLINT
  bool present() const { return data != nullptr; }
  const float* f32() const { return static_cast<const float*>(data); }
  const int32_t* i32() const { return static_cast<const int32_t*>(data); }
  ConstView Sub(int64_t begin, int64_t n = -1) const {
    return ConstView(static_cast<const char*>(data) +
                         begin * static_cast<int64_t>(DTypeSize(dtype)),
                     dtype, n < 0 ? numel - begin : n);
  }
};

inline TensorView F32View(float* p, int64_t n) { return TensorView{p, DType::kF32, n}; }
inline ConstView F32View(const float* p, int64_t n) { return ConstView(p, DType::kF32, n); }
// The whole of a tensor (an undefined tensor gives an absent view).
inline TensorView ViewOf(const Tensor& t) {
  if (!t.defined()) return TensorView();
  return TensorView{t.raw(), t.dtype(), t.numel()};
}

using AdamWArgs = cpu::AdamWArgs;

// The clipping factor of a gradient of global norm `norm` (kernels/grad_norm.h): host
// arithmetic on the one value a step reads back.
float ClipCoefficient(double norm, float max_norm);

class Backend;

// A queue of device work. Ops a backend runs go to its current stream, in call order. The CPU
// stream is synchronous: every op has finished when its call returns.
class Stream {
 public:
  virtual ~Stream() = default;
  // Waits until everything enqueued so far has finished.
  virtual void Synchronize() = 0;
};

// A point in a stream's work, for waiting on part of it (the CUDA event).
class Event {
 public:
  virtual ~Event() = default;
  // Marks the work enqueued on `stream` so far.
  virtual void Record(Stream& stream) = 0;
  // True when the recorded work has finished (an event never recorded counts as finished).
  virtual bool Query() const = 0;
  virtual void Synchronize() = 0;
};

// Double-precision accumulators in device memory: the step's loss sum and sum of squares stay
// on the device until one read per step (ReadScalars).
class DeviceScalars {
 public:
  DeviceScalars(std::shared_ptr<Storage> storage, int n) : storage_(std::move(storage)), n_(n) {}
  double* data() const { return static_cast<double*>(storage_->data()); }
  int size() const { return n_; }

 private:
  std::shared_ptr<Storage> storage_;
  int n_;
};

// Device memory handed out by bumping an offset through blocks the backend allocates: a
// memory plan sizes the first block (Reserve, or the capacity given at construction) and the
// steady-state step then allocates nothing. Every allocation starts at a multiple of
// kAlignBytes (64 fp32 elements: 16-byte vector loads and the GEMM libraries' preferred
// alignment), so `AlignedBytes` is what a planner must count. Memory is zero when first handed
// out and is not given back before the arena dies.
class Arena {
 public:
  static constexpr int64_t kAlignBytes = 64 * 4;
  static int64_t AlignedBytes(int64_t numel, DType dtype) {
    const int64_t bytes = numel * static_cast<int64_t>(DTypeSize(dtype));
    return (bytes + kAlignBytes - 1) / kAlignBytes * kAlignBytes;
  }

  // capacity_bytes > 0 allocates the first block now.
  Arena(Backend& backend, int64_t capacity_bytes);
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // A tensor of `shape` in this arena's memory (shares the block's storage).
  Tensor Allocate(Shape shape, DType dtype);
  // Makes the next `bytes` (aligned, as AlignedBytes counts) of allocations fit without a new
  // block: allocates a block of exactly `bytes` when the current one has less room.
  void Reserve(int64_t bytes);

  // Tensors handed out, and blocks allocated from the backend (each block is a device
  // allocation: the counter a test asserts stays put in the steady state).
  int64_t allocations() const { return allocations_; }
  int64_t blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t capacity_bytes() const { return capacity_; }
  int64_t used_bytes() const { return used_; }

 private:
  void NewBlock(int64_t bytes);

  Backend& backend_;
  std::vector<std::shared_ptr<Storage>> blocks_;
  int64_t offset_ = 0;  // into the last block
  int64_t allocations_ = 0, capacity_ = 0, used_ = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu"
  virtual Device device() const = 0;

  // ---- Memory, copies, ordering ----
  // Zero-filled device memory of `bytes`; counted by storage_allocations().
  virtual std::shared_ptr<Storage> AllocateStorage(int64_t bytes) = 0;
  virtual int64_t storage_allocations() const = 0;
  virtual DeviceScalars AllocateScalars(int n) = 0;
  // dst = src element by element, converting between f32, bf16 and f16 (round to nearest
  // even); integer views copy only to the same dtype. dst.numel >= src.numel.
  virtual void Cast(TensorView dst, ConstView src) = 0;
  // The same dtype: a plain copy of src.numel elements (dst and src may not overlap).
  virtual void Copy(TensorView dst, ConstView src) = 0;
  // Host memory (`n` elements of `host_dtype`) into device memory, with cast, and back.
  virtual void CopyFromHost(TensorView dst, const void* host, DType host_dtype, int64_t n) = 0;
  virtual void CopyToHost(void* host, DType host_dtype, ConstView src, int64_t n) = 0;
  virtual void Zero(TensorView x) = 0;
  virtual void Fill(TensorView x, float value) = 0;
  // x (f32) = x rounded to `storage` (kBF16 or kF16, round to nearest even) and read back:
  // what a store to that dtype and a load give (kernels/mixed_precision.h, RoundThrough). The
  // op of mixed-precision storage on fp32 buffers (kernels/storage_rounding_backend.h) and of
  // the optimizer's compute copy.
  virtual void RoundThrough(TensorView x, DType storage) = 0;
  virtual Stream& stream() = 0;
  virtual std::unique_ptr<Event> CreateEvent() = 0;
  // Worker threads of the backend (CPU: the OpenMP team; a GPU backend's host threads).
  virtual void SetNumThreads(int n) = 0;
  virtual int NumThreads() const = 0;
  // The threads one rank uses by default: its cores (kernels/threads.h DefaultThreadsPerRank).
  virtual int DefaultThreads(int affinity_cores, int node_cores, int local_ranks) const = 0;
  // What reports say about the backend, as (key, value): for the CPU "blas", "gemm" (the GEMM
  // library) and "kernels" (the vector ISA of lattice's loops).
  virtual std::vector<std::pair<std::string, std::string>> Properties() const = 0;
  // The backend's own GEMM rate in GFLOP/s on (M, K) x (K, N) for at least `seconds`: the
  // ceiling a profile compares the step's GEMMs with.
  virtual double GemmRate(int64_t m, int64_t n, int64_t k, double seconds) = 0;

  // ---- Device scalars (one read per step) ----
  virtual void ZeroScalars(DeviceScalars& s) = 0;
  // s[slot] += the sum of x's elements (summed in double from 0, then added).
  virtual void AccumulateSum(DeviceScalars& s, int slot, ConstView x) = 0;
  // s[slot] += the sum of squares of x's elements (kernels/grad_norm.h).
  virtual void AccumulateSumOfSquares(DeviceScalars& s, int slot, ConstView x) = 0;
  // Waits for the stream and copies every slot to host (s.size() doubles).
  virtual void ReadScalars(const DeviceScalars& s, double* host) = 0;

  // ---- Ops (shapes as in kernels/<op>.h) ----
  // matmul.h
  virtual void MatmulForward(TensorView out, ConstView inp, ConstView weight, ConstView bias,
                             int64_t n, int64_t c, int64_t oc) = 0;
  virtual void MatmulBackward(TensorView dinp, TensorView dweight, TensorView dbias,
                              ConstView dout, ConstView inp, ConstView weight, int64_t n,
                              int64_t c, int64_t oc) = 0;
  virtual void MatmulBackwardTo(TensorView dinp, TensorView dweight, TensorView dbias,
                                ConstView dout, ConstView inp, ConstView weight, int64_t n,
                                int64_t c, int64_t oc) = 0;
  // x (rows, c) += bias (c) on every row: the bias of a row-parallel linear, added once after
  // the tensor-parallel reduction.
  virtual void AddRowBias(TensorView x, ConstView bias, int64_t rows, int64_t c) = 0;
  // layernorm.h, rmsnorm.h
  virtual void LayerNormForward(TensorView out, TensorView mean, TensorView rstd, ConstView inp,
                                ConstView weight, ConstView bias, int64_t n, int64_t c,
                                float eps) = 0;
  virtual void LayerNormBackward(TensorView dinp, TensorView dweight, TensorView dbias,
                                 ConstView dout, ConstView inp, ConstView weight, ConstView mean,
                                 ConstView rstd, int64_t n, int64_t c) = 0;
  virtual void RmsNormForward(TensorView out, TensorView rstd, ConstView inp, ConstView weight,
                              int64_t n, int64_t c, float eps) = 0;
  virtual void RmsNormBackward(TensorView dinp, TensorView dweight, ConstView dout,
                               ConstView inp, ConstView weight, ConstView rstd, int64_t n,
                               int64_t c) = 0;
  // attention.h
  virtual void AttentionForward(TensorView out, TensorView lse, ConstView qkv, int64_t b,
                                int64_t t, int64_t h, int64_t kvh, int64_t d) = 0;
  virtual void AttentionBackward(TensorView dqkv, ConstView dout, ConstView qkv, ConstView out,
                                 ConstView lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                                 int64_t d) = 0;
  virtual void AttentionBackwardTo(TensorView dqkv, ConstView dout, ConstView qkv, ConstView out,
                                   ConstView lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                                   int64_t d) = 0;
  virtual void AttentionDecode(TensorView out, ConstView q, ConstView k_cache,
                               ConstView v_cache, int64_t len, int64_t h, int64_t kvh,
                               int64_t d) = 0;
  // gelu.h, swiglu.h
  virtual void GeluForward(TensorView out, ConstView inp, int64_t n) = 0;
  virtual void GeluBackward(TensorView dinp, ConstView inp, ConstView dout, int64_t n) = 0;
  virtual void GeluBackwardTo(TensorView dinp, ConstView inp, ConstView dout, int64_t n) = 0;
  virtual void BiasGeluForward(TensorView pre, TensorView out, ConstView bias, int64_t n,
                               int64_t f) = 0;
  virtual void SwiGluForward(TensorView out, ConstView inp, int64_t n, int64_t f) = 0;
  virtual void SwiGluBackward(TensorView dinp, ConstView inp, ConstView dout, int64_t n,
                              int64_t f) = 0;
  // rope.h: x holds b*t rows of row_stride elements; the heads start at x.data.
  virtual void RopeForward(TensorView x, int64_t b, int64_t t, int64_t heads, int64_t d,
                           int64_t row_stride, int64_t pos_offset, float theta) = 0;
  virtual void RopeBackward(TensorView dx, int64_t b, int64_t t, int64_t heads, int64_t d,
                            int64_t row_stride, int64_t pos_offset, float theta) = 0;
  // embedding.h (wpe may be absent)
  virtual void EmbeddingForward(TensorView out, ConstView tokens, ConstView wte, ConstView wpe,
                                int64_t b, int64_t t, int64_t c, int64_t pos_offset) = 0;
  virtual void EmbeddingBackward(TensorView dwte, TensorView dwpe, ConstView dout,
                                 ConstView tokens, int64_t b, int64_t t, int64_t c,
                                 int64_t pos_offset) = 0;
  // The learned positions of hidden rows that are a slice of the (b*t) token rows (sequence
  // parallelism): row i is token row first_row + i, at position (first_row + i) % t + pos0.
  // x (rows, c) += wpe[position]; in row order, in parallel over rows.
  virtual void PositionEmbeddingForward(TensorView x, ConstView wpe, int64_t rows, int64_t c,
                                        int64_t first_row, int64_t t, int64_t pos0) = 0;
  // dwpe[position] += dx (rows, c); serial over rows (positions repeat across the batch: a
  // fixed summation order, no races).
  virtual void PositionEmbeddingBackward(TensorView dwpe, ConstView dx, int64_t rows, int64_t c,
                                         int64_t first_row, int64_t t) = 0;
  // Document masking for packed fine-tuning rows (runtime/data/sft.h, attention.h): doc_starts
  // (B, T) i32 holds where each token's example starts in its row; attention keeps to the
  // example and positions restart at 0 (position = t - doc_starts[t]). Each example computes
  // what it computes alone (to rounding). A backend that implements these answers true; the trainer refuses
  // data.pack on one that does not (the defaults fail a CHECK).
  virtual bool SupportsDocumentMasking() const { return false; }
  virtual void AttentionForwardDocs(TensorView out, TensorView lse, ConstView qkv,
                                    ConstView doc_starts, int64_t b, int64_t t, int64_t h,
                                    int64_t kvh, int64_t d);
  virtual void AttentionBackwardDocsTo(TensorView dqkv, ConstView dout, ConstView qkv,
                                       ConstView out, ConstView lse, ConstView doc_starts,
                                       int64_t b, int64_t t, int64_t h, int64_t kvh, int64_t d);
  virtual void RopeForwardDocs(TensorView x, ConstView doc_starts, int64_t b, int64_t t,
                               int64_t heads, int64_t d, int64_t row_stride, float theta);
  virtual void RopeBackwardDocs(TensorView dx, ConstView doc_starts, int64_t b, int64_t t,
                                int64_t heads, int64_t d, int64_t row_stride, float theta);
  // As PositionEmbeddingForward/Backward (rows first_row.. of the b*t token rows), at position
  // r % t - doc_starts[r] of token row r.
  virtual void PositionEmbeddingForwardDocs(TensorView x, ConstView wpe, ConstView doc_starts,
                                            int64_t rows, int64_t c, int64_t first_row,
                                            int64_t t);
  virtual void PositionEmbeddingBackwardDocs(TensorView dwpe, ConstView dx, ConstView doc_starts,
                                             int64_t rows, int64_t c, int64_t first_row,
                                             int64_t t);
  // cross_entropy.h (the counts of counted rows are the caller's: it has the targets on the
  // host; a device op returns nothing to the host)
  virtual void CrossEntropyForward(TensorView losses, ConstView logits, ConstView targets,
                                   ConstView loss_mask, int64_t n, int64_t v, int64_t vp) = 0;
  virtual void CrossEntropyBackward(TensorView dlogits, ConstView logits, ConstView targets,
                                    ConstView loss_mask, float dloss, int64_t n, int64_t v,
                                    int64_t vp) = 0;
  virtual void CrossEntropyForwardProbs(TensorView losses, TensorView logits, ConstView targets,
                                        ConstView loss_mask, int64_t n, int64_t v,
                                        int64_t vp) = 0;
  virtual void CrossEntropyBackwardProbs(TensorView probs, ConstView targets, ConstView loss_mask,
                                         float dloss, int64_t n, int64_t v, int64_t vp) = 0;
  // vocab_parallel.h
  virtual void CrossEntropyShardMax(TensorView row_max, ConstView logits, int64_t n, int64_t cols,
                                    int64_t col_begin, int64_t v) = 0;
  virtual void CrossEntropyShardStats(TensorView sum_exp, TensorView target_logit,
                                      ConstView logits, ConstView targets, ConstView row_max,
                                      int64_t n, int64_t cols, int64_t col_begin, int64_t v) = 0;
  virtual void CrossEntropyShardLoss(TensorView losses, ConstView row_max, ConstView sum_exp,
                                     ConstView target_logit, ConstView targets,
                                     ConstView loss_mask, int64_t n) = 0;
  virtual void CrossEntropyShardBackward(TensorView dlogits, ConstView logits, ConstView targets,
                                         ConstView loss_mask, ConstView row_max,
                                         ConstView sum_exp, float dloss, int64_t n, int64_t cols,
                                         int64_t col_begin, int64_t v) = 0;
  // classifier.h: the lm head fused with cross-entropy, args.chunk_tokens rows at a time, so
  // the (n, rows) logits are never whole. hidden (n, c), weight (rows, c), targets (n) i32,
  // loss_mask (n) or absent; dhidden (n, c) WRITTEN (this rank's partial sum with `reduce`),
  // dweight (rows, c) ACCUMULATES; scratch: cpu::ClassifierScratchFloats floats. s[slot] += the
  // loss sum. `reduce` (null without tensor parallelism) all-reduces device floats in place
  // over the tensor-parallel group. The default composes this backend's own matmul and
  // cross-entropy ops per chunk (any device); CpuBackend runs kernels::cpu's fused classifier.
  virtual void ClassifierForwardBackward(TensorView dhidden, TensorView dweight,
                                         TensorView scratch, ConstView hidden, ConstView weight,
                                         ConstView targets, ConstView loss_mask,
                                         const cpu::ClassifierArgs& args,
                                         const cpu::ClassifierAllReduce& reduce,
                                         DeviceScalars& s, int slot);
  // The loss alone (evaluation): s[slot] += the loss sum; args.dloss is not used.
  virtual void ClassifierForward(TensorView scratch, ConstView hidden, ConstView weight,
                                 ConstView targets, ConstView loss_mask,
                                 const cpu::ClassifierArgs& args,
                                 const cpu::ClassifierAllReduce& reduce, DeviceScalars& s,
                                 int slot);
  virtual void EmbeddingShardForward(TensorView out, ConstView tokens, ConstView wte_rows,
                                     int64_t row_begin, int64_t rows, int64_t n, int64_t c) = 0;
  virtual void EmbeddingShardBackward(TensorView dwte_rows, ConstView dout, ConstView tokens,
                                      int64_t row_begin, int64_t rows, int64_t n, int64_t c) = 0;
  // residual.h: out = a + b (out may alias a); da += dout, db += dout.
  virtual void ResidualForward(TensorView out, ConstView a, ConstView b, int64_t n) = 0;
  virtual void ResidualBackward(TensorView da, TensorView db, ConstView dout, int64_t n) = 0;
  // adamw.h, grad_norm.h
  virtual void AdamWUpdate(TensorView param, ConstView grad, TensorView m, TensorView v,
                           int64_t n, const AdamWArgs& args) = 0;
  virtual void Scale(TensorView x, int64_t n, float scale) = 0;
  // Parameter initialisation: x (rows, cols, rows `stride` elements apart) = std * the
  // standard normal of CounterRng(seed, stream) (runtime/rng.h) at index
  // first_index + r * index_stride + c.
  virtual void FillNormal(TensorView x, uint64_t seed, const std::string& stream, int64_t rows,
                          int64_t cols, int64_t stride, int64_t first_index,
                          int64_t index_stride, float std) = 0;
};

// The process's backend for code that is not handed one (today: the CPU backend).
Backend& DefaultBackend();

// Mixed-precision storage on a backend that computes in fp32: a backend over `inner` that
// rounds every stored activation to `storage` (kBF16 or kF16); kernels/storage_rounding_backend.h
// says what is rounded. `inner` must outlive it.
std::unique_ptr<Backend> MakeStorageRoundingBackend(Backend& inner, DType storage);

}  // namespace lattice::kernels

#endif  // LATTICE_KERNELS_BACKEND_H_
