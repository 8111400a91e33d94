// safetensors files (the Hugging Face weight format): a strict memory-mapped reader and an
// atomic writer.
//
// Layout: u64 little-endian header length N, N bytes of JSON, then the byte buffer. The JSON
// maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to
// the buffer) plus an optional "__metadata__" string->string map. The reader rejects anything
// the format does not allow (duplicate keys in any object, holes or overlaps in the buffer,
// sizes that do not match the shape, shapes whose products overflow, nesting past 16 levels,
// anything but whitespace after the JSON, a NUL byte included) with kDataLoss naming the file
// and the tensor, so that a corrupt checkpoint is never half-loaded.
#ifndef LATTICE_RUNTIME_IO_SAFETENSORS_H_
#define LATTICE_RUNTIME_IO_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/dtype.h"
#include "runtime/io/mapped_file.h"
#include "runtime/tensor.h"

namespace lattice {

struct SafetensorsTensorInfo {
  std::string dtype_name;     // as written in the file: "F32", "BF16", "F64", ...
  bool supported = false;     // dtype_name is a lattice DType (F32 BF16 F16 I32 U16 U32)
  DType dtype = DType::kF32;  // meaningful only when supported
  Shape shape;
  uint64_t begin = 0;         // data_offsets, relative to the start of the byte buffer
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps `path` and validates the whole header. kNotFound for a missing file, kDataLoss for a
  // malformed one. Tensors of dtypes lattice cannot hold (F64, I64, U8, I8, BOOL, F8_*) are
  // allowed in the file; reading them is an error.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensor names in file (byte offset) order.
  const std::vector<std::string>& names() const { return names_; }
  bool Contains(const std::string& name) const { return infos_.count(name) != 0; }
  // kNotFound naming the file when there is no such tensor.
  absl::StatusOr<SafetensorsTensorInfo> Info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A copy of the tensor in a new CPU tensor of the file's dtype.
  absl::StatusOr<Tensor> Read(const std::string& name) const;
  // Copies the tensor into `dst` (a CPU tensor of the same shape), converting between the float
  // dtypes (F32/BF16/F16) or between the integer dtypes (I32/U16/U32) as needed.
  absl::Status ReadInto(const std::string& name, const Tensor& dst) const;
  // The tensor's bytes in the mapping, any dtype, valid while this object lives (lets a reader
  // copy the part of a tensor it needs without reading the rest).
  absl::StatusOr<std::pair<const uint8_t*, uint64_t>> RawBytes(const std::string& name) const;
  // File offset of the byte buffer (8 + header length): data_offsets are relative to it.
  uint64_t buffer_offset() const { return buffer_offset_; }

 private:
  SafetensorsFile() = default;
  absl::StatusOr<const SafetensorsTensorInfo*> Find(const std::string& name) const;
  absl::StatusOr<const SafetensorsTensorInfo*> FindSupported(const std::string& name) const;
  const uint8_t* Bytes(const SafetensorsTensorInfo& info) const { return buffer_ + info.begin; }

  std::string path_;
  std::unique_ptr<MappedFile> file_;
  const uint8_t* buffer_ = nullptr;  // the byte buffer, after the header
  uint64_t buffer_offset_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, SafetensorsTensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (CPU tensors, unique names) in the given order to `path`, atomically
// (temporary file in the same folder, fsync, rename) and streamed, so that a multi-GB file
// is never assembled in memory. `__metadata__` gets "format": "pt" unless `metadata` sets
// "format" itself (transformers refuses files without it).
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace lattice

#endif  // LATTICE_RUNTIME_IO_SAFETENSORS_H_
