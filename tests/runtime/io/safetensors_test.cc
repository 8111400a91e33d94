#include "runtime/io/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/rng.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

// A folder of this process's own, so that concurrent runs (ctest -j, two build dirs) never
// share files; removed when the tests end.
const std::string& TempFolder() {
  static const std::string* const dir = [] {
    auto* d = new std::string(absl::StrCat(::testing::TempDir(), "/lattice_safetensors_test_",
                                           ::getpid()));
    std::filesystem::create_directories(*d);
    return d;
  }();
  return *dir;
}

class RemoveTempFolder : public ::testing::Environment {
 public:
  void TearDown() override { std::filesystem::remove_all(TempFolder()); }
};
const auto* const kRemoveTempFolder = ::testing::AddGlobalTestEnvironment(new RemoveTempFolder);

std::string TempPath(const std::string& name) { return TempFolder() + "/" + name; }

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
}

// Opens `bytes` written to a fresh file. Loops use this rather than rewriting one file:
// ext4 flushes a file truncated and rewritten in place on close, which made them slow.
absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenBytes(const std::string& bytes) {
  static int counter = 0;
  const std::string path = TempPath(absl::StrCat("loop_", counter++));
  WriteBytes(path, bytes);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  std::filesystem::remove(path);  // the mapping, if any, stays valid
  return f;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string U64Le(uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

// A safetensors file from its parts: the length field says `header.size()` unless told.
std::string MakeFile(const std::string& header, const std::string& buffer) {
  return U64Le(header.size()) + header + buffer;
}

// Fills t with a pattern that is exact in every dtype, element i -> Pattern(dtype, i).
double Pattern(DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return i * 0.5 - 3.0;
    case DType::kBF16: return i * 0.25 - 1.0;
    case DType::kF16: return i * 0.125;
    case DType::kI32: return i * 7 - 100;
    case DType::kU16: return i * 3 + 60000;
    case DType::kU32: return i * 100000.0 + 7;
  }
  return 0;
}

Tensor PatternTensor(Shape shape, DType dtype) {
  Tensor f = Tensor::Zeros(shape, DType::kF32);
  Tensor t = Tensor::Zeros(shape, dtype);
  for (int64_t i = 0; i < f.numel(); ++i) f.f32()[i] = static_cast<float>(Pattern(dtype, i));
  EXPECT_TRUE(ConvertInto(f, t).ok());
  return t;
}

bool SameBytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST(SafetensorsTest, RoundTripsEveryDtype) {
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"z.f32", PatternTensor({3, 4}, DType::kF32)},
      {"a.bf16", PatternTensor({5}, DType::kBF16)},  // odd byte count: the next one is unaligned
      {"m.f16", PatternTensor({2, 3, 2}, DType::kF16)},
      {"i32", PatternTensor({7}, DType::kI32)},
      {"u16", PatternTensor({1, 3}, DType::kU16)},
      {"u32", PatternTensor({4}, DType::kU32)},
      {"scalar", PatternTensor({}, DType::kF32)},
      {"empty", PatternTensor({0, 8}, DType::kF32)},
  };
  const std::string path = TempPath("roundtrip.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"step", "12"}, {"arch", "gpt2"}}).ok());

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<std::string> names;
  for (const auto& [name, t] : tensors) names.push_back(name);
  EXPECT_EQ((*f)->names(), names);  // file order = the order given to the writer
  EXPECT_EQ((*f)->metadata(),
            (std::map<std::string, std::string>{
                {"format", "pt"}, {"step", "12"}, {"arch", "gpt2"}}));
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    absl::StatusOr<SafetensorsTensorInfo> info = (*f)->Info(name);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->dtype_name, DTypeSafetensorsName(t.dtype()));
    EXPECT_TRUE(info->supported);
    EXPECT_EQ(info->dtype, t.dtype());
    EXPECT_EQ(info->shape, t.shape());
    EXPECT_EQ(info->end - info->begin, t.nbytes());
    absl::StatusOr<Tensor> back = (*f)->Read(name);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(SameBytes(*back, t));
    Tensor dst = Tensor::Zeros(t.shape(), t.dtype());
    ASSERT_TRUE((*f)->ReadInto(name, dst).ok());
    EXPECT_TRUE(SameBytes(dst, t));
  }

  // The layout on disk: length, '{', space padding to a multiple of 8, metadata first.
  const std::string bytes = ReadBytes(path);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_EQ(bytes.substr(8, 16), "{\"__metadata__\":");
  EXPECT_THAT(bytes.substr(8, n), HasSubstr("\"format\":\"pt\""));
  const size_t last = bytes.substr(8, n).find_last_not_of(' ');
  EXPECT_EQ(bytes[8 + last], '}');
  EXPECT_LE(n - 1 - last, 7u);  // at most 7 bytes of padding
  size_t total = 8 + n;
  for (const auto& [name, t] : tensors) total += t.nbytes();
  EXPECT_EQ(bytes.size(), total);
  // No temporary file stays behind.
  for (const auto& entry : std::filesystem::directory_iterator(TempFolder())) {
    EXPECT_THAT(entry.path().filename().string(),
                ::testing::Not(HasSubstr("roundtrip.safetensors.tmp")));
  }
}

