#include "runtime/io/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/io/crc32c.h"
#include "runtime/status.h"

namespace lattice {

namespace tensorboard {

void ProtoEncoder::Raw(const void* bytes, size_t n) {
  if (overflowed_ || n > max_bytes_ - out_.size()) {
    overflowed_ = true;
    return;
  }
  out_.append(static_cast<const char*>(bytes), n);
}

void ProtoEncoder::Varint(uint64_t v) {
  uint8_t buf[10];  // 64 bits in 7-bit groups
  size_t n = 0;
  while (v >= 0x80) {
    buf[n++] = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  buf[n++] = static_cast<uint8_t>(v);
  Raw(buf, n);
}

void ProtoEncoder::Key(uint32_t field, WireType type) {
  Varint((static_cast<uint64_t>(field) << 3) | static_cast<uint32_t>(type));
}

void ProtoEncoder::Double(uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  uint8_t le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<uint8_t>(bits >> (8 * i));
  Key(field, WireType::kFixed64);
  Raw(le, sizeof le);
}

void ProtoEncoder::Float(uint32_t field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  uint8_t le[4];
  for (int i = 0; i < 4; ++i) le[i] = static_cast<uint8_t>(bits >> (8 * i));
  Key(field, WireType::kFixed32);
  Raw(le, sizeof le);
}

void ProtoEncoder::Int64(uint32_t field, int64_t v) {
  Key(field, WireType::kVarint);
  Varint(static_cast<uint64_t>(v));
}

void ProtoEncoder::Bytes(uint32_t field, absl::string_view bytes) {
  Key(field, WireType::kLengthDelimited);
  Varint(bytes.size());
  Raw(bytes.data(), bytes.size());
}

absl::StatusOr<std::string> ProtoEncoder::Finish(absl::string_view what) && {
  if (overflowed_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("TensorBoard ", what, " would exceed ", max_bytes_, " bytes"));
  }
  return std::move(out_);
}

uint32_t MaskedCrc32c(const void* data, size_t n) {
  const uint32_t crc = Crc32c(data, n);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

namespace {

void AppendLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

// Event field numbers (tensorflow/core/util/event.proto) and Summary's (summary.proto).
constexpr uint32_t kEventWallTime = 1;
constexpr uint32_t kEventStep = 2;
constexpr uint32_t kEventFileVersion = 3;
constexpr uint32_t kEventSummary = 5;
constexpr uint32_t kEventSessionLog = 7;
constexpr uint32_t kSessionLogStatus = 1;
constexpr int64_t kSessionLogStart = 1;
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1;
constexpr uint32_t kValueSimpleValue = 2;

// Event's header fields, each left out at its proto3 default as protobuf does.
void EventHeader(ProtoEncoder& e, double wall_time, int64_t step) {
  if (wall_time != 0) e.Double(kEventWallTime, wall_time);
  if (step != 0) e.Int64(kEventStep, step);
}

}  // namespace

std::string FrameRecord(absl::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  AppendLe(out, data.size(), 8);
  AppendLe(out, MaskedCrc32c(out.data(), 8), 4);
  out.append(data.data(), data.size());
  AppendLe(out, MaskedCrc32c(data.data(), data.size()), 4);
  return out;
}

absl::StatusOr<std::string> EncodeFileVersionEvent(double wall_time) {
  ProtoEncoder e(kMaxEventBytes);
  EventHeader(e, wall_time, 0);
  e.Bytes(kEventFileVersion, "brain.Event:2");
  return std::move(e).Finish("file_version event");
}

absl::StatusOr<std::string> EncodeSessionStartEvent(double wall_time, int64_t step) {
  ProtoEncoder log(16);  // one varint field
  log.Int64(kSessionLogStatus, kSessionLogStart);
  LATTICE_ASSIGN_OR_RETURN(std::string l, std::move(log).Finish("session log"));
  ProtoEncoder e(kMaxEventBytes);
  EventHeader(e, wall_time, step);
  e.Bytes(kEventSessionLog, l);
  return std::move(e).Finish("session start event");
}

absl::StatusOr<std::string> EncodeScalarsEvent(double wall_time, int64_t step,
                                               absl::Span<const Scalar> scalars) {
  if (scalars.size() > kMaxScalarsPerEvent) {
    return absl::InvalidArgumentError(absl::StrCat("TensorBoard event at step ", step, " has ",
                                                   scalars.size(), " scalars; at most ",
                                                   kMaxScalarsPerEvent, " are allowed"));
  }
  ProtoEncoder summary(kMaxEventBytes);
  for (const Scalar& s : scalars) {
    if (s.tag.empty() || s.tag.size() > kMaxTagBytes) {
      return absl::InvalidArgumentError(absl::StrCat("TensorBoard tag '", s.tag.substr(0, 64),
                                                     "' at step ", step, " has ", s.tag.size(),
                                                     " bytes; 1 to ", kMaxTagBytes, " allowed"));
    }
    ProtoEncoder value(kMaxTagBytes + 16);  // tag, its key and length, and the float field
    value.Bytes(kValueTag, s.tag);
    value.Float(kValueSimpleValue, s.value);
    LATTICE_ASSIGN_OR_RETURN(std::string v, std::move(value).Finish("summary value"));
    summary.Bytes(kSummaryValue, v);
  }
  LATTICE_ASSIGN_OR_RETURN(std::string sum, std::move(summary).Finish("summary"));
  ProtoEncoder e(kMaxEventBytes);
  EventHeader(e, wall_time, step);
  e.Bytes(kEventSummary, sum);
  return std::move(e).Finish("event");
}

}  // namespace tensorboard

namespace {

double WallTime() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::Status WriteAll(int fd, const std::string& path, absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("train.tensorboard_dir: write to '", path, "' failed: ",
                       n < 0 ? std::strerror(errno) : "no progress"));
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    return absl::PermissionDeniedError(absl::StrCat("train.tensorboard_dir: cannot create '", dir,
                                                    "': ", ec ? ec.message() : "not a directory"));
  }
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  const double now = WallTime();
  const std::string stem = absl::StrFormat("events.out.tfevents.%010lld.%s.%d",
                                           static_cast<long long>(now), host, ::getpid());
  // Two writers of one process in one second (a test, or a resume in the same process) would
  // pick the same name: a counter tells them apart; 1000 tries is far more than can happen.
  for (int n = 0; n < 1000; ++n) {
    const std::string name = n == 0 ? stem + ".lattice" : absl::StrCat(stem, ".", n, ".lattice");
    const std::string path = (std::filesystem::path(dir) / name).string();
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST) continue;
    if (fd < 0) {
      return absl::PermissionDeniedError(absl::StrCat("train.tensorboard_dir: cannot create '",
                                                      path, "': ", std::strerror(errno)));
    }
    std::unique_ptr<TensorBoardWriter> w(new TensorBoardWriter(path, fd));
    LATTICE_RETURN_IF_ERROR(w->Append(tensorboard::EncodeFileVersionEvent(now)));
    LATTICE_RETURN_IF_ERROR(w->Flush());
    return w;
  }
  return absl::AlreadyExistsError(
      absl::StrCat("train.tensorboard_dir: every name for '", stem, "' in '", dir, "' is taken"));
}

