// TensorBoard records and events against bytes nobody here wrote: every expected string below
// was produced by the `tensorboard` package 2.18.0 (its protobuf classes,
// tensorboard.compat.proto.event_pb2, serialized with SerializeToString, and its own
// RecordWriter, tensorboard.summary.writer.record_writer, for the framing), so the hand-written
// wire format and the masked CRC-32C are checked against protobuf's and TensorBoard's own.
#include "runtime/io/tensorboard.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "runtime/io/crc32c.h"

namespace lattice {
namespace {

using tensorboard::Scalar;

template <size_t N>
std::string Bytes(const char (&s)[N]) {
  return std::string(s, N - 1);  // literals may hold NULs: take every byte but the terminator
}

// Event(wall_time=1700000000.25, file_version="brain.Event:2").SerializeToString()
const std::string kFileVersionEvent = Bytes(
    "\x09\x00\x00\x10\x40\xfc\x54\xd9\x41\x1a\x0d\x62\x72\x61\x69\x6e\x2e\x45\x76\x65\x6e\x74\x3a"
    "\x32");
// RecordWriter.write of the bytes above.
const std::string kFileVersionRecord = Bytes(
    "\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7f\x4b\x22\x09\x00\x00\x10\x40\xfc\x54\xd9\x41\x1a\x0d"
    "\x62\x72\x61\x69\x6e\x2e\x45\x76\x65\x6e\x74\x3a\x32\x33\x8d\x2f\xe9");
// Event(wall_time=1700000001.5, step=300) with summary values (train/loss, 2.5),
// (train/lr, 0.0), (x, -1e-3).
const std::string kScalarsEvent = Bytes(
    "\x09\x00\x00\x60\x40\xfc\x54\xd9\x41\x10\xac\x02\x2a\x2e\x0a\x11\x0a\x0a\x74\x72\x61\x69\x6e"
    "\x2f\x6c\x6f\x73\x73\x15\x00\x00\x20\x40\x0a\x0f\x0a\x08\x74\x72\x61\x69\x6e\x2f\x6c\x72\x15"
    "\x00\x00\x00\x00\x0a\x08\x0a\x01\x78\x15\x6f\x12\x83\xba");
const std::string kScalarsRecord = Bytes(
    "\x3c\x00\x00\x00\x00\x00\x00\x00\xc8\xb7\xa3\x52\x09\x00\x00\x60\x40\xfc\x54\xd9\x41\x10\xac"
    "\x02\x2a\x2e\x0a\x11\x0a\x0a\x74\x72\x61\x69\x6e\x2f\x6c\x6f\x73\x73\x15\x00\x00\x20\x40\x0a"
    "\x0f\x0a\x08\x74\x72\x61\x69\x6e\x2f\x6c\x72\x15\x00\x00\x00\x00\x0a\x08\x0a\x01\x78\x15\x6f"
    "\x12\x83\xba\xc1\xdc\xda\x4d");
// Event(wall_time=1700000002.75, step=5, session_log=SessionLog(status=START)).
const std::string kSessionStartEvent =
    Bytes("\x09\x00\x00\xb0\x40\xfc\x54\xd9\x41\x10\x05\x3a\x02\x08\x01");
// RecordWriter.write(b"").
const std::string kEmptyRecord =
    Bytes("\x00\x00\x00\x00\x00\x00\x00\x00\x29\x03\x98\x07\xd8\xea\x82\xa2");

TEST(TensorBoardTest, MaskedCrcOfKnownInputs) {
  // The empty string's CRC-32C is 0, so its masked value is the mask's constant alone.
  EXPECT_EQ(tensorboard::MaskedCrc32c("", 0), 0xa282ead8u);
  // Eight zero bytes (the length field of an empty record): TensorBoard wrote 0x07980329.
  const std::string zeros(8, '\0');
  EXPECT_EQ(tensorboard::MaskedCrc32c(zeros.data(), zeros.size()), 0x07980329u);
  // "123456789" has CRC-32C 0xE3069283 (the CRC catalogue's check value); masked by hand:
  // rotate right by 15 and add 0xa282ead8, modulo 2^32.
  const uint32_t crc = 0xE3069283u;
  EXPECT_EQ(tensorboard::MaskedCrc32c("123456789", 9),
            static_cast<uint32_t>(((crc >> 15) | (crc << 17)) + 0xa282ead8u));
}

TEST(TensorBoardTest, FramingMatchesTensorBoardRecordWriter) {
  EXPECT_EQ(tensorboard::FrameRecord(""), kEmptyRecord);
  EXPECT_EQ(tensorboard::FrameRecord(kFileVersionEvent), kFileVersionRecord);
  EXPECT_EQ(tensorboard::FrameRecord(kScalarsEvent), kScalarsRecord);
}

TEST(TensorBoardTest, EventsMatchProtobufSerialization) {
  absl::StatusOr<std::string> fv = tensorboard::EncodeFileVersionEvent(1700000000.25);
  ASSERT_TRUE(fv.ok()) << fv.status();
  EXPECT_EQ(*fv, kFileVersionEvent);
  const std::vector<Scalar> scalars = {{"train/loss", 2.5f}, {"train/lr", 0.0f}, {"x", -1e-3f}};
  absl::StatusOr<std::string> ev = tensorboard::EncodeScalarsEvent(1700000001.5, 300, scalars);
  ASSERT_TRUE(ev.ok()) << ev.status();
  EXPECT_EQ(*ev, kScalarsEvent);
  absl::StatusOr<std::string> start = tensorboard::EncodeSessionStartEvent(1700000002.75, 5);
  ASSERT_TRUE(start.ok()) << start.status();
  EXPECT_EQ(*start, kSessionStartEvent);
}

TEST(TensorBoardTest, VarintsOfEveryWidth) {
  // Protobuf's varint: 7 bits per byte, low group first, high bit = more follows. Values at
  // each width boundary, and -1 (an int64 is written as its 64-bit two's complement: 10 bytes).
  struct Case {
    int64_t v;
    std::string bytes;
  };
  const std::vector<Case> cases = {
      {1, Bytes("\x08\x01")},
      {127, Bytes("\x08\x7f")},
      {128, Bytes("\x08\x80\x01")},
      {300, Bytes("\x08\xac\x02")},
      {16384, Bytes("\x08\x80\x80\x01")},
      {-1, Bytes("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")},
  };
  for (const Case& c : cases) {
    tensorboard::ProtoEncoder e(64);
    e.Int64(1, c.v);
    absl::StatusOr<std::string> out = std::move(e).Finish("test");
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(*out, c.bytes) << c.v;
  }
}

TEST(TensorBoardTest, EncoderIsBounded) {
  tensorboard::ProtoEncoder e(8);
  e.Bytes(1, "1234567");  // key + length + 7 bytes = 9 > 8
  EXPECT_TRUE(e.overflowed());
  absl::StatusOr<std::string> out = std::move(e).Finish("test message");
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(out.status().message().find("test message"), std::string::npos);

  const std::vector<Scalar> long_tag = {{std::string(tensorboard::kMaxTagBytes + 1, 'a'), 1.0f}};
  EXPECT_EQ(tensorboard::EncodeScalarsEvent(1, 1, long_tag).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<Scalar> empty_tag = {{"", 1.0f}};
  EXPECT_EQ(tensorboard::EncodeScalarsEvent(1, 1, empty_tag).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Reads back a file's records, checking both CRCs of each.
std::vector<std::string> ReadRecords(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> out;
  size_t pos = 0;
  auto u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(all[at + i])) << (8 * i);
    return v;
  };
  while (pos < all.size()) {
    EXPECT_LE(pos + 12, all.size());
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(static_cast<uint8_t>(all[pos + i])) << (8 * i);
    EXPECT_EQ(u32(pos + 8), tensorboard::MaskedCrc32c(all.data() + pos, 8));
    EXPECT_LE(pos + 16 + len, all.size());
    out.push_back(all.substr(pos + 12, len));
    EXPECT_EQ(u32(pos + 12 + len), tensorboard::MaskedCrc32c(all.data() + pos + 12, len));
    pos += 16 + len;
  }
  return out;
}

TEST(TensorBoardTest, WriterWritesFileVersionThenSteps) {
  const std::string dir =
      (std::filesystem::path(::testing::TempDir()) / "tb_writer_test" / "nested").string();
  std::filesystem::remove_all(dir);
  absl::StatusOr<std::unique_ptr<TensorBoardWriter>> w = TensorBoardWriter::Open(dir);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::string name = std::filesystem::path((*w)->path()).filename().string();
  EXPECT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
  EXPECT_EQ(name.substr(name.size() - 8), ".lattice") << name;
  // A second writer in the same second gets another name, never the first one's file.
  absl::StatusOr<std::unique_ptr<TensorBoardWriter>> w2 = TensorBoardWriter::Open(dir);
  ASSERT_TRUE(w2.ok()) << w2.status();
  EXPECT_NE((*w2)->path(), (*w)->path());

  const std::vector<Scalar> s1 = {{"train/loss", 3.0f}};
  const std::vector<Scalar> s2 = {{"train/loss", 2.0f}, {"train/lr", 1e-4f}};
  ASSERT_TRUE((*w)->AddScalars(1, s1).ok());
  ASSERT_TRUE((*w)->AddScalars(2, s2).ok());
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_FALSE((*w)->AddScalars(3, s1).ok());  // closed

  const std::vector<std::string> records = ReadRecords((*w)->path());
  ASSERT_EQ(records.size(), 3u);
  // The records equal what the encoder makes, apart from the wall time: compare after the
  // 9 bytes of the wall_time field (key 0x09 + 8 bytes), which every record starts with.
  ASSERT_GE(records[0].size(), 9u);
  EXPECT_EQ(records[0][0], '\x09');
  EXPECT_EQ(records[0].substr(9), kFileVersionEvent.substr(9));
  absl::StatusOr<std::string> e2 = tensorboard::EncodeScalarsEvent(1.0, 2, s2);
  ASSERT_TRUE(e2.ok());
  EXPECT_EQ(records[2].substr(9), e2->substr(9));
  std::filesystem::remove_all(std::filesystem::path(dir).parent_path());
}

}  // namespace
}  // namespace lattice
