#include "runtime/rng.h"

#include <cmath>

namespace lattice {

uint64_t HashName(absl::string_view name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(kM1) * ctr[2];
    ctr = {static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<uint32_t>(p1),
           static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<uint32_t>(p0)};
    key[0] += kW0;
    key[1] += kW1;
  }
  return ctr;
}

CounterRng::CounterRng(uint64_t seed, absl::string_view stream) {
  const uint64_t k = HashName(stream) ^ (seed * 0x9E3779B97F4A7C15ull);
  key_ = {static_cast<uint32_t>(k), static_cast<uint32_t>(k >> 32)};
}

uint64_t CounterRng::Bits(uint64_t index) const {
  auto r = Philox4x32({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0, 0}, key_);
  return (static_cast<uint64_t>(r[0]) << 32) | r[1];
}

float CounterRng::Uniform(uint64_t index) const {
  auto r = Philox4x32({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 1, 0}, key_);
  return static_cast<float>(r[0] >> 8) * (1.0f / 16777216.0f);
}

float CounterRng::Normal(uint64_t index) const {
  auto r = Philox4x32({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 2, 0}, key_);
  // u1 in (0, 1] so the log is finite; u2 in [0, 1).
  const double u1 = (static_cast<double>(r[0]) + 1.0) / 4294967296.0;
  const double u2 = static_cast<double>(r[1]) / 4294967296.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

void CounterRng::FillNormal(float* out, int64_t n, uint64_t first_index, float mean,
                            float std) const {
  for (int64_t i = 0; i < n; ++i) out[i] = mean + std * Normal(first_index + i);
}

}  // namespace lattice