TEST(SafetensorsTest, MetadataFormatDefaultsToPtButCanBeSet) {
  const std::string path = TempPath("format.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}, {{"format", "np"}}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->names().empty());
  EXPECT_EQ((*f)->metadata().at("format"), "np");
  ASSERT_TRUE(WriteSafetensors(path, {}).ok());
  f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
}

TEST(SafetensorsTest, ReadIntoConvertsFloatsAndChecksShape) {
  const std::string path = TempPath("convert.safetensors");
  const Tensor bf16 = PatternTensor({2, 4}, DType::kBF16);
  const Tensor f16 = PatternTensor({2, 4}, DType::kF16);
  const Tensor f32 = PatternTensor({2, 4}, DType::kF32);
  const Tensor u16 = PatternTensor({2, 4}, DType::kU16);
  ASSERT_TRUE(WriteSafetensors(path, {{"bf16", bf16}, {"f16", f16}, {"f32", f32}, {"u16", u16}})
                  .ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();

  for (const auto& [name, dtype] :
       std::vector<std::pair<std::string, DType>>{{"bf16", DType::kBF16}, {"f16", DType::kF16},
                                                  {"f32", DType::kF32}}) {
    Tensor dst = Tensor::Zeros({2, 4}, DType::kF32);
    ASSERT_TRUE((*f)->ReadInto(name, dst).ok());
    for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(dst.f32()[i], Pattern(dtype, i)) << name << i;
  }
  Tensor to_bf16 = Tensor::Zeros({2, 4}, DType::kBF16);
  ASSERT_TRUE((*f)->ReadInto("f32", to_bf16).ok());
  Tensor expect = Tensor::Zeros({2, 4}, DType::kBF16);
  ASSERT_TRUE(ConvertInto(f32, expect).ok());
  EXPECT_TRUE(SameBytes(to_bf16, expect));
  Tensor u16_to_u32 = Tensor::Zeros({2, 4}, DType::kU32);
  ASSERT_TRUE((*f)->ReadInto("u16", u16_to_u32).ok());
  EXPECT_EQ(u16_to_u32.data<uint32_t>()[5], static_cast<uint32_t>(Pattern(DType::kU16, 5)));

  Tensor wrong_shape = Tensor::Zeros({4, 2}, DType::kF32);
  absl::Status s = (*f)->ReadInto("f32", wrong_shape);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(path + ": tensor 'f32' has shape [2, 4] but the destination "
                                            "has shape [4, 2]"));
  Tensor int_dst = Tensor::Zeros({2, 4}, DType::kI32);
  EXPECT_THAT((*f)->ReadInto("f32", int_dst).message(), HasSubstr("mix integers and floats"));
  Tensor float_dst = Tensor::Zeros({2, 4}, DType::kF32);
  EXPECT_THAT((*f)->ReadInto("u16", float_dst).message(), HasSubstr("mix integers and floats"));
  EXPECT_EQ((*f)->ReadInto("f32", Tensor()).code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<Tensor> missing = (*f)->Read("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no tensor named 'nope'"));
  EXPECT_EQ((*f)->Info("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*f)->Contains("f16"));
  EXPECT_FALSE((*f)->Contains("nope"));
}

// A hand-made file whose buffer starts at an odd address: conversions must not read floats
// through misaligned pointers (UBSan checks this in the sanitizer build).
TEST(SafetensorsTest, ReadIntoHandlesAnUnalignedBuffer) {
  std::string header = R"({"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]}})";
  header += std::string((8 - header.size() % 8) % 8 + 1, ' ');  // header length = 8k + 1
  const Tensor w = PatternTensor({3}, DType::kBF16);
  const std::string buffer(static_cast<const char*>(w.raw()), 6);
  const std::string path = TempPath("unaligned.safetensors");
  WriteBytes(path, MakeFile(header, buffer));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  Tensor dst = Tensor::Zeros({3}, DType::kF32);
  ASSERT_TRUE((*f)->ReadInto("w", dst).ok());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(dst.f32()[i], Pattern(DType::kBF16, i));
}

