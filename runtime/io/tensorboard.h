// TensorBoard event files, written without TensorFlow or a protobuf library: the training
// metrics as scalars that TensorBoard (and `wandb sync`) read directly.
//
// The file is a sequence of TFRecords, each framed as
//   u64 little-endian length | u32 masked CRC-32C of those 8 bytes | data | u32 masked CRC-32C
//   of data,
// with mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (REFERENCE.md section 4). Each
// record's data is one serialized `tensorflow.Event` protobuf message; lattice writes only the
// fields it needs, encoded by hand (protobuf wire format: a field is a varint key
// (number << 3 | wire type) followed by a varint, 8 or 4 little-endian bytes, or a varint length
// and that many bytes):
//   Event          1 wall_time (double), 2 step (int64), 3 file_version (string),
//                  5 summary (Summary), 7 session_log (SessionLog)
//   SessionLog     1 status (enum; START = 1)
//   Summary        1 value (repeated Summary.Value)
//   Summary.Value  1 tag (string), 2 simple_value (float, a member of a oneof)
// The first record is Event{wall_time, file_version: "brain.Event:2"}; then one Event per step
// holding every scalar of that step. A run resumed from a checkpoint starts a new file whose
// first event after the file_version is SessionLog{START} at the first step it runs: TensorBoard
// (for file_version 2 files) then drops the older files' events at and after that step, which
// the resumed run repeats. Fields at their proto3 default (0, empty) are left out as
// protobuf's own serializer leaves them out, so the bytes equal what protobuf writes for the same
// message (tests/runtime/io/tensorboard_test.cc checks this against bytes from the
// `tensorboard` package); simple_value, being a oneof member, is always written.
#ifndef LATTICE_RUNTIME_IO_TENSORBOARD_H_
#define LATTICE_RUNTIME_IO_TENSORBOARD_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace lattice {

namespace tensorboard {

// Protobuf wire types used here.
enum class WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

// Appends protobuf fields to a byte string that may not grow past `max_bytes`: an append that
// would is dropped and the encoder is marked overflowed (Finish() then fails), so a huge tag can
// never make an unbounded record.
class ProtoEncoder {
 public:
  explicit ProtoEncoder(size_t max_bytes) : max_bytes_(max_bytes) {}

  void Double(uint32_t field, double v);
  void Float(uint32_t field, float v);
  void Int64(uint32_t field, int64_t v);  // varint (two's complement: 10 bytes when negative)
  void Bytes(uint32_t field, absl::string_view bytes);  // strings and nested messages

  bool overflowed() const { return overflowed_; }
  size_t size() const { return out_.size(); }
  // The encoded bytes, or kResourceExhausted naming `what` and the limit.
  absl::StatusOr<std::string> Finish(absl::string_view what) &&;

 private:
  void Key(uint32_t field, WireType type);
  void Varint(uint64_t v);
  void Raw(const void* bytes, size_t n);

  size_t max_bytes_;
  std::string out_;
  bool overflowed_ = false;
};

// TensorBoard's masked CRC-32C of data[0, n).
uint32_t MaskedCrc32c(const void* data, size_t n);
// One TFRecord holding `data` (framing above).
std::string FrameRecord(absl::string_view data);

// One scalar of a step: Summary.Value{tag, simple_value}.
struct Scalar {
  std::string tag;
  float value = 0;
};

// Limits that keep a record bounded. A step's dozen scalars take a few hundred bytes; the limits
// are far above any real use and exist so that a runaway input fails loudly instead.
inline constexpr size_t kMaxTagBytes = 256;
inline constexpr size_t kMaxScalarsPerEvent = 1024;
inline constexpr size_t kMaxEventBytes = 1 << 20;

// Serialized Event messages (no framing).
absl::StatusOr<std::string> EncodeFileVersionEvent(double wall_time);
absl::StatusOr<std::string> EncodeSessionStartEvent(double wall_time, int64_t step);
absl::StatusOr<std::string> EncodeScalarsEvent(double wall_time, int64_t step,
                                               absl::Span<const Scalar> scalars);

}  // namespace tensorboard

// Writes one event file in a directory. Records are buffered in memory and reach the file at
// Flush() (the trainer calls it at each log interval) and Close() (which also fsyncs). Not
// thread-safe.
class TensorBoardWriter {
 public:
  // Creates `dir` (and its parents) when missing and a new file in it named
  // `events.out.tfevents.<10-digit unix time>.<host>.<pid>.lattice` (TensorBoard finds event
  // files by the "tfevents" in their names), never replacing an existing file (O_EXCL: a name
  // taken already gets a counter before ".lattice"), and writes the file_version record.
  static absl::StatusOr<std::unique_ptr<TensorBoardWriter>> Open(const std::string& dir);
  ~TensorBoardWriter();  // closes without fsync when Close() was not called
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Appends one Event with these scalars at `step`, stamped with the current time.
  absl::Status AddScalars(int64_t step, absl::Span<const tensorboard::Scalar> scalars);
  // Appends SessionLog{START} at `step`: the steps from `step` on replace earlier files' ones.
  absl::Status AddSessionStart(int64_t step);
  // Writes the buffered records to the file.
  absl::Status Flush();
  // Flush, fsync, close. No call is valid afterwards.
  absl::Status Close();

  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status Append(absl::StatusOr<std::string> event);

  std::string path_;
  int fd_ = -1;
  std::string pending_;  // framed records not yet written
  bool failed_ = false;
};

}  // namespace lattice

#endif  // LATTICE_RUNTIME_IO_TENSORBOARD_H_
