#include "runtime/io/mapped_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <boost/iostreams/device/mapped_file.hpp>

#include "absl/strings/str_cat.h"
#include "runtime/io/output_file.h"

namespace lattice {

struct MappedFile::Impl {
  boost::iostreams::mapped_file_source source;
};

MappedFile::~MappedFile() = default;

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(path, ": ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  if (::access(path.c_str(), R_OK) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(path, ": ", std::strerror(errno)));
  }
  std::unique_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->impl_ = std::make_unique<Impl>();
  if (st.st_size == 0) return f;
  try {
    f->impl_->source.open(path);
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(path, ": cannot map file: ", e.what()));
  }
  if (!f->impl_->source.is_open()) {
    return absl::DataLossError(absl::StrCat(path, ": cannot map file"));
  }
  f->data_ = reinterpret_cast<const uint8_t*>(f->impl_->source.data());
  f->size_ = f->impl_->source.size();
  return f;
}

absl::Status WriteFileAtomically(const std::string& path, const void* bytes, size_t n) {
  // The one implementation of safe output for all of lattice (runtime/io/output_file.h).
  return WriteOutputFile(path, absl::string_view(static_cast<const char*>(bytes), n));
}

}  // namespace lattice
