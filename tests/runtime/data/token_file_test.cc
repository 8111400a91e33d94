#include "runtime/data/token_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/rng.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

// A fresh folder per test, removed afterwards.
class TokenFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("lattice_token_file_", info->name(), "_", ::getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

void WriteBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

template <typename T>
void Put(std::vector<uint8_t>& b, T v) {
  const size_t at = b.size();
  b.resize(at + sizeof(T));
  std::memcpy(b.data() + at, &v, sizeof(T));
}

template <typename T>
void PutAt(std::vector<uint8_t>& b, size_t at, T v) {
  ASSERT_LE(at + sizeof(T), b.size());
  std::memcpy(b.data() + at, &v, sizeof(T));
}

std::vector<int32_t> ReadAll(const TokenSource& s) {
  std::vector<int32_t> out(static_cast<size_t>(s.num_tokens()));
  const absl::Status st = s.Read(0, s.num_tokens(), out.data());
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

std::vector<int64_t> Starts(const TokenSource& s) {
  auto starts = s.DocumentStarts();
  EXPECT_TRUE(starts.ok()) << starts.status();
  if (!starts.ok()) return {};
  return std::vector<int64_t>(starts->begin(), starts->end());
}

// ---- Writer -> reader --------------------------------------------------------------------------

struct DTypeCase {
  TokenDType dtype;
  uint8_t code;
  int32_t max_token;
};

TEST_F(TokenFileTest, RoundTripEveryMegatronDType) {
  const DTypeCase cases[] = {
      {TokenDType::kUInt8, 1, 255},        {TokenDType::kInt8, 2, 127},
      {TokenDType::kInt16, 3, 32767},      {TokenDType::kInt32, 4, 2147483646},
      {TokenDType::kInt64, 5, 2147483646}, {TokenDType::kUInt16, 8, 65535},
  };
  for (const DTypeCase& c : cases) {
    SCOPED_TRACE(std::string(TokenDTypeName(c.dtype)));
    const std::string prefix = Path(absl::StrCat("rt_", TokenDTypeName(c.dtype)));
    MegatronDatasetWriter::Options opt;
    opt.vocab_size = static_cast<int64_t>(c.max_token) + 1;
    opt.override_dtype = true;
    opt.dtype = c.dtype;
    auto w = MegatronDatasetWriter::Create(prefix, opt);
    ASSERT_TRUE(w.ok()) << w.status();
    const std::vector<std::vector<int32_t>> docs = {
        {0, 1, c.max_token}, {}, {c.max_token / 2}, {5, 4, 3, 2, 1, 0, c.max_token - 1}};
    std::vector<int32_t> all;
    for (const auto& d : docs) {
      ASSERT_TRUE((*w)->AddDocument(d).ok());
      all.insert(all.end(), d.begin(), d.end());
    }
    EXPECT_EQ((*w)->num_documents(), 4);
    EXPECT_EQ((*w)->num_tokens(), 11);
    ASSERT_TRUE((*w)->Finalize().ok());
    EXPECT_FALSE((*w)->AddDocument(docs[0]).ok());

    // Every .idx field, byte by byte.
    const std::vector<uint8_t> idx = ReadBytes(prefix + ".idx");
    ASSERT_EQ(idx.size(), 34u + 4 * 4 + 8 * 4 + 8 * 5);
    EXPECT_EQ(std::memcmp(idx.data(), "MMIDIDX\0\0", 9), 0);
    uint64_t u64;
    std::memcpy(&u64, idx.data() + 9, 8);
    EXPECT_EQ(u64, 1u);
    EXPECT_EQ(idx[17], c.code);
    std::memcpy(&u64, idx.data() + 18, 8);
    EXPECT_EQ(u64, 4u);
    std::memcpy(&u64, idx.data() + 26, 8);
    EXPECT_EQ(u64, 5u);
    const size_t item = TokenDTypeSize(c.dtype);
    int64_t ptr = 0;
    for (int i = 0; i < 4; ++i) {
      int32_t len;
      int64_t p;
      std::memcpy(&len, idx.data() + 34 + 4 * i, 4);
      std::memcpy(&p, idx.data() + 34 + 16 + 8 * i, 8);
      EXPECT_EQ(len, static_cast<int32_t>(docs[i].size()));
      EXPECT_EQ(p, ptr);
      ptr += len * static_cast<int64_t>(item);
    }
    for (int d = 0; d <= 4; ++d) {
      int64_t v;
      std::memcpy(&v, idx.data() + 34 + 48 + 8 * d, 8);
      EXPECT_EQ(v, d);
    }
    EXPECT_EQ(ReadBytes(prefix + ".bin").size(), 11 * item);
    EXPECT_FALSE(std::filesystem::exists(prefix + ".bin.tmp." + std::to_string(::getpid())));

    for (const std::string& spelling : {prefix, prefix + ".idx", prefix + ".bin"}) {
      auto src = OpenTokenSource(spelling);
      ASSERT_TRUE(src.ok()) << src.status();
      EXPECT_EQ((*src)->format(), TokenFileFormat::kMegatron);
      EXPECT_EQ((*src)->dtype(), c.dtype);
      EXPECT_EQ((*src)->num_tokens(), 11);
      EXPECT_EQ(ReadAll(**src), all);
      EXPECT_EQ(Starts(**src), (std::vector<int64_t>{0, 3, 3, 4, 11}));
      std::vector<int32_t> mid(3);
      ASSERT_TRUE((*src)->Read(3, 3, mid.data()).ok());
      EXPECT_EQ(mid, (std::vector<int32_t>{c.max_token / 2, 5, 4}));
      EXPECT_TRUE((*src)->Validate(opt.vocab_size).ok());
    }
  }
}

TEST_F(TokenFileTest, WriterPicksDTypeAsMegatron) {
  EXPECT_EQ(MegatronDTypeForVocab(257), TokenDType::kUInt16);
  EXPECT_EQ(MegatronDTypeForVocab(65499), TokenDType::kUInt16);
  EXPECT_EQ(MegatronDTypeForVocab(65500), TokenDType::kInt32);
  EXPECT_EQ(MegatronDTypeForVocab(128256), TokenDType::kInt32);
  for (int64_t vocab : {50257, 128256}) {
    const std::string prefix = Path(absl::StrCat("v", vocab));
    auto w = MegatronDatasetWriter::Create(prefix, {.vocab_size = vocab});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->AddDocument(std::vector<int32_t>{1, static_cast<int32_t>(vocab - 1)}).ok());
    ASSERT_TRUE((*w)->Finalize().ok());
    EXPECT_EQ(ReadBytes(prefix + ".idx")[17], vocab < 65500 ? 8 : 4);
    auto src = OpenTokenSource(prefix);
    ASSERT_TRUE(src.ok());
    EXPECT_EQ(ReadAll(**src), (std::vector<int32_t>{1, static_cast<int32_t>(vocab - 1)}));
  }
}

TEST_F(TokenFileTest, WriterRejectsBadTokensAndOptions) {
  auto w = MegatronDatasetWriter::Create(Path("bad"), {.vocab_size = 300});
  ASSERT_TRUE(w.ok());
  absl::Status s = (*w)->AddDocument(std::vector<int32_t>{1, 300});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("token id 300 at position 1 of document 0"));
  s = (*w)->AddDocument(std::vector<int32_t>{-1});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  MegatronDatasetWriter::Options i8;
  i8.vocab_size = 1000;
  i8.override_dtype = true;
  i8.dtype = TokenDType::kInt8;
  auto w8 = MegatronDatasetWriter::Create(Path("i8"), i8);
  ASSERT_TRUE(w8.ok());
  s = (*w8)->AddDocument(std::vector<int32_t>{128});
  EXPECT_THAT(s.message(), HasSubstr("int8"));
  EXPECT_EQ(MegatronDatasetWriter::Create(Path("z"), {.vocab_size = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // runtime/io/output_file.h: a missing directory is NotFound, and the message names it.
  const absl::Status missing =
      MegatronDatasetWriter::Create(Path("no/such/dir/x"), {.vocab_size = 10}).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("no/such/dir' does not exist"));
}

TEST_F(TokenFileTest, WriterWithoutFinalizeLeavesNothing) {
  {
    auto w = MegatronDatasetWriter::Create(Path("abandoned"), {.vocab_size = 100});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->AddDocument(std::vector<int32_t>{1, 2, 3}).ok());
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir_));
}

