#include "runtime/io/output_file.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "runtime/status.h"

namespace lattice {

namespace output_file_internal {
namespace {

std::mutex& HookMutex() {
  static std::mutex* const mu = new std::mutex;
  return *mu;
}
TemporaryNameHook& Hook() {
  static TemporaryNameHook* const hook = new TemporaryNameHook;
  return *hook;
}

}  // namespace

std::string TemporaryName(const std::string& path, pid_t pid, uint64_t counter, uint64_t nonce) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  // NAME_MAX is 255 bytes on Linux file systems; the suffix takes at most 5 + 10 + 1 + 20 + 1 +
  // 16 = 53 bytes, so a base name cut to 200 bytes always leaves a valid name.
  constexpr size_t kMaxBaseBytes = 200;
  if (base.size() > kMaxBaseBytes) base.resize(kMaxBaseBytes);
  return absl::StrFormat("%s%s.tmp.%d.%d.%016x", dir, base, static_cast<int>(pid), counter,
                         nonce);
}

void SetTemporaryNameHookForTesting(TemporaryNameHook hook) {
  std::lock_guard<std::mutex> lock(HookMutex());
  Hook() = std::move(hook);
}

}  // namespace output_file_internal

namespace {

std::string Errno(int err) { return std::strerror(err); }

uint64_t Nonce() {
  uint64_t v = 0;
  if (::getrandom(&v, sizeof(v), GRND_NONBLOCK) == static_cast<ssize_t>(sizeof(v))) return v;
  // No entropy yet (very early boot): the clock still makes the name unpredictable enough
  // next to O_EXCL, which is what actually keeps a planted file from being opened.
  return static_cast<uint64_t>(
             std::chrono::high_resolution_clock::now().time_since_epoch().count()) *
         0x9E3779B97F4A7C15ull;
}

std::string ParentDirectory(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? std::string(".") : parent;
}

// "/dev/stdout" -> 1, "/dev/stderr" -> 2, "/dev/fd/N" and "/proc/self/fd/N" -> N.
bool SelfDescriptor(const std::string& path, int* fd) {
  if (path == "/dev/stdout") {
    *fd = 1;
    return true;
  }
  if (path == "/dev/stderr") {
    *fd = 2;
    return true;
  }
  for (absl::string_view prefix : {"/dev/fd/", "/proc/self/fd/"}) {
    absl::string_view rest = path;
    if (!absl::ConsumePrefix(&rest, prefix) || rest.empty()) continue;
    if (!std::all_of(rest.begin(), rest.end(), [](char c) { return absl::ascii_isdigit(c); })) {
      return false;
    }
    return absl::SimpleAtoi(rest, fd);
  }
  return false;
}

std::string LinkTarget(const std::string& path) {
  std::error_code ec;
  const std::filesystem::path target = std::filesystem::read_symlink(path, ec);
  return ec ? std::string("?") : target.string();
}

// For ENOTDIR: the first ancestor of `path` that exists but is not a directory.
// Spelled as the user spelled it (prefixes of `path` up to a '/').
std::string FirstNonDirectoryAncestor(const std::string& path) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    const std::string prefix = path.substr(0, slash);
    struct stat st;
    if (::stat(prefix.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) return prefix;
  }
  return ParentDirectory(path);
}

enum class Kind {
  kAbsent,      // nothing there yet: temporary + rename
  kRegular,     // an existing regular file: temporary + rename, keeping its mode
  kSpecial,     // a character device or FIFO (maybe through a link): written in place
  kDescriptor,  // /dev/stdout & co: a dup() of this process's descriptor
};

struct Target {
  Kind kind = Kind::kAbsent;
  bool via_symlink = false;  // kSpecial: open following the link
  int descriptor = -1;       // kDescriptor
  struct stat st {};         // kRegular: the file being replaced
};

const char* TypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file, character device or FIFO";
}

