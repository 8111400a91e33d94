// Shared by the fuzz targets: Check (an invariant), and fuzz inputs as files: lattice's readers
// take paths (and memory-map them), so each input is written to a file of this process's own in
// a RAM-backed folder, rewritten in place for every input (no new inode per run) and removed at
// exit.
#ifndef LATTICE_TESTS_FUZZ_FUZZ_FILE_H_
#define LATTICE_TESTS_FUZZ_FUZZ_FILE_H_

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace lattice::fuzz {

// A violated invariant: trap, so libFuzzer records the input as a crash (an abort() could be
// intercepted; __builtin_trap cannot).
inline void Check(bool ok) {
  if (!ok) __builtin_trap();
}

class FuzzFile {
 public:
  // <dir>/lattice_fuzz_<pid>_<name>; the name keeps its extension, which format detection reads.
  explicit FuzzFile(const std::string& name) {
    struct stat st;
    const char* tmp = std::getenv("TMPDIR");
    const std::string dir = ::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode)
                                ? "/dev/shm"
                                : (tmp != nullptr ? tmp : "/tmp");
    path_ = dir + "/lattice_fuzz_" + std::to_string(::getpid()) + "_" + name;
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd_ < 0) {
      std::perror(path_.c_str());
      std::abort();
    }
  }
  ~FuzzFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  FuzzFile(const FuzzFile&) = delete;
  FuzzFile& operator=(const FuzzFile&) = delete;

  const std::string& path() const { return path_; }

  // Replaces the file's contents. Aborts on a failed write: that is the harness, not lattice.
  void Write(const uint8_t* data, size_t size) const {
    if (::ftruncate(fd_, 0) != 0) std::abort();
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace lattice::fuzz

#endif  // LATTICE_TESTS_FUZZ_FUZZ_FILE_H_
