// Writing lattice's outputs (weights, token files, tokenizers, metrics) without ever destroying
// or losing a file of the user's: every file lattice writes goes through this module.
//
// What happens depends on what the output path names when the write starts:
//
//   nothing, or a regular file
//       The bytes go to a new temporary file in the same directory, created with
//       O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC under a name nobody can predict
//       ("<name>.tmp.<pid>.<counter>.<16 random hex digits>"; a name that exists already, a
//       planted symbolic link included, is never opened: another name is drawn). Commit()
//       fsyncs it, renames it over the target and fsyncs the directory, so readers see the old
//       file or the new one, never a part. On any error, and when the writer is dropped before
//       Commit(), the temporary is removed and the old file is left as it was. A new file gets
//       mode 0644 less the umask; a file that is replaced keeps its permission bits (and its
//       owner and group where the process may set them). A regular file the process may not
//       write (mode 0444 for a non-root user, an immutable file) is refused, not replaced.
//
//   a character device or a FIFO (/dev/null, a named pipe, a terminal)
//       Written in place: opened O_WRONLY without O_CREAT or O_TRUNC, no temporary, no rename,
//       so the node stays what it is. Opening a FIFO waits for a reader, as `cat > fifo` does.
//
//   /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N
//       This process's own descriptor N, written through a dup() of it whatever it is (a pipe,
//       a terminal, or a file the shell opened with `>`/`>>`, whose offset and append mode are
//       then respected).
//
//   a symbolic link (symlink policy)
//       A link to a character device or FIFO is followed (it is written in place, as above).
//       A link to a regular file, a dangling link and a link to a directory are REFUSED with an
//       error naming the link and what it points to: a link planted at an output path would
//       otherwise make lattice replace a file the user never named, and following a dangling
//       link would create one wherever it points. To write through a link, give the path it
//       points to. (Symbolic links among the parent directories are followed as usual.)
//
//   a directory, a block device, a socket, or a path whose parent is not a directory
//       An error naming the path.
//
// Every error is an absl::Status whose message names the output path and the reason.
#ifndef LATTICE_RUNTIME_IO_OUTPUT_FILE_H_
#define LATTICE_RUNTIME_IO_OUTPUT_FILE_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lattice {

// A file being written: Write() any number of times, then Commit(). Not thread-safe.
class OutputFile {
 public:
  // Starts writing `path` (see the policy above): creates the temporary file, or opens the
  // device / FIFO / descriptor. Nothing is visible at `path` before Commit().
  static absl::StatusOr<std::unique_ptr<OutputFile>> Create(const std::string& path);
  // Without a successful Commit(): removes the temporary file; the target is untouched.
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  // Appends bytes (retrying short writes and EINTR). After a failure every later call fails.
  absl::Status Write(const void* bytes, size_t n);
  absl::Status Write(absl::string_view bytes) { return Write(bytes.data(), bytes.size()); }
  // Makes the bytes the content of `path`: fsync + rename + directory fsync for a regular
  // target, close for one written in place. No call is valid afterwards.
  absl::Status Commit();

  // Direct I/O (O_DIRECT) on the temporary file: later writes whose address, length and file
  // offset are multiples of kDirectAlignment go from the caller's memory to the device without
  // the page-cache copy and the writeback at fsync (large checkpoint shards). A write that is
  // not aligned turns it off for the rest of the file (the bytes still arrive, buffered).
  // Returns false, and nothing changes, for a target written in place or a filesystem that
  // refuses O_DIRECT (tmpfs, some FUSE mounts).
  static constexpr size_t kDirectAlignment = 4096;
  bool EnableDirectIO();
  bool direct_io() const { return direct_; }
  // Bytes written so far (the file offset of the next write).
  uint64_t written() const { return written_; }

  const std::string& path() const { return path_; }
  // True when the target is written in place (device, FIFO, descriptor): no temporary file.
  bool in_place() const { return temp_path_.empty(); }
  // The temporary file (empty when written in place), for tests and messages.
  const std::string& temp_path() const { return temp_path_; }

 private:
  OutputFile() = default;

  std::string path_;
  std::string temp_path_;
  void DisableDirectIO();

  int fd_ = -1;
  uint64_t written_ = 0;
  bool direct_ = false;
  bool failed_ = false;
  bool committed_ = false;
};

// The whole of `bytes` to `path` through an OutputFile.
absl::Status WriteOutputFile(const std::string& path, absl::string_view bytes);

// Checks, before long work, that `path` could be written by OutputFile / OpenOutputStream
// under the policy above: the parent directory exists, is a directory and accepts a new file
// (tried: a temporary file is created there and removed, which also catches read-only mounts,
// immutable directories and root's exemption from permission bits); the target is not a
// directory, not a refused symbolic link, and writable. The message names the path and why.
absl::Status CheckOutputWritable(const std::string& path);

// A stdio stream for an output written line by line (the metrics JSONL), under the same policy
// except that a regular file is written directly, not replaced at the end: it is opened with
// O_NOFOLLOW (a symbolic link swapped in after the check is refused too) and either truncated
// or appended to, as the caller says; a new one is created O_EXCL (a file that appears after
// the check is refused, not truncated). Close with the deleter (fclose).
enum class ExistingContent { kTruncate, kAppend };
struct FileCloser {
  void operator()(std::FILE* f) const;
};
using OutputStream = std::unique_ptr<std::FILE, FileCloser>;
absl::StatusOr<OutputStream> OpenOutputStream(const std::string& path, ExistingContent existing);

namespace output_file_internal {
// The temporary file name for `path` from this process id, a per-process counter and a random
// nonce. Exposed so that tests can plant files at the names.
std::string TemporaryName(const std::string& path, pid_t pid, uint64_t counter, uint64_t nonce);
// Test seam: while set, attempt `attempt` (0, 1, ...) of creating a temporary file for `path`
// uses hook(path, attempt) as its name when that is not empty (then the random name). Lets a
// test plant a symbolic link at exactly the name lattice is about to open.
using TemporaryNameHook = std::function<std::string(const std::string& path, int attempt)>;
void SetTemporaryNameHookForTesting(TemporaryNameHook hook);
}  // namespace output_file_internal

}  // namespace lattice

#endif  // LATTICE_RUNTIME_IO_OUTPUT_FILE_H_