TensorBoardWriter::~TensorBoardWriter() {
  if (fd_ >= 0) {
    if (!failed_) (void)WriteAll(fd_, path_, pending_);
    ::close(fd_);
  }
}

absl::Status TensorBoardWriter::Append(absl::StatusOr<std::string> event) {
  if (failed_ || fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("train.tensorboard_dir: '", path_, "' is closed or failed earlier"));
  }
  if (!event.ok()) return event.status();
  pending_ += tensorboard::FrameRecord(*event);
  return absl::OkStatus();
}

absl::Status TensorBoardWriter::AddScalars(int64_t step,
                                           absl::Span<const tensorboard::Scalar> scalars) {
  return Append(tensorboard::EncodeScalarsEvent(WallTime(), step, scalars));
}

absl::Status TensorBoardWriter::AddSessionStart(int64_t step) {
  return Append(tensorboard::EncodeSessionStartEvent(WallTime(), step));
}

absl::Status TensorBoardWriter::Flush() {
  if (failed_ || fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("train.tensorboard_dir: '", path_, "' is closed or failed earlier"));
  }
  absl::Status s = WriteAll(fd_, path_, pending_);
  pending_.clear();
  if (!s.ok()) failed_ = true;
  return s;
}

absl::Status TensorBoardWriter::Close() {
  LATTICE_RETURN_IF_ERROR(Flush());
  absl::Status s;
  if (::fsync(fd_) != 0) {
    s = absl::ResourceExhaustedError(absl::StrCat("train.tensorboard_dir: fsync of '", path_,
                                                  "' failed: ", std::strerror(errno)));
  }
  if (::close(fd_) != 0 && s.ok()) {
    s = absl::ResourceExhaustedError(absl::StrCat("train.tensorboard_dir: close of '", path_,
                                                  "' failed: ", std::strerror(errno)));
  }
  fd_ = -1;
  return s;
}

}  // namespace lattice
