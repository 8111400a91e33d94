// All parameters of a model live in one flat fp32 buffer (and their gradients in another), each
// parameter a named view into it. One buffer makes the global grad-norm, the optimizer and (later)
// bucketed gradient all-reduce simple loops over contiguous memory.
#ifndef LATTICE_MODEL_PARAMETERS_H_
#define LATTICE_MODEL_PARAMETERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "runtime/tensor.h"

namespace lattice {

enum class ParamInit { kNormal, kZeros, kOnes };

struct Parameter {
  std::string name;
  Shape shape;
  int64_t offset = 0;       // element offset into the flat buffers
  bool weight_decay = true; // false for norms and biases
  ParamInit init = ParamInit::kNormal;
  float init_std = 0.02f;
  Tensor value;             // view into the flat value buffer
  Tensor grad;              // view into the flat gradient buffer
};

class ParameterSet {
 public:
  // Declares a parameter; offsets are assigned in declaration order. Call Allocate() once after.
  void Declare(std::string name, Shape shape, bool weight_decay, ParamInit init, float init_std);
  void Allocate();

  // Initialises every parameter from (seed, name, element index) only (runtime/rng.h), so any
  // later sharding reproduces the same values.
  void Initialize(uint64_t seed);

  const std::vector<Parameter>& params() const { return params_; }
  const Parameter* Find(const std::string& name) const;
  const Parameter& Get(const std::string& name) const;  // CHECKs presence (internal names)
  float* value(const std::string& name) const { return Get(name).value.f32(); }
  float* grad(const std::string& name) const { return Get(name).grad.f32(); }

  int64_t numel() const { return total_; }
  const Tensor& flat_values() const { return values_; }
  const Tensor& flat_grads() const { return grads_; }
  void ZeroGrads() const { grads_.SetZero(); }

 private:
  std::vector<Parameter> params_;
  absl::flat_hash_map<std::string, size_t> index_;
  int64_t total_ = 0;
  Tensor values_;  // (total,)
  Tensor grads_;   // (total,)
};

}  // namespace lattice

#endif  // LATTICE_MODEL_PARAMETERS_H_
