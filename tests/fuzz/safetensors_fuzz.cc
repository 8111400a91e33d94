// Fuzzes the safetensors reader (runtime/io/safetensors.h) with arbitrary bytes as a file.
// Beyond "never crashes", whatever opens must be consistent: the tensors tile the buffer, every
// tensor of a supported dtype reads, and float tensors convert into f32.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "runtime/io/safetensors.h"
#include "tests/fuzz/fuzz_file.h"

namespace lattice {
namespace {

bool IsFloat(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace
}  // namespace lattice

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lattice;
  static const fuzz::FuzzFile file("input.safetensors");
  file.Write(data, size);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> st = SafetensorsFile::Open(file.path());
  if (!st.ok()) {
    // The file exists and is readable: anything wrong with it is corruption.
    Check(st.status().code() == absl::StatusCode::kDataLoss);
    return 0;
  }
  uint64_t header_len;
  std::memcpy(&header_len, data, 8);
  uint64_t covered = 0;
  for (const std::string& name : (*st)->names()) {
    absl::StatusOr<SafetensorsTensorInfo> info = (*st)->Info(name);
    Check(info.ok() && info->begin <= info->end && info->end <= size - 8 - header_len);
    covered += info->end - info->begin;
    if (!info->supported) {
      Check(!(*st)->Read(name).ok());
      continue;
    }
    absl::StatusOr<Tensor> t = (*st)->Read(name);
    Check(t.ok() && t->nbytes() == info->end - info->begin);
    (void)FirstNonFinite(*t);
    Tensor same = Tensor::Zeros(info->shape, info->dtype);
    Check((*st)->ReadInto(name, same).ok());
    // Into f32 every float converts; into i32 a u32 value >= 2^31 is refused, nothing else.
    Tensor widened = Tensor::Zeros(info->shape, IsFloat(info->dtype) ? DType::kF32 : DType::kI32);
    const absl::Status s = (*st)->ReadInto(name, widened);
    Check(s.ok() || (info->dtype == DType::kU32 && s.code() == absl::StatusCode::kInvalidArgument));
  }
  Check(covered == size - 8 - header_len);
  Check(!(*st)->Info("no such tensor \x01").ok());
  return 0;
}
