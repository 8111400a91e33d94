// Fuzzes the llm.c shard reader and the format auto-detection of a header-carrying .bin
// (runtime/data/token_file.h): arbitrary bytes as "shard.bin", opened explicitly as llm.c and
// through OpenTokenSource. The two must agree: what opens as llm.c is auto-detected as llm.c,
// and a damaged header is never read as raw tokens.
#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/data/token_file.h"
#include "tests/fuzz/fuzz_file.h"

using lattice::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lattice;
  static const fuzz::FuzzFile file("shard.bin");
  file.Write(data, size);

  absl::StatusOr<std::unique_ptr<TokenSource>> llmc = OpenLlmcShard(file.path(), 50256);
  absl::StatusOr<std::unique_ptr<TokenSource>> detected = OpenTokenSource(file.path());
  if (llmc.ok()) {
    const TokenSource& s = **llmc;
    Check(1024 + s.num_tokens() * static_cast<int64_t>(TokenDTypeSize(s.dtype())) ==
          static_cast<int64_t>(size));
    std::vector<int32_t> all(static_cast<size_t>(s.num_tokens()));
    (void)s.Read(0, s.num_tokens(), all.data());
    absl::StatusOr<absl::Span<const int64_t>> starts = s.DocumentStarts();
    Check(starts.ok() && starts->front() == 0 && starts->back() == s.num_tokens());
    Check(detected.ok() && (*detected)->format() == TokenFileFormat::kLlmc);
  } else {
    Check(llmc.status().code() == absl::StatusCode::kDataLoss);
  }
  if (detected.ok()) {
    const TokenSource& s = **detected;
    Check(s.format() == TokenFileFormat::kLlmc || s.format() == TokenFileFormat::kNanoGpt);
    Check(!s.detection().empty() && !s.Describe().empty());
    if (s.format() == TokenFileFormat::kNanoGpt) {
      Check(size % 2 == 0 && s.num_tokens() == static_cast<int64_t>(size / 2));
      // A file that carries an llm.c magic is never raw tokens.
      if (size >= 1024) {
        int32_t magic;
        std::memcpy(&magic, data, 4);
        Check(magic != 20240520 && magic != 20240801);
      }
    }
  } else {
    Check(detected.status().code() == absl::StatusCode::kDataLoss ||
          detected.status().code() == absl::StatusCode::kInvalidArgument);
  }
  return 0;
}