TEST(SafetensorsTest, UnsupportedDtypesOpenButDoNotRead) {
  const std::string header =
      R"({"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
      R"("b":{"dtype":"BOOL","shape":[3],"data_offsets":[16,19]},)"
      R"("x":{"dtype":"F32","shape":[1],"data_offsets":[19,23]}})";
  const std::string path = TempPath("f64.safetensors");
  WriteBytes(path, MakeFile(header, std::string(23, '\0')));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->names(), (std::vector<std::string>{"d", "b", "x"}));
  absl::StatusOr<SafetensorsTensorInfo> info = (*f)->Info("d");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->dtype_name, "F64");
  EXPECT_FALSE(info->supported);
  absl::StatusOr<Tensor> t = (*f)->Read("d");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(t.status().message(), HasSubstr("tensor 'd' has unsupported dtype F64"));
  EXPECT_THAT((*f)->ReadInto("b", Tensor::Zeros({3}, DType::kF32)).message(),
              HasSubstr("unsupported dtype BOOL"));
  EXPECT_TRUE((*f)->Read("x").ok());  // the unaligned F32 still reads (memcpy)
}

TEST(SafetensorsTest, WriterRejectsBadInput) {
  const std::string path = TempPath("bad_write.safetensors");
  const Tensor t = PatternTensor({2}, DType::kF32);
  absl::Status s = WriteSafetensors(path, {{"a", t}, {"a", t}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor name 'a' is given twice"));
  EXPECT_THAT(WriteSafetensors(path, {{"__metadata__", t}}).message(), HasSubstr("reserved"));
  EXPECT_THAT(WriteSafetensors(path, {{"u", Tensor()}}).message(),
              HasSubstr("tensor 'u' must be an allocated CPU tensor"));
  EXPECT_THAT(WriteSafetensors(path, {{"bad\xff", t}}).message(),
              HasSubstr("cannot encode the header"));
  EXPECT_FALSE(std::filesystem::exists(path));
  absl::Status no_dir = WriteSafetensors(TempPath("no/such/dir/x.safetensors"), {{"a", t}});
  EXPECT_FALSE(no_dir.ok());
  EXPECT_THAT(no_dir.message(), HasSubstr("no/such/dir/x.safetensors"));
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f =
      SafetensorsFile::Open(TempPath("does_not_exist.safetensors"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(f.status().message(), HasSubstr("does_not_exist.safetensors"));
}

struct CorruptCase {
  std::string name;
  std::string bytes;
  std::string fragment;
};

std::string Entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return absl::StrCat(R"({"dtype":")", dtype, R"(","shape":)", shape, R"(,"data_offsets":)",
                      offsets, "}");
}

TEST(SafetensorsTest, RejectsEveryCorruption) {
  const std::string ok_a = Entry("F32", "[2]", "[0,8]");
  const std::string buf8(8, '\x01');
  const std::vector<CorruptCase> cases = {
      {"empty", "", "the file is 0 bytes, shorter than the 8-byte header length"},
      {"short", "abc", "the file is 3 bytes, shorter than the 8-byte header length"},
      {"length_past_end", U64Le(100) + "{}", "header length 100 exceeds the 2 bytes"},
      {"absurd_length", U64Le(uint64_t{1} << 40) + "{}", "is absurd"},
      {"not_object", MakeFile("[1, 2]", ""), "the header does not start with '{'"},
      {"zero_length", MakeFile("", ""), "the header does not start with '{'"},
      {"bad_json", MakeFile("{\"a\": ", ""), "header: invalid JSON: parse error"},
      {"trailing_garbage", MakeFile("{} x", ""), "header: invalid JSON: parse error"},
      {"bad_utf8", MakeFile("{\"\xff\": 1}", ""), "header: invalid JSON: parse error"},
      {"deep", MakeFile("{\"a\":" + std::string(40, '[') + std::string(40, ']') + "}", ""),
       "header: JSON nested deeper than 16 levels at a[0]"},
      // Found by fuzzing: nlohmann's lexer takes a NUL for the end of the input, so the JSON
      // parsed and the junk after it was ignored. The reference reader rejects it.
      {"nul_then_junk", MakeFile(R"({"a":)" + ok_a + "}" + std::string("\0junk", 5), buf8),
       "the 59-byte header has a NUL byte at offset 54 (after the JSON only spaces may pad it)"},
      {"nul_padding", MakeFile(R"({"a":)" + ok_a + "}" + std::string(3, '\0'), buf8),
       "has a NUL byte at offset 54"},
      {"nul_inside_string", MakeFile(std::string("{\"a\0b\":1}", 9), ""),
       "has a NUL byte at offset 3"},
      {"entry_not_object", MakeFile(R"({"a": 1})", ""), "tensor 'a': entry is a JSON number"},
      {"no_dtype", MakeFile(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", buf8),
       "tensor 'a': entry has no \"dtype\""},
      {"no_shape", MakeFile(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", buf8),
       "tensor 'a': entry has no \"shape\""},
      {"no_offsets", MakeFile(R"({"a":{"dtype":"F32","shape":[2]}})", buf8),
       "tensor 'a': entry has no \"data_offsets\""},
      {"dtype_not_string",
       MakeFile(R"({"a":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", buf8),
       "tensor 'a': \"dtype\" is not a string"},
      {"unknown_dtype", MakeFile(R"({"a":)" + Entry("F33", "[2]", "[0,8]") + "}", buf8),
       "tensor 'a': unknown dtype 'F33'"},
      {"lowercase_dtype", MakeFile(R"({"a":)" + Entry("f32", "[2]", "[0,8]") + "}", buf8),
       "tensor 'a': unknown dtype 'f32'"},
      {"shape_not_array", MakeFile(R"({"a":)" + Entry("F32", "2", "[0,8]") + "}", buf8),
       "tensor 'a': \"shape\" is not an array"},
      {"negative_dim", MakeFile(R"({"a":)" + Entry("F32", "[-2]", "[0,8]") + "}", buf8),
       "tensor 'a': shape [-2] has a dim that is not a non-negative integer"},
      {"float_dim", MakeFile(R"({"a":)" + Entry("F32", "[2.0]", "[0,8]") + "}", buf8),
       "has a dim that is not a non-negative integer"},
      {"string_dim", MakeFile(R"({"a":)" + Entry("F32", "[\"2\"]", "[0,8]") + "}", buf8),
       "has a dim that is not a non-negative integer"},
      {"huge_dim", MakeFile(R"({"a":)" + Entry("F32", "[18446744073709551615]", "[0,8]") + "}",
                            buf8),
       "has a dim that is not a non-negative integer"},
      {"overflowing_shape",
       MakeFile(R"({"a":)" + Entry("F32", "[4294967296,4294967296,0]", "[0,0]") + "}", ""),
       "tensor 'a': shape [4294967296,4294967296,0] is too large"},
      {"overflowing_bytes",
       MakeFile(R"({"a":)" + Entry("F32", "[4611686018427387904]", "[0,8]") + "}", buf8),
       "is too large"},
      {"size_mismatch", MakeFile(R"({"a":)" + Entry("F32", "[3]", "[0,8]") + "}", buf8),
       "tensor 'a': shape [3] x F32 needs 12 bytes but data_offsets [0, 8] span 8"},
      {"offsets_not_pair", MakeFile(R"({"a":)" + Entry("F32", "[2]", "[0,8,8]") + "}", buf8),
       "tensor 'a': \"data_offsets\" [0,8,8] is not a pair of non-negative integers"},
      {"negative_offset", MakeFile(R"({"a":)" + Entry("F32", "[2]", "[-8,0]") + "}", buf8),
       "is not a pair of non-negative integers"},
      {"offsets_past_buffer", MakeFile(R"({"a":)" + Entry("F32", "[2]", "[4,12]") + "}", buf8),
       "tensor 'a': data_offsets [4, 12] do not lie within the 8-byte buffer"},
      {"begin_after_end", MakeFile(R"({"a":)" + Entry("F32", "[0]", "[8,0]") + "}", buf8),
       "data_offsets [8, 0] do not lie within"},
      {"overlap",
       MakeFile(R"({"a":)" + ok_a + R"(,"b":)" + Entry("F32", "[1]", "[4,8]") + "}", buf8),
       "tensor 'b': data_offsets [4, 8] overlap tensor 'a' (which ends at 8)"},
      {"hole",
       MakeFile(R"({"a":)" + ok_a + R"(,"b":)" + Entry("F32", "[1]", "[12,16]") + "}",
                std::string(16, '\0')),
       "tensor 'b': data_offsets [12, 16] leave a hole of 4 bytes at buffer offset 8"},
      {"hole_at_start", MakeFile(R"({"a":)" + Entry("F32", "[1]", "[4,8]") + "}", buf8),
       "leave a hole of 4 bytes at buffer offset 0"},
      {"trailing_bytes", MakeFile(R"({"a":)" + ok_a + "}", std::string(12, '\0')),
       "the tensors cover 8 bytes of the 12-byte buffer"},
      {"duplicate_tensor",
       MakeFile(R"({"a":)" + ok_a + R"(,"a":)" + Entry("F32", "[2]", "[8,16]") + "}",
                std::string(16, '\0')),
       "header: duplicate key \"a\" in (root)"},
      {"duplicate_field",
       MakeFile(R"({"a":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}})", buf8),
       "header: duplicate key \"dtype\" in a"},
      {"metadata_not_strings",
       MakeFile(R"({"__metadata__":{"step":12},"a":)" + ok_a + "}", buf8),
       "__metadata__ must map strings to strings; 'step' is a number"},
      {"metadata_not_object", MakeFile(R"({"__metadata__":["x"],"a":)" + ok_a + "}", buf8),
       "__metadata__ is not a JSON object"},
  };
  for (const CorruptCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = TempPath("corrupt_" + c.name + ".safetensors");
    WriteBytes(path, c.bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << f.status();
    EXPECT_THAT(f.status().message(), HasSubstr(path + ": not a valid safetensors file: "));
    EXPECT_THAT(f.status().message(), HasSubstr(c.fragment));
  }
}

TEST(SafetensorsTest, AcceptsWhatTheFormatAllows) {
  // Metadata null, unknown extra fields in an entry, zero-size tensors anywhere, tensors listed
  // out of buffer order.
  const std::string header =
      R"({"__metadata__":null,"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12],"x":1},)"
      R"("e":{"dtype":"U16","shape":[0],"data_offsets":[12,12]},)"
      R"("a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
  const std::string path = TempPath("allowed.safetensors");
  WriteBytes(path, MakeFile(header, std::string(12, '\0')));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->names(), (std::vector<std::string>{"a", "b", "e"}));
  EXPECT_TRUE((*f)->metadata().empty());
  absl::StatusOr<Tensor> e = (*f)->Read("e");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->numel(), 0);

  // Whitespace after the JSON pads the header (the writer pads with spaces to align the
  // buffer; the reference reader also accepts tabs and newlines there).
  for (const std::string pad : {"  ", "       ", " \t\n\r"}) {
    WriteBytes(path, MakeFile(header + pad, std::string(12, '\0')));
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> padded = SafetensorsFile::Open(path);
    EXPECT_TRUE(padded.ok()) << padded.status();
  }
}

// Found by safetensors_fuzz: a U32 tensor read into I32 cast values >= 2^31 (undefined
// behaviour); now the value is an error naming the file and the tensor.
TEST(SafetensorsTest, ReadIntoRefusesIntegersOutsideTheDestination) {
  Tensor u = Tensor::Zeros({2}, DType::kU32);
  u.data<uint32_t>()[1] = 3000000000u;
  const std::string path = TempPath("u32.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"ids", u}}).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  const absl::Status s = (*f)->ReadInto("ids", Tensor::Zeros({2}, DType::kI32));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(path + ": tensor 'ids': cannot convert"));
  EXPECT_THAT(s.message(), HasSubstr("element 1 = 3000000000 is outside the range of i32"));
}

// Names and strings from the header appear in messages cut short, whatever their length.
TEST(SafetensorsTest, LongNamesAreCutInMessages) {
  const std::string name(100000, 'n');
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = OpenBytes(
      MakeFile(R"({")" + name + R"(":)" + Entry("F32", "[3]", "[0,8]") + "}", std::string(8, '\0')));
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(f.status().message(), HasSubstr("tensor '" + std::string(117, 'n') + "...': shape [3]"));
  EXPECT_LT(f.status().message().size(), 400u);
  f = OpenBytes(MakeFile(R"({"a":)" + Entry(std::string(100000, 'D'), "[2]", "[0,8]") + "}",
                         std::string(8, '\0')));
  ASSERT_FALSE(f.ok());
  EXPECT_LT(f.status().message().size(), 400u);
  f = OpenBytes(MakeFile(R"({"a":)" + Entry("F32", "[2]", "[0,8]") + R"(,"__metadata__":{")" +
                             name + R"(":1}})",
                         std::string(8, '\0')));
  ASSERT_FALSE(f.ok());
  EXPECT_LT(f.status().message().size(), 400u);
}

