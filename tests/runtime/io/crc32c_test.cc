// CRC-32C against published vectors (RFC 3720 appendix B.4, and the "123456789" check value of
// the CRC catalogue), both implementations, and the Extend property the checkpoint writer
// relies on (a box's CRC computed in pieces equals the CRC of the whole).
#include "runtime/io/crc32c.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace lattice {
namespace {

using crc32c_internal::ExtendHardware;
using crc32c_internal::ExtendPortable;
using crc32c_internal::HasHardware;

struct Vector {
  std::string name;
  std::vector<uint8_t> bytes;
  uint32_t crc;
};

std::vector<Vector> Vectors() {
  std::vector<Vector> v;
  const std::string check = "123456789";
  v.push_back({"123456789", std::vector<uint8_t>(check.begin(), check.end()), 0xE3069283u});
  v.push_back({"32 zeros", std::vector<uint8_t>(32, 0x00), 0x8A9136AAu});
  v.push_back({"32 x 0xff", std::vector<uint8_t>(32, 0xFF), 0x62A8AB43u});
  std::vector<uint8_t> inc(32), dec(32);
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<uint8_t>(i);
    dec[i] = static_cast<uint8_t>(31 - i);
  }
  v.push_back({"0..31", inc, 0x46DD794Eu});
  v.push_back({"31..0", dec, 0x113FDB5Cu});
  // An iSCSI SCSI Read (10) command PDU.
  v.push_back({"iscsi read pdu",
               {0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
                0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},
               0xD9963A56u});
  return v;
}

TEST(Crc32c, PublishedVectors) {
  for (const Vector& v : Vectors()) {
    EXPECT_EQ(Crc32c(v.bytes.data(), v.bytes.size()), v.crc) << v.name;
    EXPECT_EQ(ExtendPortable(0, v.bytes.data(), v.bytes.size()), v.crc) << v.name;
    if (HasHardware()) {
      EXPECT_EQ(ExtendHardware(0, v.bytes.data(), v.bytes.size()), v.crc) << v.name;
    }
  }
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
}

TEST(Crc32c, ExtendInPiecesEqualsWhole) {
  std::mt19937 rng(5);
  std::vector<uint8_t> data(1000);
  for (uint8_t& b : data) b = static_cast<uint8_t>(rng());
  const uint32_t whole = Crc32c(data.data(), data.size());
  for (size_t cut = 0; cut <= data.size(); cut += 37) {
    const uint32_t a = Crc32c(data.data(), cut);
    EXPECT_EQ(Crc32cExtend(a, data.data() + cut, data.size() - cut), whole) << cut;
  }
}

// The dispatched function (the instruction on CPUs with SSE4.2, which every x86-64-v2 target has)
// equals the table implementation.
TEST(Crc32c, ImplementationsAgreeOnEveryLengthAndAlignment) {
  std::mt19937 rng(9);
  std::vector<uint8_t> data(300);
  for (uint8_t& b : data) b = static_cast<uint8_t>(rng());
  for (size_t start = 0; start < 9; ++start) {
    for (size_t n = 0; start + n <= data.size(); n += 7) {
      ASSERT_EQ(Crc32cExtend(0x1234u, data.data() + start, n),
                ExtendPortable(0x1234u, data.data() + start, n))
          << start << " " << n;
    }
  }
}

}  // namespace
}  // namespace lattice