TEST_F(TokenFileTest, EmptyDatasetRoundTrips) {
  auto w = MegatronDatasetWriter::Create(Path("empty"), {.vocab_size = 100});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Finalize().ok());
  auto src = OpenTokenSource(Path("empty"));
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ((*src)->num_tokens(), 0);
  EXPECT_EQ(Starts(**src), (std::vector<int64_t>{0}));
}

// ---- Files written by someone else (tests/data/formats/make_fixtures.py) ------------------------

TEST_F(TokenFileTest, ReadsIndependentlyWrittenFixtures) {
  const std::string dir = std::string(LATTICE_SOURCE_DIR) + "/tests/data/formats/";
  std::ifstream f(dir + "expected.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json expected = nlohmann::json::parse(f);
  ASSERT_EQ(expected.size(), 5u);
  for (const auto& [name, e] : expected.items()) {
    SCOPED_TRACE(name);
    TokenSourceOptions opt;
    opt.eot = e["eot"].get<int32_t>();
    auto src = OpenTokenSource(dir + name, opt);
    ASSERT_TRUE(src.ok()) << src.status();
    EXPECT_EQ(TokenFileFormatName((*src)->format()), e["format"].get<std::string>());
    EXPECT_EQ(TokenDTypeName((*src)->dtype()), e["dtype"].get<std::string>());
    EXPECT_EQ(ReadAll(**src), e["tokens"].get<std::vector<int32_t>>());
    EXPECT_EQ(Starts(**src), e["document_starts"].get<std::vector<int64_t>>());
  }
}

// ---- llm.c and nanoGPT, built by hand -----------------------------------------------------------

std::vector<uint8_t> LlmcShard(int32_t magic, int32_t version, int32_t ntok,
                               const std::vector<uint32_t>& tokens, int item) {
  std::vector<uint8_t> b;
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = ntok;
  for (int32_t h : header) Put(b, h);
  for (uint32_t t : tokens) {
    if (item == 2) {
      Put(b, static_cast<uint16_t>(t));
    } else {
      Put(b, t);
    }
  }
  return b;
}

TEST_F(TokenFileTest, LlmcShardsBothVersions) {
  WriteBytes(Path("v1.bin"), LlmcShard(20240520, 1, 6, {50256, 10, 11, 50256, 12, 13}, 2));
  auto v1 = OpenTokenSource(Path("v1.bin"));
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ((*v1)->format(), TokenFileFormat::kLlmc);
  EXPECT_EQ((*v1)->dtype(), TokenDType::kUInt16);
  EXPECT_EQ(ReadAll(**v1), (std::vector<int32_t>{50256, 10, 11, 50256, 12, 13}));
  EXPECT_EQ(Starts(**v1), (std::vector<int64_t>{0, 1, 4, 6}));

  WriteBytes(Path("v7.bin"), LlmcShard(20240801, 7, 4, {128000, 70000, 128001, 5}, 4));
  auto v7 = OpenTokenSource(Path("v7.bin"), {.eot = 128001});
  ASSERT_TRUE(v7.ok()) << v7.status();
  EXPECT_EQ((*v7)->dtype(), TokenDType::kUInt32);
  EXPECT_EQ(ReadAll(**v7), (std::vector<int32_t>{128000, 70000, 128001, 5}));
  EXPECT_EQ(Starts(**v7), (std::vector<int64_t>{0, 3, 4}));
  EXPECT_TRUE((*v7)->Validate(128256).ok());
  const absl::Status s = (*v7)->Validate(128001);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(Path("v7.bin")));
  EXPECT_THAT(s.message(), HasSubstr("position 2 has id 128001, which is >= vocab_size 128001"));

  // A uint32 id that does not fit int32 is reported, not wrapped.
  WriteBytes(Path("huge.bin"), LlmcShard(20240801, 7, 2, {1, 0x80000000u}, 4));
  auto huge = OpenTokenSource(Path("huge.bin"));
  ASSERT_TRUE(huge.ok());
  std::vector<int32_t> two(2);
  const absl::Status hs = (*huge)->Read(0, 2, two.data());
  EXPECT_EQ(hs.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(hs.message(), HasSubstr("position 1 has id 2147483648"));
}

TEST_F(TokenFileTest, LlmcErrors) {
  struct Case {
    std::vector<uint8_t> bytes;
    const char* fragment;
  };
  std::vector<uint8_t> short_file(1000, 0);
  PutAt<int32_t>(short_file, 0, 20240520);
  const Case cases[] = {
      {LlmcShard(20240520, 7, 2, {1, 2}, 2), "needs version 1, the header says 7"},
      {LlmcShard(20240801, 1, 2, {1, 2}, 4), "needs version 7, the header says 1"},
      {LlmcShard(20240520, 1, 3, {1, 2}, 2), "header says 3 tokens"},
      {LlmcShard(20240520, 1, 1, {1, 2}, 2), "but the file has 1028 bytes"},
      {LlmcShard(20240520, 1, -5, {}, 2), "negative token count -5"},
  };
  for (const Case& c : cases) {
    WriteBytes(Path("x.bin"), c.bytes);
    auto src = OpenTokenSource(Path("x.bin"));
    ASSERT_FALSE(src.ok()) << c.fragment;
    EXPECT_EQ(src.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(src.status().message(), HasSubstr(c.fragment));
    EXPECT_THAT(src.status().message(), HasSubstr(Path("x.bin")));
  }
  // Forced llm.c on a file with another magic or too short.
  WriteBytes(Path("y.bin"), LlmcShard(12345, 1, 0, {}, 2));
  auto forced = OpenTokenSource(Path("y.bin"), {.format = TokenFileFormat::kLlmc});
  EXPECT_THAT(forced.status().message(), HasSubstr("bad llm.c magic 12345"));
  WriteBytes(Path("s.bin"), short_file);
  forced = OpenTokenSource(Path("s.bin"), {.format = TokenFileFormat::kLlmc});
  EXPECT_THAT(forced.status().message(), HasSubstr("shorter than its 1024-byte header"));
}

TEST_F(TokenFileTest, NanoGptRawUint16) {
  std::vector<uint8_t> b;
  for (uint16_t t : {15496, 11, 50256, 464, 50256, 7, 8}) Put(b, t);
  WriteBytes(Path("train.bin"), b);
  auto src = OpenTokenSource(Path("train.bin"));
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ((*src)->format(), TokenFileFormat::kNanoGpt);
  EXPECT_EQ((*src)->num_tokens(), 7);
  EXPECT_EQ(ReadAll(**src), (std::vector<int32_t>{15496, 11, 50256, 464, 50256, 7, 8}));
  EXPECT_EQ(Starts(**src), (std::vector<int64_t>{0, 3, 5, 7}));
  // The EOT is a parameter.
  auto src11 = OpenTokenSource(Path("train.bin"), {.eot = 11});
  ASSERT_TRUE(src11.ok());
  EXPECT_EQ(Starts(**src11), (std::vector<int64_t>{0, 2, 7}));

  b.push_back(0);
  WriteBytes(Path("odd.bin"), b);
  auto odd = OpenTokenSource(Path("odd.bin"));
  EXPECT_EQ(odd.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(odd.status().message(), HasSubstr("size 15 is odd"));
  EXPECT_THAT(odd.status().message(), HasSubstr(Path("odd.bin")));
}

TEST_F(TokenFileTest, TextFileIsByteTokens) {
  const std::string text = "ab\ncd\n\n\nef\n\ng";
  WriteBytes(Path("t.txt"), std::vector<uint8_t>(text.begin(), text.end()));
  auto src = OpenTokenSource(Path("t.txt"));
  ASSERT_TRUE(src.ok());
  EXPECT_EQ((*src)->format(), TokenFileFormat::kText);
  EXPECT_EQ((*src)->dtype(), TokenDType::kUInt8);
  EXPECT_EQ(ReadAll(**src), std::vector<int32_t>(text.begin(), text.end()));
  EXPECT_EQ(Starts(**src), (std::vector<int64_t>{0, 8, 12, 13}));
}

TEST_F(TokenFileTest, MissingFilesAreNotFound) {
  auto src = OpenTokenSource(Path("nothing"));
  EXPECT_EQ(src.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(src.status().message(), HasSubstr(Path("nothing")));
  // An .idx without its .bin.
  auto w = MegatronDatasetWriter::Create(Path("m"), {.vocab_size = 10});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Finalize().ok());
  std::filesystem::remove(Path("m.bin"));
  src = OpenTokenSource(Path("m"));
  EXPECT_EQ(src.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(src.status().message(), HasSubstr(Path("m.bin")));
}

TEST_F(TokenFileTest, ReadIsBoundsChecked) {
  std::vector<uint8_t> b(20, 1);
  WriteBytes(Path("r.bin"), b);
  auto src = OpenTokenSource(Path("r.bin"));
  ASSERT_TRUE(src.ok());
  std::vector<int32_t> out(20);
  EXPECT_TRUE((*src)->Read(0, 10, out.data()).ok());
  EXPECT_TRUE((*src)->Read(10, 0, out.data()).ok());
  for (auto [begin, n] : std::vector<std::pair<int64_t, int64_t>>{
           {-1, 1}, {0, 11}, {10, 1}, {5, -1}, {11, 0}, {1, INT64_MAX}}) {
    const absl::Status s = (*src)->Read(begin, n, out.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << begin << " " << n;
    EXPECT_THAT(s.message(), HasSubstr(Path("r.bin")));
  }
}

TEST_F(TokenFileTest, NegativeIdsAreDataLoss) {
  MegatronDatasetWriter::Options opt;
  opt.vocab_size = 100;
  opt.override_dtype = true;
  opt.dtype = TokenDType::kInt8;
  auto w = MegatronDatasetWriter::Create(Path("neg"), opt);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->AddDocument(std::vector<int32_t>{1, 2, 3}).ok());
  ASSERT_TRUE((*w)->Finalize().ok());
  std::vector<uint8_t> bin = ReadBytes(Path("neg.bin"));
  bin[2] = 0xFF;  // int8 -1
  WriteBytes(Path("neg.bin"), bin);
  auto src = OpenTokenSource(Path("neg"));
  ASSERT_TRUE(src.ok());
  const absl::Status s = (*src)->Validate(100);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("position 2 has id -1"));
}

// ---- Megatron validation ------------------------------------------------------------------------

// A valid int32 dataset of three documents (2, 3, 1 tokens) to corrupt.
class MegatronCorruptionTest : public TokenFileTest {
 protected:
  void SetUp() override {
    TokenFileTest::SetUp();
    prefix_ = Path("ds");
    MegatronDatasetWriter::Options opt;
    opt.vocab_size = 100000;
    auto w = MegatronDatasetWriter::Create(prefix_, opt);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->AddDocument(std::vector<int32_t>{1, 2}).ok());
    ASSERT_TRUE((*w)->AddDocument(std::vector<int32_t>{3, 4, 99999}).ok());
    ASSERT_TRUE((*w)->AddDocument(std::vector<int32_t>{6}).ok());
    ASSERT_TRUE((*w)->Finalize().ok());
    idx_ = ReadBytes(prefix_ + ".idx");
    ASSERT_EQ(idx_.size(), 34u + 3 * 12 + 4 * 8);
  }
  // Offsets of the arrays.
  static constexpr size_t kSizes = 34, kPointers = 34 + 12, kDocs = 34 + 36;

  absl::Status OpenWith(const std::vector<uint8_t>& idx) {
    WriteBytes(prefix_ + ".idx", idx);
    return OpenTokenSource(prefix_).status();
  }
  void ExpectError(const std::vector<uint8_t>& idx, absl::StatusCode code,
                   const std::string& fragment) {
    const absl::Status s = OpenWith(idx);
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_THAT(s.message(), HasSubstr(fragment));
    EXPECT_THAT(s.message(), HasSubstr(prefix_ + ".idx"));
  }

  std::string prefix_;
  std::vector<uint8_t> idx_;
};

TEST_F(MegatronCorruptionTest, ValidFileOpens) {
  EXPECT_TRUE(OpenWith(idx_).ok());
  auto src = OpenTokenSource(prefix_);
  ASSERT_TRUE(src.ok());
  EXPECT_EQ((*src)->dtype(), TokenDType::kInt32);
  EXPECT_EQ(Starts(**src), (std::vector<int64_t>{0, 2, 5, 6}));
}

TEST_F(MegatronCorruptionTest, WrongMagic) {
  auto b = idx_;
  b[3] = 'X';
  ExpectError(b, absl::StatusCode::kDataLoss, "bad magic");
}

TEST_F(MegatronCorruptionTest, UnsupportedVersion) {
  auto b = idx_;
  PutAt<uint64_t>(b, 9, 2);
  ExpectError(b, absl::StatusCode::kInvalidArgument, "unsupported Megatron index version 2");
}

TEST_F(MegatronCorruptionTest, FloatAndUnknownDTypes) {
  auto b = idx_;
  b[17] = 7;
  ExpectError(b, absl::StatusCode::kInvalidArgument, "dtype code 7 (float32) holds floats");
  b[17] = 6;
  ExpectError(b, absl::StatusCode::kInvalidArgument, "dtype code 6 (float64) holds floats");
  b[17] = 9;
  ExpectError(b, absl::StatusCode::kDataLoss, "unknown dtype code 9");
}

TEST_F(MegatronCorruptionTest, TruncatedIdx) {
  ExpectError(std::vector<uint8_t>(idx_.begin(), idx_.begin() + 20), absl::StatusCode::kDataLoss,
              "truncated: 20 bytes");
  ExpectError(std::vector<uint8_t>(idx_.begin(), idx_.end() - 8), absl::StatusCode::kDataLoss,
              "counts inconsistent with the file size");
}

TEST_F(MegatronCorruptionTest, CountsInconsistentWithSize) {
  auto b = idx_;
  PutAt<uint64_t>(b, 18, 4);
  ExpectError(b, absl::StatusCode::kDataLoss, "counts inconsistent with the file size");
  PutAt<uint64_t>(b, 18, UINT64_MAX / 4);  // would overflow a naive size computation
  ExpectError(b, absl::StatusCode::kDataLoss, "counts inconsistent with the file size");
  b = idx_;
  PutAt<uint64_t>(b, 26, 1ull << 62);
  ExpectError(b, absl::StatusCode::kDataLoss, "counts inconsistent with the file size");
  b = idx_;
  b.push_back(0);  // one stray byte (not a multimodal mode array of 3)
  ExpectError(b, absl::StatusCode::kDataLoss, "the file has 103");
}

TEST_F(MegatronCorruptionTest, PointersAndSizesOutsideBin) {
  auto b = idx_;
  PutAt<int64_t>(b, kPointers + 0, 1000);
  ExpectError(b, absl::StatusCode::kDataLoss, "sequence 0 points at byte 1000, outside");
  b = idx_;
  PutAt<int64_t>(b, kPointers + 0, -4);
  ExpectError(b, absl::StatusCode::kDataLoss, "sequence 0 points at byte -4");
  b = idx_;
  PutAt<int32_t>(b, kSizes + 8, 2);  // last sequence 2 tokens: past the end of the .bin
  ExpectError(b, absl::StatusCode::kDataLoss, "past the end of");
  b = idx_;
  PutAt<int32_t>(b, kSizes + 4, -1);
  ExpectError(b, absl::StatusCode::kDataLoss, "sequence 1 has negative length -1");
  b = idx_;
  PutAt<int64_t>(b, kPointers + 8, 4);  // overlaps sequence 0
  ExpectError(b, absl::StatusCode::kDataLoss, "sequence 1 points at byte 4 but sequence 0 ends");
}

TEST_F(MegatronCorruptionTest, DocumentIndices) {
  auto b = idx_;
  PutAt<int64_t>(b, kDocs + 16, 0);
  ExpectError(b, absl::StatusCode::kDataLoss, "document_indices are not monotonic: [1] = 1 > [2] = 0");
  b = idx_;
  PutAt<int64_t>(b, kDocs, 1);
  ExpectError(b, absl::StatusCode::kDataLoss, "document_indices[0] is 1, must be 0");
  b = idx_;
  PutAt<int64_t>(b, kDocs + 24, 7);
  ExpectError(b, absl::StatusCode::kDataLoss, "document_indices[3] = 7 is past the 3 sequences");
  b = idx_;
  PutAt<int64_t>(b, kDocs + 24, 2);
  ExpectError(b, absl::StatusCode::kDataLoss, "the last document ends at sequence 2");
}

TEST_F(MegatronCorruptionTest, TokenOutsideVocabNamesFilePositionAndId) {
  auto src = OpenTokenSource(prefix_);
  ASSERT_TRUE(src.ok());
  EXPECT_TRUE((*src)->Validate(100000).ok());
  const absl::Status s = (*src)->Validate(50000);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(prefix_));
  EXPECT_THAT(s.message(), HasSubstr("token at position 4 has id 99999, which is >= vocab_size 50000"));
}

// Deterministic mutation fuzzing: whatever the .idx holds, opening and reading never crashes, and
// whatever opens satisfies the reader's invariants.
TEST_F(MegatronCorruptionTest, MutatedIndexNeverCrashes) {
  const CounterRng rng(7, "token_file_fuzz");
  const size_t bin_size = ReadBytes(prefix_ + ".bin").size();
  uint64_t draw = 0;
  int opened = 0, rejected = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::vector<uint8_t> b = idx_;
    const int mutations = 1 + static_cast<int>(rng.Bits(draw++) % 4);
    for (int m = 0; m < mutations; ++m) {
      const uint64_t r = rng.Bits(draw++);
      const size_t at = static_cast<size_t>(r % b.size());
      switch ((r >> 32) % 6) {
        case 0: b[at] = static_cast<uint8_t>(r >> 40); break;           // random byte
        case 1: b[at] ^= static_cast<uint8_t>(1u << ((r >> 40) % 8)); break;  // bit flip
        case 2: b[at] = (r >> 40) % 2 ? 0xFF : 0x00; break;             // extreme byte
        case 3: b.resize(at); break;                                   // truncate
        case 4: b.insert(b.begin() + at, static_cast<uint8_t>(r >> 40)); break;  // insert
        case 5: if (b.size() >= 8) PutAt<int64_t>(b, (r % (b.size() - 7)), static_cast<int64_t>(r) >> 8); break;
      }
      if (b.empty()) break;
    }
    WriteBytes(prefix_ + ".idx", b);
    auto src = OpenTokenSource(prefix_);
    if (!src.ok()) {
      ++rejected;
      EXPECT_TRUE(src.status().code() == absl::StatusCode::kDataLoss ||
                  src.status().code() == absl::StatusCode::kInvalidArgument)
          << src.status();
      continue;
    }
    ++opened;
    const TokenSource& s = **src;
    EXPECT_LE(s.num_tokens() * static_cast<int64_t>(TokenDTypeSize(s.dtype())),
              static_cast<int64_t>(bin_size));
    auto starts = s.DocumentStarts();
    ASSERT_TRUE(starts.ok());
    ASSERT_FALSE(starts->empty());
    EXPECT_EQ(starts->front(), 0);
    EXPECT_EQ(starts->back(), s.num_tokens());
    for (size_t i = 1; i < starts->size(); ++i) EXPECT_LE((*starts)[i - 1], (*starts)[i]);
    std::vector<int32_t> all(static_cast<size_t>(s.num_tokens()));
    (void)s.Read(0, s.num_tokens(), all.data());  // may be DataLoss (negative ids), never a crash
    (void)s.Validate(100000);
  }
  RecordProperty("opened", opened);
  RecordProperty("rejected", rejected);
  EXPECT_GT(rejected, 3000);  // the mutations almost always break something ...
  EXPECT_GT(opened, 0);       // ... but some land in tokens-neutral places (e.g. dtype 4 -> 1)
}