// The crash input of GitHub issue 8: a header nested 100,000 deep used to be parsed in full
// (and any dump of it recursed once per level). Now the parse stops at the depth limit.
TEST(SafetensorsTest, DeeplyNestedHeaderIsRejectedAtTheDepthLimit) {
  constexpr int kDepth = 100000;
  for (const std::string& open : {std::string("["), std::string("{\"k\":")}) {
    SCOPED_TRACE(open);
    std::string nested;
    for (int i = 0; i < kDepth; ++i) nested += open;
    const std::string close = open == "[" ? "]" : "}";
    for (int i = 0; i < kDepth; ++i) nested += close;
    const std::string header = R"({"w":{"dtype":"F32","shape":)" + nested + R"(,"data_offsets":[0,0]}})";
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = OpenBytes(MakeFile(header, ""));
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(f.status().message(), HasSubstr("header: JSON nested deeper than 16 levels at w.shape"));
    EXPECT_LT(f.status().message().size(), 600u);  // the message is not a dump of the input
  }
}

std::string ValidFileBytes() {
  const std::string path = TempPath("fuzz_base.safetensors");
  EXPECT_TRUE(WriteSafetensors(path,
                               {{"wte", PatternTensor({4, 3}, DType::kF32)},
                                {"ln.w", PatternTensor({3}, DType::kBF16)},
                                {"ln.b", PatternTensor({3}, DType::kF16)},
                                {"ids", PatternTensor({2, 2}, DType::kI32)},
                                {"s", PatternTensor({}, DType::kU32)}},
                               {{"k", "v"}})
                  .ok());
  return ReadBytes(path);
}