absl::StatusOr<Target> ResolveTarget(const std::string& path) {
  Target t;
  if (path.empty()) return absl::InvalidArgumentError("the output path is empty");
  if (SelfDescriptor(path, &t.descriptor)) {
    const int flags = ::fcntl(t.descriptor, F_GETFL);
    if (flags < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": this process has no open descriptor ", t.descriptor));
    }
    if ((flags & O_ACCMODE) == O_RDONLY) {
      return absl::PermissionDeniedError(
          absl::StrCat(path, ": descriptor ", t.descriptor, " is not open for writing"));
    }
    t.kind = Kind::kDescriptor;
    return t;
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOTDIR) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, ": cannot be created: '", FirstNonDirectoryAncestor(path), "' is not a directory"));
    }
    if (err != ENOENT) return absl::PermissionDeniedError(absl::StrCat(path, ": ", Errno(err)));
    const std::string dir = ParentDirectory(path);
    struct stat dst;
    if (::stat(dir.c_str(), &dst) != 0) {
      const int derr = errno;
      if (derr == ENOENT) {
        return absl::NotFoundError(
            absl::StrCat(path, ": cannot be created: directory '", dir, "' does not exist"));
      }
      if (derr == ENOTDIR) {
        return absl::FailedPreconditionError(absl::StrCat(path, ": cannot be created: '",
                                                          FirstNonDirectoryAncestor(path),
                                                          "' is not a directory"));
      }
      return absl::PermissionDeniedError(
          absl::StrCat(path, ": cannot be created: directory '", dir, "': ", Errno(derr)));
    }
    if (!S_ISDIR(dst.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": cannot be created: '", dir, "' is not a directory"));
    }
    t.kind = Kind::kAbsent;
    return t;
  }
  if (S_ISREG(st.st_mode)) {
    t.kind = Kind::kRegular;
    t.st = st;
    return t;
  }
  if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) {
    t.kind = Kind::kSpecial;
    return t;
  }
  if (S_ISLNK(st.st_mode)) {
    struct stat target;
    const int rc = ::stat(path.c_str(), &target);
    const int err = errno;
    const std::string to = LinkTarget(path);
    if (rc != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": is a dangling symbolic link (to '", to, "': ", Errno(err),
          "); lattice does not create files through symbolic links: remove the link or give "
          "the path it should point to"));
    }
    if (S_ISCHR(target.st_mode) || S_ISFIFO(target.st_mode)) {
      t.kind = Kind::kSpecial;
      t.via_symlink = true;
      return t;
    }
    if (S_ISREG(target.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": is a symbolic link (to '", to,
          "'); lattice does not write through symbolic links to files, because a link planted "
          "at an output path would replace a file nobody named: give '", to,
          "' itself, or remove the link"));
    }
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a symbolic link to '", to,
                                                   "', which is ", TypeName(target.st_mode),
                                                   "; give a file path"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": is ", TypeName(st.st_mode), "; give a file path"));
}

// Creates a new temporary file next to `path` that did not exist before (O_EXCL: an existing
// name, a planted symbolic link included, is never opened; another name is drawn instead).
absl::StatusOr<std::pair<int, std::string>> CreateTemporary(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  // 64 random bits per name: a name that is taken twice in a row is an attacker guessing or a
  // broken random source, and 16 attempts tell the two apart from bad luck by far.
  constexpr int kAttempts = 16;
  output_file_internal::TemporaryNameHook hook;
  {
    std::lock_guard<std::mutex> lock(output_file_internal::HookMutex());
    hook = output_file_internal::Hook();
  }
  const std::string dir = ParentDirectory(path);
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    std::string name = hook ? hook(path, attempt) : std::string();
    if (name.empty()) {
      name = output_file_internal::TemporaryName(path, ::getpid(), counter.fetch_add(1), Nonce());
    }
    const int fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) return std::make_pair(fd, std::move(name));
    const int err = errno;
    if (err == EEXIST) continue;
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot create files in directory '",
                                                    dir, "': ", Errno(err)));
  }
  return absl::AlreadyExistsError(absl::StrCat(path, ": ", kAttempts,
                                               " fresh temporary names in directory '", dir,
                                               "' already existed; is someone planting files?"));
}