// The .bin must hold exactly what the .idx describes: extra bytes at the end (an appended or
// mismatched .bin) are an error naming both files, not silently unread.
TEST_F(MegatronCorruptionTest, BinLongerThanTheIndexDescribes) {
  std::vector<uint8_t> bin = ReadBytes(prefix_ + ".bin");
  ASSERT_EQ(bin.size(), 24u);
  bin.resize(28, 0);
  WriteBytes(prefix_ + ".bin", bin);
  const absl::Status s = OpenTokenSource(prefix_).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr(prefix_ + ".bin: 28 bytes, but its index " + prefix_ +
                                     ".idx describes 24 (6 tokens of int32): 4 bytes at the end "
                                     "belong to no sequence"));
}

TEST_F(MegatronCorruptionTest, FirstSequenceMustStartAtByteZero) {
  // Every pointer moved 4 bytes on, and the .bin 4 bytes longer at the front.
  std::vector<uint8_t> bin = ReadBytes(prefix_ + ".bin");
  bin.insert(bin.begin(), 4, 0);
  WriteBytes(prefix_ + ".bin", bin);
  auto b = idx_;
  PutAt<int64_t>(b, kPointers + 0, 4);
  PutAt<int64_t>(b, kPointers + 8, 12);
  PutAt<int64_t>(b, kPointers + 16, 24);
  ExpectError(b, absl::StatusCode::kDataLoss, "sequence 0 starts at byte 4 of " + prefix_ + ".bin");
}