TEST(SafetensorsTest, EveryTruncationIsRejected) {
  const std::string bytes = ValidFileBytes();
  for (size_t n = 0; n < bytes.size(); ++n) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = OpenBytes(bytes.substr(0, n));
    ASSERT_FALSE(f.ok()) << "truncated to " << n << " of " << bytes.size();
    EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  }
  // A file that grew at the end is rejected too.
  EXPECT_THAT(OpenBytes(bytes + "x").status().message(),
              HasSubstr("-byte buffer; the rest belongs to no tensor"));
}

TEST(SafetensorsTest, HeaderLengthThatLies) {
  const std::string bytes = ValidFileBytes();
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  const std::string path = TempPath("lying.safetensors");
  for (int64_t delta : {-16, -8, -1, 1, 8, 16}) {
    SCOPED_TRACE(delta);
    std::string lie = bytes;
    const std::string len = U64Le(n + delta);
    lie.replace(0, 8, len);
    WriteBytes(path, lie);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  }
}

// Deterministic mutations of a valid file (bytes flipped, inserted or deleted in the length
// and the header, with or without fixing up the length): Open must never crash, and whatever
// opens must read consistently.
TEST(SafetensorsTest, FuzzMutatedHeadersNeverCrash) {
  const std::string base = ValidFileBytes();
  uint64_t header_len;
  std::memcpy(&header_len, base.data(), 8);
  const std::string alphabet = "{}[]\",:0123456789-.eE \\ufF32BI_";
  CounterRng rng(99, "safetensors-fuzz");
  uint64_t draw = 0;
  auto next = [&](uint64_t n) { return rng.Bits(draw++) % n; };
  int opened = 0;
  constexpr int kIterations = 4000;
  for (int it = 0; it < kIterations; ++it) {
    std::string bytes = base;
    uint64_t len = header_len;
    const int edits = 1 + static_cast<int>(next(3));
    for (int e = 0; e < edits; ++e) {
      const size_t pos = 8 + next(len);  // inside the header
      switch (next(7)) {
        case 0: bytes[pos] ^= static_cast<char>(1 << next(8)); break;
        case 1: bytes[pos] = alphabet[next(alphabet.size())]; break;
        case 2:
          bytes.insert(pos, 1, alphabet[next(alphabet.size())]);
          ++len;
          break;
        case 3:
          if (len > 1) {
            bytes.erase(pos, 1);
            --len;
          }
          break;
        case 4: bytes[next(8)] = static_cast<char>(next(256)); break;  // the length field
        case 5: bytes[pos] = static_cast<char>(next(256)); break;
        case 6: {  // a digit changed, e.g. in data_offsets or shape
          const size_t digit = bytes.find_first_of("0123456789", pos);
          if (digit < 8 + len) bytes[digit] = static_cast<char>('0' + next(10));
          break;
        }
      }
    }
    if (next(2) == 0) {  // keep the length field consistent with inserts/deletes
      const std::string l = U64Le(len);
      bytes.replace(0, 8, l);
    }
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = OpenBytes(bytes);
    if (!f.ok()) {
      EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << f.status();
      continue;
    }
    ++opened;
    for (const std::string& name : (*f)->names()) {
      absl::StatusOr<SafetensorsTensorInfo> info = (*f)->Info(name);
      ASSERT_TRUE(info.ok());
      absl::StatusOr<Tensor> t = (*f)->Read(name);
      if (!info->supported) {
        EXPECT_FALSE(t.ok());
        continue;
      }
      ASSERT_TRUE(t.ok()) << t.status();
      EXPECT_EQ(t->nbytes(), info->end - info->begin);
      Tensor dst = Tensor::Zeros(info->shape, DType::kF32);
      const bool is_float = info->dtype == DType::kF32 || info->dtype == DType::kBF16 ||
                            info->dtype == DType::kF16;
      EXPECT_EQ((*f)->ReadInto(name, dst).ok(), is_float);
    }
  }
  RecordProperty("opened", opened);
  EXPECT_GT(opened, 0);
  EXPECT_LT(opened, kIterations);
}

