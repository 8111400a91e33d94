// Element types of lattice tensors and the conversions between the float formats.
#ifndef LATTICE_RUNTIME_DTYPE_H_
#define LATTICE_RUNTIME_DTYPE_H_

#include <cstdint>
#include <cstring>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace lattice {

enum class DType : uint8_t { kF32, kBF16, kF16, kI32, kU16, kU32 };

size_t DTypeSize(DType t);
absl::string_view DTypeName(DType t);           // "f32", "bf16", ...
absl::string_view DTypeSafetensorsName(DType t);  // "F32", "BF16", ...
absl::StatusOr<DType> DTypeFromName(absl::string_view name);  // accepts both spellings

// bf16 conversion rounds to nearest even (as PyTorch does); NaN stays NaN.
inline uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float Bf16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t FloatToF16(float f);
float F16ToFloat(uint16_t h);

}  // namespace lattice

#endif  // LATTICE_RUNTIME_DTYPE_H_