// An .idx whose dtype code does not match the item size of its .bin (the 6 int32 tokens of the
// fixture are 24 bytes): named as such, rather than as the symptom (a sequence past the end).
TEST_F(MegatronCorruptionTest, DTypeCodeThatDisagreesWithTheBinSize) {
  auto b = idx_;
  b[17] = 1;  // uint8: 6 bytes, the .bin has 24
  ExpectError(b, absl::StatusCode::kDataLoss,
              "dtype code 1 (uint8, 1 bytes) disagrees with " + prefix_ +
                  ".bin: its 24 bytes hold the 6 tokens of the index only at 4 bytes per token");
  b[17] = 5;  // int64: 48 bytes
  ExpectError(b, absl::StatusCode::kDataLoss, "dtype code 5 (int64, 8 bytes) disagrees with");
  b[17] = 8;  // uint16: 12 bytes
  ExpectError(b, absl::StatusCode::kDataLoss, "only at 4 bytes per token");
}

// ---- Format detection ---------------------------------------------------------------------------

// nanoGPT tokens of GPT-2 (< 50257), enough to pass the 1024-byte llm.c header size.
std::vector<uint8_t> RawGpt2Tokens(int n) {
  std::vector<uint8_t> b;
  for (int i = 0; i < n; ++i) Put(b, static_cast<uint16_t>((i * 7919) % 50257));
  return b;
}