// ---- Interop with the Python `safetensors` package ------------------------------------------

constexpr char kInteropScript[] = R"PY(
import struct, sys
import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as np_save
from safetensors.torch import save_file as pt_save

mode, folder = sys.argv[1], sys.argv[2]

def pattern(dtype, n):
    i = np.arange(n, dtype=np.float64)
    return {"F32": i * 0.5 - 3.0, "BF16": i * 0.25 - 1.0, "F16": i * 0.125,
            "I32": i * 7 - 100, "U16": i * 3 + 60000, "U32": i * 100000.0 + 7}[dtype]

NP = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "U16": np.uint16, "U32": np.uint32}

if mode == "write":
    arrays = {f"np.{d}": pattern(d, 12).astype(t).reshape(3, 4) for d, t in NP.items()}
    arrays["scalar"] = np.array(2.5, dtype=np.float32)
    arrays["empty"] = np.zeros((0, 5), dtype=np.float32)
    np_save(arrays, f"{folder}/py_numpy.safetensors", metadata={"writer": "numpy"})
    bf16 = torch.tensor(pattern("BF16", 6), dtype=torch.float32).reshape(2, 3).to(torch.bfloat16)
    pt_save({"pt.BF16": bf16}, f"{folder}/py_torch.safetensors", metadata={"format": "pt"})
    print("python wrote py_numpy.safetensors and py_torch.safetensors")
