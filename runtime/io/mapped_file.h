// Read-only memory-mapped files (Boost.Iostreams), so corpora and weights are never read
// into RAM as a whole.
#ifndef LATTICE_RUNTIME_IO_MAPPED_FILE_H_
#define LATTICE_RUNTIME_IO_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace lattice {

class MappedFile {
 public:
  // Maps the whole file. NotFound / PermissionDenied / DataLoss errors name the path.
  // An empty file maps to size() == 0 and data() == nullptr.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
// A crash leaves either the old file or the new one, never a partial file.
absl::Status WriteFileAtomically(const std::string& path, const void* bytes, size_t n);

}  // namespace lattice

#endif  // LATTICE_RUNTIME_IO_MAPPED_FILE_H_