TEST_F(TokenFileTest, DamagedLlmcHeaderIsNotReadAsRawTokens) {
  const std::vector<uint32_t> tokens = {50256, 10, 11, 50256, 12, 13};
  struct Case {
    int32_t magic;
    int32_t version;
    int32_t ntok;
    const char* fragment;
  };
  const Case cases[] = {
      {20240520 ^ 0x10, 1, 6, "magic 20240536 is 1 bit off 20240520"},
      {20240801 ^ 0x30000, 7, 6, "magic 20437409 is 2 bits off 20240801"},
      {20240615, 1, 6, "magic 20240615 is a 2024 date like the llm.c magics"},
      {0, 1, 6, "magic 0, but version 1 and 6 tokens of 2 bytes match the file size"},
      {-1, 7, 3, "magic -1, but version 7 and 3 tokens of 4 bytes match the file size"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.fragment);
    WriteBytes(Path("shard.bin"), LlmcShard(c.magic, c.version, c.ntok, tokens, 2));
    auto src = OpenTokenSource(Path("shard.bin"));
    ASSERT_FALSE(src.ok());
    EXPECT_EQ(src.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(src.status().message(),
                HasSubstr(Path("shard.bin") + ": not read as raw nanoGPT tokens: its header "
                                              "looks like a damaged llm.c header ("));
    EXPECT_THAT(src.status().message(), HasSubstr(c.fragment));
  }
  // Asked for explicitly, the same bytes read as nanoGPT.
  WriteBytes(Path("shard.bin"), LlmcShard(20240520 ^ 0x10, 1, 6, tokens, 2));
  auto forced = OpenTokenSource(Path("shard.bin"), {.format = TokenFileFormat::kNanoGpt});
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ((*forced)->detection(), "format given by the caller");
}

TEST_F(TokenFileTest, DetectionIsReported) {
  WriteBytes(Path("raw.bin"), RawGpt2Tokens(2000));
  auto raw = OpenTokenSource(Path("raw.bin"));
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ((*raw)->format(), TokenFileFormat::kNanoGpt);
  EXPECT_EQ((*raw)->Describe(),
            Path("raw.bin") + ": nanogpt, uint16, 2000 tokens (auto-detected: nanoGPT raw uint16 "
                              "(no .idx beside it, no llm.c header, not .txt))");

  WriteBytes(Path("v1.bin"), LlmcShard(20240520, 1, 2, {1, 2}, 2));
  auto llmc = OpenTokenSource(Path("v1.bin"));
  ASSERT_TRUE(llmc.ok()) << llmc.status();
  EXPECT_EQ((*llmc)->Describe(), Path("v1.bin") + ": llm.c, uint16, 2 tokens (auto-detected: "
                                                  "llm.c magic 20240520, version 1)");

  auto w = MegatronDatasetWriter::Create(Path("m"), {.vocab_size = 10});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->AddDocument(std::vector<int32_t>{1, 2, 3}).ok());
  ASSERT_TRUE((*w)->Finalize().ok());
  for (const std::string& given : {Path("m"), Path("m.bin"), Path("m.idx")}) {
    auto m = OpenTokenSource(given);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ((*m)->detection(), "auto-detected: Megatron index " + Path("m") + ".idx") << given;
  }
  // A view over documents reports the detection of its file.
  auto base = OpenTokenSource(Path("m"));
  ASSERT_TRUE(base.ok());
  auto range = DocumentRange(std::shared_ptr<const TokenSource>(std::move(*base)), 0, 1);
  ASSERT_TRUE(range.ok()) << range.status();
  EXPECT_EQ((*range)->detection(), "auto-detected: Megatron index " + Path("m") + ".idx");

  WriteBytes(Path("t.txt"), {'h', 'i'});
  auto text = OpenTokenSource(Path("t.txt"));
  ASSERT_TRUE(text.ok());
  EXPECT_EQ((*text)->detection(), "auto-detected: .txt, read as byte tokens");
}

