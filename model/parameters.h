// All parameters of a model live in one flat fp32 buffer (and their gradients in another), each
// parameter a named view into it. One buffer makes the global grad-norm, the optimizer and (later)
// bucketed gradient all-reduce simple loops over contiguous memory.
#ifndef LATTICE_MODEL_PARAMETERS_H_
#define LATTICE_MODEL_PARAMETERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "kernels/backend.h"
#include "runtime/tensor.h"

namespace lattice {

enum class ParamInit { kNormal, kZeros, kOnes };

// How a parameter held by one rank maps onto the unsharded parameter (tensor parallelism
// shards weights by rows or columns; pipeline parallelism holds whole parameters or none).
// Local row range [local_begin, local_begin + count) is global rows [global_begin, ...).
// `owner` is false on the ranks whose copy duplicates another rank's (a tensor-parallel
// replica, a replicated GQA kv head, the last pipeline stage's copy of a tied embedding): such
// elements are counted once in the global gradient norm and gathered from their owner only.
struct RowSegment {
  int64_t local_begin = 0;
  int64_t global_begin = 0;
  int64_t count = 0;
  bool owner = true;
  int replicas = 1;  // tensor-parallel ranks holding these same rows (replicated kv heads)
};

// Gradient synchronisation a parameter needs across the tensor-parallel group before the
// data-parallel reduction (Megatron: the sequence-parallel norm/bias all-reduce, and the
// replicated key/value heads when tp > n_kv_head).
enum class GradSync : uint8_t {
  kNone,                // identical (or disjoint) on every tensor-parallel rank
  kTensorParallelSum,   // each rank holds a partial gradient of a replicated parameter
  kReplicaRowSum,       // segments with replicas > 1 hold partial gradients of shared rows
};

struct Sharding {
  Shape global_shape;                // the unsharded shape (== shape when not sharded)
  std::vector<RowSegment> segments;  // cover the local rows in order
  int64_t col_begin = 0;             // first global column held (row-parallel weights)
  GradSync grad_sync = GradSync::kNone;
};

struct Parameter {
  std::string name;
  Shape shape;
  int64_t offset = 0;       // element offset into the flat buffers
  bool weight_decay = true; // false for norms and biases
  ParamInit init = ParamInit::kNormal;
  float init_std = 0.02f;
  Sharding sharding;        // identity unless declared sharded
  Tensor value;             // view into the flat value buffer
  Tensor grad;              // view into the flat gradient buffer

  int64_t local_rows() const { return shape.empty() ? 1 : shape[0]; }
  int64_t local_cols() const;   // elements per row (product of dims after the first)
  int64_t global_cols() const;  // the same for the unsharded shape
  // Flat index in the unsharded parameter of local element i.
  int64_t GlobalIndex(int64_t i) const;
};

class ParameterSet {
 public:
  // Declares a parameter; offsets are assigned in declaration order. Call Allocate() once after.
  void Declare(std::string name, Shape shape, bool weight_decay, ParamInit init, float init_std);
  // A shard of a larger parameter: `shape` is the local shape, `sharding` maps it (segments
  // must cover shape[0] rows; an empty segment list means one identity segment).
  void DeclareSharded(std::string name, Shape shape, Sharding sharding, bool weight_decay,
                      ParamInit init, float init_std);
  // The flat buffers come from `backend`, which every later operation on them uses.
  void Allocate(kernels::Backend& backend = kernels::DefaultBackend());

  // Initialises every parameter from (seed, name, GLOBAL element index) only (runtime/rng.h),
  // so every sharding reproduces exactly the values of the unsharded model.
  void Initialize(uint64_t seed);

  const std::vector<Parameter>& params() const { return params_; }
  const Parameter* Find(const std::string& name) const;
  const Parameter& Get(const std::string& name) const;  // CHECKs presence (internal names)
  float* value(const std::string& name) const { return Get(name).value.f32(); }
  float* grad(const std::string& name) const { return Get(name).grad.f32(); }

  int64_t numel() const { return total_; }
  const Tensor& flat_values() const { return values_; }
  const Tensor& flat_grads() const { return grads_; }
  kernels::Backend& backend() const { return *backend_; }
  // One backend op (the CPU's is multi-threaded, with streaming stores for large models:
  // kernels/zero.h).
  void ZeroGrads() const { backend_->Zero(kernels::ViewOf(grads_)); }

 private:
  std::vector<Parameter> params_;
  absl::flat_hash_map<std::string, size_t> index_;
  int64_t total_ = 0;
  kernels::Backend* backend_ = &kernels::DefaultBackend();
  Tensor values_;  // (total,)
  Tensor grads_;   // (total,)
};

}  // namespace lattice

#endif  // LATTICE_MODEL_PARAMETERS_H_