absl::Status CheckReplaceable(const std::string& path) {
  if (::access(path.c_str(), W_OK) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        path, ": exists and may not be written (", Errno(errno), "); lattice does not replace it"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> OpenInPlace(const std::string& path, const Target& t) {
  if (t.kind == Kind::kDescriptor) {
    const int fd = ::fcntl(t.descriptor, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
      return absl::PermissionDeniedError(
          absl::StrCat(path, ": cannot duplicate descriptor ", t.descriptor, ": ", Errno(errno)));
    }
    return fd;
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | (t.via_symlink ? 0 : O_NOFOLLOW));
  if (fd < 0) {
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", Errno(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !(S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode))) {
    ::close(fd);
    return absl::AbortedError(absl::StrCat(
        path, ": changed while it was being opened (it is no longer a device or FIFO)"));
  }
  return fd;
}

absl::Status WriteFully(int fd, const void* bytes, size_t n, const std::string& path,
                        const std::string& temp) {
  const char* p = static_cast<const char*>(bytes);
  while (n > 0) {
    // Linux writes at most 0x7ffff000 bytes per call; 1 GiB chunks stay below that.
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      const std::string where =
          temp.empty() ? std::string() : absl::StrCat(" (to temporary '", temp, "'; '", path,
                                                      "' is unchanged)");
      const std::string msg = absl::StrCat(path, ": write failed: ", Errno(err), where);
      if (err == ENOSPC || err == EDQUOT || err == EFBIG) return absl::ResourceExhaustedError(msg);
      return absl::DataLossError(msg);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

}  // namespace

// ---- OutputFile --------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<OutputFile>> OutputFile::Create(const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(const Target t, ResolveTarget(path));
  std::unique_ptr<OutputFile> f(new OutputFile());
  f->path_ = path;
  if (t.kind == Kind::kSpecial || t.kind == Kind::kDescriptor) {
    LATTICE_ASSIGN_OR_RETURN(f->fd_, OpenInPlace(path, t));
    return f;
  }
  if (t.kind == Kind::kRegular) LATTICE_RETURN_IF_ERROR(CheckReplaceable(path));
  LATTICE_ASSIGN_OR_RETURN(auto created, CreateTemporary(path));
  f->fd_ = created.first;
  f->temp_path_ = std::move(created.second);
  if (t.kind == Kind::kRegular) {
    // The replacement must not widen (or narrow) who may read the file; best effort, as the
    // content matters more than the bits (ownership only changes for a privileged process).
    (void)::fchmod(f->fd_, t.st.st_mode & 0777);
    if (t.st.st_uid != ::geteuid() || t.st.st_gid != ::getegid()) {
      (void)::fchown(f->fd_, t.st.st_uid, t.st.st_gid);
    }
  }
  return f;
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

absl::Status OutputFile::Write(const void* bytes, size_t n) {
  if (committed_ || fd_ < 0) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": Write after Commit"));
  }
  if (failed_) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": an earlier write failed"));
  }
  const char* p = static_cast<const char*>(bytes);
  if (direct_) {
    // O_DIRECT needs the address, the length and the offset aligned; whole blocks go direct, a
    // short write (a nearly full disk) or an unaligned piece continues buffered.
    const auto aligned = [](uint64_t v) { return v % kDirectAlignment == 0; };
    if (aligned(reinterpret_cast<uintptr_t>(p)) && aligned(written_) && n >= kDirectAlignment) {
      const size_t blocks = n - n % kDirectAlignment;
      size_t done = 0;
      while (done < blocks) {
        const ssize_t w = ::write(fd_, p + done, std::min<size_t>(blocks - done, size_t{1} << 30));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;  // retried buffered below, which reports the error
        done += static_cast<size_t>(w);
        if (!aligned(done)) break;
      }
      p += done;
      n -= done;
      written_ += done;
    }
    if (n > 0) DisableDirectIO();
  }
  absl::Status s = WriteFully(fd_, p, n, path_, temp_path_);
  if (!s.ok()) {
    failed_ = true;
  } else {
    written_ += n;
  }
  return s;
}

bool OutputFile::EnableDirectIO() {
  if (fd_ < 0 || in_place() || failed_) return false;
  if (direct_) return true;
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags < 0 || ::fcntl(fd_, F_SETFL, flags | O_DIRECT) != 0) return false;
  direct_ = true;
  return true;
}

void OutputFile::DisableDirectIO() {
  if (!direct_) return;
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags >= 0) (void)::fcntl(fd_, F_SETFL, flags & ~O_DIRECT);
  direct_ = false;
}