TEST_F(TokenFileTest, FilesThatAreNotTokenDataAreRefused) {
  for (const char* name : {"docs.jsonl", "tokenizer.json", "w.safetensors", "data.parquet",
                           "corpus.txt.gz", "arr.npy"}) {
    SCOPED_TRACE(name);
    WriteBytes(Path(name), RawGpt2Tokens(600));
    auto src = OpenTokenSource(Path(name));
    ASSERT_FALSE(src.ok());
    EXPECT_EQ(src.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(src.status().message(), HasSubstr(Path(name) + ": a ."));
    EXPECT_THAT(src.status().message(), HasSubstr("file is not token data"));
  }
}

// ---- Document ranges ----------------------------------------------------------------------------

TEST_F(TokenFileTest, DocumentRangeIsAView) {
  auto w = MegatronDatasetWriter::Create(Path("d"), {.vocab_size = 100});
  ASSERT_TRUE(w.ok());
  for (const auto& doc : std::vector<std::vector<int32_t>>{{1, 2}, {3}, {4, 5, 6}, {7}}) {
    ASSERT_TRUE((*w)->AddDocument(doc).ok());
  }
  ASSERT_TRUE((*w)->Finalize().ok());
  auto src = OpenTokenSource(Path("d"));
  ASSERT_TRUE(src.ok());
  std::shared_ptr<const TokenSource> base = std::move(*src);
  auto range = DocumentRange(base, 1, 3);
  ASSERT_TRUE(range.ok()) << range.status();
  EXPECT_EQ((*range)->num_tokens(), 4);
  EXPECT_EQ(ReadAll(**range), (std::vector<int32_t>{3, 4, 5, 6}));
  EXPECT_EQ(Starts(**range), (std::vector<int64_t>{0, 1, 4}));
  EXPECT_EQ((*range)->FileOffset(1), 3);
  std::vector<int32_t> out(2);
  EXPECT_EQ((*range)->Read(3, 2, out.data()).code(), absl::StatusCode::kOutOfRange);
  const absl::Status v = (*range)->Validate(5);
  EXPECT_THAT(v.message(), HasSubstr("position 4 has id 5"));  // file position, not view position
  EXPECT_EQ(DocumentRange(base, 2, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DocumentRange(base, 0, 5).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lattice
