// Fuzzes the raw token readers (nanoGPT uint16 and .txt bytes, runtime/data/token_file.h) and
// the sample pipeline over them (runtime/data/dataset.h): document scanning, train/val splits,
// shuffled windows and blends, with arbitrary tokens. The first byte picks the sequence length
// and the end-of-text id; the rest is the file.
#include <cstdint>
#include <vector>

#include "runtime/data/dataset.h"
#include "runtime/data/token_file.h"
#include "tests/fuzz/fuzz_file.h"

using lattice::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lattice;
  static const fuzz::FuzzFile raw("train.bin");
  static const fuzz::FuzzFile text("corpus.txt");
  if (size < 1) return 0;
  const int64_t seq_len = 1 + data[0] % 16;
  const int32_t eot = data[0] & 0x80 ? 50256 : data[0];
  data += 1;
  size -= 1;
  raw.Write(data, size);
  text.Write(data, size);

  for (const std::string* path : {&raw.path(), &text.path()}) {
    const bool is_text = path == &text.path();
    absl::StatusOr<std::unique_ptr<TokenSource>> opened =
        is_text ? OpenTextBytes(*path) : OpenNanoGptBin(*path, eot);
    if (!opened.ok()) {
      Check(!is_text && size % 2 == 1);
      continue;
    }
    std::shared_ptr<const TokenSource> src = std::move(*opened);
    absl::StatusOr<absl::Span<const int64_t>> starts = src->DocumentStarts();
    Check(starts.ok() && starts->front() == 0 && starts->back() == src->num_tokens());
    std::vector<std::shared_ptr<const TokenSource>> parts = {src};
    auto split = SplitTrainVal(src, 0.3);
    if (split.ok()) {
      Check(split->first->num_tokens() + split->second->num_tokens() == src->num_tokens());
      parts = {split->first, split->second};
    }
    std::vector<WeightedSource> sources;
    for (size_t i = 0; i < parts.size(); ++i) sources.push_back({1.0 + i, parts[i]});
    SampleOptions options;
    options.seq_len = seq_len;
    options.seed = static_cast<uint64_t>(eot);
    options.vocab_size = is_text ? 256 : 50257;
    auto samples = TrainingSamples::Create(std::move(sources), options);
    if (!samples.ok()) {
      Check(samples.status().code() == absl::StatusCode::kInvalidArgument);
      continue;
    }
    std::vector<int32_t> sample(static_cast<size_t>(seq_len + 1));
    for (int64_t g : {int64_t{0}, int64_t{1}, int64_t{4095}, int64_t{4096}, int64_t{9999}}) {
      const absl::Status s = (*samples)->Get(g, sample.data());
      // Only ids >= vocab_size can fail (uint16 values < 2^16 always fit int32).
      Check(s.ok() || s.code() == absl::StatusCode::kDataLoss);
    }
    const DataLoaderState state = (*samples)->State(123);
    auto back = DataLoaderState::FromJson(state.ToJson());
    Check(back.ok() && (*samples)->CheckState(*back).ok());
  }
  return 0;
}