absl::Status OutputFile::Commit() {
  if (committed_ || fd_ < 0) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": Commit called twice"));
  }
  if (failed_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": an earlier write failed; nothing was committed"));
  }
  const int fd = fd_;
  fd_ = -1;
  if (in_place()) {
    // A device or pipe has nothing to fsync (fsync answers EINVAL); close reports a late error.
    if (::close(fd) != 0) {
      failed_ = true;
      return absl::DataLossError(absl::StrCat(path_, ": close failed: ", Errno(errno)));
    }
    committed_ = true;
    return absl::OkStatus();
  }
  const std::string unchanged = absl::StrCat(" ('", path_, "' is unchanged)");
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    failed_ = true;
    return absl::DataLossError(absl::StrCat(path_, ": fsync of temporary '", temp_path_,
                                            "' failed: ", Errno(err), unchanged));
  }
  if (::close(fd) != 0) {
    failed_ = true;
    return absl::DataLossError(absl::StrCat(path_, ": close of temporary '", temp_path_,
                                            "' failed: ", Errno(errno), unchanged));
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    failed_ = true;
    return absl::PermissionDeniedError(absl::StrCat(path_, ": cannot rename temporary '",
                                                    temp_path_, "' over it: ", Errno(err),
                                                    unchanged));
  }
  committed_ = true;
  // The rename is durable only once the directory is: fsync it. File systems that cannot sync
  // a directory (EINVAL) or a directory we may not open (mode -wx) leave it to the kernel.
  const std::string dir = ParentDirectory(path_);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    const int rc = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    if (rc != 0 && err != EINVAL && err != EROFS && err != ENOTSUP) {
      return absl::DataLossError(absl::StrCat(path_, ": written, but fsync of directory '", dir,
                                              "' failed: ", Errno(err)));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteOutputFile(const std::string& path, absl::string_view bytes) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<OutputFile> f, OutputFile::Create(path));
  LATTICE_RETURN_IF_ERROR(f->Write(bytes));
  return f->Commit();
}

// ---- Checks ------------------------------------------------------------------------------

absl::Status CheckOutputWritable(const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(const Target t, ResolveTarget(path));
  switch (t.kind) {
    case Kind::kDescriptor:
      return absl::OkStatus();  // ResolveTarget checked that it is open for writing
    case Kind::kSpecial:
      if (::access(path.c_str(), W_OK) != 0) {
        return absl::PermissionDeniedError(
            absl::StrCat(path, ": may not be written: ", Errno(errno)));
      }
      return absl::OkStatus();
    case Kind::kRegular:
      LATTICE_RETURN_IF_ERROR(CheckReplaceable(path));
      [[fallthrough]];
    case Kind::kAbsent: {
      // Creating a file is the only test that root, read-only mounts, immutable directories,
      // ACLs and full inode tables all answer truthfully.
      LATTICE_ASSIGN_OR_RETURN(auto probe, CreateTemporary(path));
      ::close(probe.first);
      ::unlink(probe.second.c_str());
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

// ---- Streams -----------------------------------------------------------------------------

void FileCloser::operator()(std::FILE* f) const {
  if (f != nullptr) std::fclose(f);
}

absl::StatusOr<OutputStream> OpenOutputStream(const std::string& path, ExistingContent existing) {
  LATTICE_ASSIGN_OR_RETURN(const Target t, ResolveTarget(path));
  int fd = -1;
  if (t.kind == Kind::kSpecial || t.kind == Kind::kDescriptor) {
    LATTICE_ASSIGN_OR_RETURN(fd, OpenInPlace(path, t));
  } else {
    if (t.kind == Kind::kRegular) LATTICE_RETURN_IF_ERROR(CheckReplaceable(path));
    // A new file is created O_EXCL: a file (or hard link) that appears after the check is
    // refused rather than truncated.
    const int mode = t.kind == Kind::kAbsent ? O_EXCL
                     : existing == ExistingContent::kTruncate ? O_TRUNC
                                                                : O_APPEND;
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | mode, 0644);
    if (fd < 0) {
      const int err = errno;
      if (err == ELOOP) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": became a symbolic link while it was being opened; lattice does not write "
                  "through symbolic links to files"));
      }
      if (err == EEXIST) {
        return absl::AbortedError(
            absl::StrCat(path, ": appeared while it was being created; not overwritten"));
      }
      return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", Errno(err)));
    }
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return absl::AbortedError(
          absl::StrCat(path, ": changed while it was being opened (no longer a regular file)"));
    }
  }
  std::FILE* f = ::fdopen(fd, existing == ExistingContent::kAppend ? "a" : "w");
  if (f == nullptr) {
    const int err = errno;
    ::close(fd);
    return absl::ResourceExhaustedError(absl::StrCat(path, ": fdopen failed: ", Errno(err)));
  }
  return OutputStream(f);
}

}  // namespace lattice
