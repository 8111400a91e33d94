// Counter-based random numbers (Philox-4x32-10, Salmon et al. 2011).
//
// A value depends only on (seed, stream name, element index), never on call order, thread or
// rank, so a parameter sharded across any number of ranks is initialised bit-identically to the
// unsharded one: rank r simply asks for the global indices of its shard.
#ifndef LATTICE_RUNTIME_RNG_H_
#define LATTICE_RUNTIME_RNG_H_

#include <array>
#include <cstdint>
#include "absl/strings/string_view.h"

namespace lattice {

// 64-bit FNV-1a, used to turn a parameter name into a Philox key.
uint64_t HashName(absl::string_view name);

std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

class CounterRng {
 public:
  CounterRng(uint64_t seed, absl::string_view stream);
  // Uniform in [0, 1) with 24 random bits (exactly representable in float).
  float Uniform(uint64_t index) const;
  // Standard normal (Box-Muller over two independent uniforms of the same counter).
  float Normal(uint64_t index) const;
  // Fills out[0..n) with mean + std * Normal(first_index + i).
  void FillNormal(float* out, int64_t n, uint64_t first_index, float mean, float std) const;
  // A raw 64-bit draw (used for shuffles).
  uint64_t Bits(uint64_t index) const;

 private:
  std::array<uint32_t, 2> key_;
};

}  // namespace lattice

#endif  // LATTICE_RUNTIME_RNG_H_