elif mode == "verify":
    path = f"{folder}/lattice.safetensors"
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0, n
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
        assert meta == {"format": "pt", "origin": "lattice"}, meta
        names = sorted(f.keys())
        assert names == sorted(["lat.F32", "lat.BF16", "lat.F16", "lat.I32", "lat.U16",
                                "lat.U32", "lat.scalar"]), names
        for d, t in NP.items():
            a = f.get_tensor(f"lat.{d}")
            assert a.dtype == t and a.shape == (2, 5), (d, a.dtype, a.shape)
            assert np.array_equal(a.astype(np.float64).ravel(), pattern(d, 10)), (d, a)
        s = f.get_tensor("lat.scalar")
        assert s.shape == () and s == np.float32(-3.0), s
    with safe_open(path, framework="pt") as f:
        b = f.get_tensor("lat.BF16")
        assert b.dtype == torch.bfloat16 and tuple(b.shape) == (2, 5)
        want = torch.tensor(pattern("BF16", 10), dtype=torch.float32)
        assert torch.equal(b.float().reshape(-1), want), b
    print("python read every lattice tensor back exactly, metadata", meta)
else:
    sys.exit("unknown mode " + mode)
)PY";

// Runs the interop script; returns its exit status (0 = all its assertions held).
int RunPython(const std::string& python, const std::string& mode, const std::string& dir) {
  const std::string script = dir + "/interop.py";
  std::ofstream(script) << kInteropScript;
  const std::string cmd = "'" + python + "' '" + script + "' " + mode + " '" + dir + "' > '" +
                          dir + "/" + mode + ".log' 2>&1";
  const int rc = std::system(cmd.c_str());
  const std::string log = ReadBytes(dir + "/" + mode + ".log");
  std::cout << "[python " << mode << "] " << log;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(SafetensorsTest, InteropWithPythonSafetensors) {
  const std::string python = LATTICE_SOURCE_DIR "/.venv/bin/python";
  if (::access(python.c_str(), X_OK) != 0) GTEST_SKIP() << "no " << python;
  const std::string dir = TempPath("interop");
  std::filesystem::create_directories(dir);

  // Python writes, lattice reads.
  ASSERT_EQ(RunPython(python, "write", dir), 0);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> np_file =
      SafetensorsFile::Open(dir + "/py_numpy.safetensors");
  ASSERT_TRUE(np_file.ok()) << np_file.status();
  EXPECT_EQ((*np_file)->metadata().at("writer"), "numpy");
  for (DType d : {DType::kF32, DType::kF16, DType::kI32, DType::kU16, DType::kU32}) {
    const std::string name = absl::StrCat("np.", DTypeSafetensorsName(d));
    SCOPED_TRACE(name);
    absl::StatusOr<Tensor> t = (*np_file)->Read(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->dtype(), d);
    EXPECT_EQ(t->shape(), (Shape{3, 4}));
    EXPECT_TRUE(SameBytes(*t, PatternTensor({3, 4}, d)));
  }
  absl::StatusOr<Tensor> scalar = (*np_file)->Read("scalar");
  ASSERT_TRUE(scalar.ok());
  EXPECT_EQ(scalar->shape(), Shape{});
  EXPECT_EQ(scalar->f32()[0], 2.5f);
  absl::StatusOr<Tensor> empty = (*np_file)->Read("empty");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->shape(), (Shape{0, 5}));

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> pt_file =
      SafetensorsFile::Open(dir + "/py_torch.safetensors");
  ASSERT_TRUE(pt_file.ok()) << pt_file.status();
  absl::StatusOr<Tensor> bf16 = (*pt_file)->Read("pt.BF16");
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_TRUE(SameBytes(*bf16, PatternTensor({2, 3}, DType::kBF16)));
  Tensor as_f32 = Tensor::Zeros({2, 3}, DType::kF32);
  ASSERT_TRUE((*pt_file)->ReadInto("pt.BF16", as_f32).ok());
  EXPECT_EQ(as_f32.f32()[5], Pattern(DType::kBF16, 5));

  // lattice writes, Python reads.
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kI32, DType::kU16, DType::kU32}) {
    tensors.emplace_back(absl::StrCat("lat.", DTypeSafetensorsName(d)), PatternTensor({2, 5}, d));
  }
  tensors.emplace_back("lat.scalar", PatternTensor({}, DType::kF32));
  ASSERT_TRUE(
      WriteSafetensors(dir + "/lattice.safetensors", tensors, {{"origin", "lattice"}}).ok());
  EXPECT_EQ(RunPython(python, "verify", dir), 0);
}

}  // namespace
}  // namespace lattice
