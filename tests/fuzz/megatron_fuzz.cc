// Fuzzes the Megatron indexed-dataset reader (runtime/data/token_file.h). An input is an .idx
// and a .bin: its first 4 bytes (little-endian) give the .idx length, modulo what follows; the
// rest is the .bin. Whatever opens must satisfy the reader's invariants.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/data/dataset.h"
#include "runtime/data/token_file.h"
#include "tests/fuzz/fuzz_file.h"

using lattice::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lattice;
  static const fuzz::FuzzFile idx("ds.idx");
  static const fuzz::FuzzFile bin("ds.bin");
  static const std::string prefix = idx.path().substr(0, idx.path().size() - 4);
  if (size < 4) return 0;
  uint32_t idx_len;
  std::memcpy(&idx_len, data, 4);
  data += 4;
  size -= 4;
  idx_len = size == 0 ? 0 : static_cast<uint32_t>(idx_len % (size + 1));
  idx.Write(data, idx_len);
  bin.Write(data + idx_len, size - idx_len);

  absl::StatusOr<std::unique_ptr<TokenSource>> opened = OpenTokenSource(prefix);
  if (!opened.ok()) {
    Check(opened.status().code() == absl::StatusCode::kDataLoss ||
          opened.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  std::shared_ptr<const TokenSource> src = std::move(*opened);
  Check(src->format() == TokenFileFormat::kMegatron);
  // The .bin holds exactly the indexed tokens.
  Check(src->num_tokens() * static_cast<int64_t>(TokenDTypeSize(src->dtype())) ==
        static_cast<int64_t>(size - idx_len));
  absl::StatusOr<absl::Span<const int64_t>> starts = src->DocumentStarts();
  Check(starts.ok() && !starts->empty() && starts->front() == 0 &&
        starts->back() == src->num_tokens());
  Check(std::is_sorted(starts->begin(), starts->end()));
  std::vector<int32_t> all(static_cast<size_t>(src->num_tokens()));
  (void)src->Read(0, src->num_tokens(), all.data());  // DataLoss for negative ids, no crash
  (void)src->Validate(50257);
  Check(!src->Read(src->num_tokens(), 1, all.data()).ok());
  const int64_t docs = static_cast<int64_t>(starts->size()) - 1;
  if (docs >= 2) {
    auto split = SplitTrainVal(src, 0.5);
    Check(split.ok());
    Check(split->first->num_tokens() + split->second->num_tokens() == src->num_tokens());
  }
  return 0;
}
