// What the model needs to know about tensor and pipeline parallelism, without MPI or process
// groups: which part of the model this rank holds (ModelShard), and the four collectives the
// tensor-parallel layers call (TensorParallelOps, implemented in parallel/ over a communicator).
//
// The collective pairs of the tensor-parallel regions (Megatron's mappings), for a region that
// starts with a column-parallel linear and ends with a row-parallel one:
//
//   without sequence parallel        forward             backward
//     enter (copy to region)         identity            all-reduce of d(input)
//     leave (reduce from region)     all-reduce          identity
//   with sequence parallel (activations outside the region hold b*t/tp token rows)
//     enter (gather from SP region)  all-gather rows     reduce-scatter rows
//     leave (reduce-scatter to SP)   reduce-scatter rows all-gather rows
//
// Sequence parallelism splits the flattened (batch*seq) token rows into tp contiguous chunks;
// the norms, residual adds and position embeddings are token-wise, so this is the same math and
// the same memory and traffic as Megatron's split of the (outer) sequence dimension.
#ifndef LATTICE_MODEL_TENSOR_PARALLEL_H_
#define LATTICE_MODEL_TENSOR_PARALLEL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace lattice {

// Collectives over the tensor-parallel group. Errors are sticky: after the first failure every
// call is a no-op and status() returns that failure, which the engine checks after each
// forward or backward (the model code stays free of error plumbing in its inner loops).
class TensorParallelOps {
 public:
  virtual ~TensorParallelOps() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void AllReduceSum(float* buf, int64_t n) = 0;
  virtual void AllReduceMax(float* buf, int64_t n) = 0;
  // Rank r's `in` (n_per_rank floats) lands at out + r * n_per_rank.
  virtual void AllGather(const float* in, float* out, int64_t n_per_rank) = 0;
  // out = the sum over ranks of in[r * n_per_rank, (r+1) * n_per_rank) for this rank r.
  virtual void ReduceScatter(const float* in, float* out, int64_t n_per_rank) = 0;
  virtual absl::Status status() const = 0;
};

// The part of the model one rank holds.
struct ModelShard {
  int tp_rank = 0;
  int tp_size = 1;
  bool sequence_parallel = false;
  // Model chunks held by this rank (virtual pipeline stages, in execution order), each a list
  // of consecutive global layer indices. Empty: one chunk with every layer.
  std::vector<std::vector<int64_t>> chunks;
  bool embedding = true;  // the first chunk starts with the token (+position) embedding
  bool head = true;       // the last chunk ends with the final norm, the LM head and the loss

  bool whole() const { return tp_size == 1 && chunks.empty() && embedding && head; }
};

}  // namespace lattice

#endif  // LATTICE_MODEL_TENSOR_PARALLEL_H_
