// Instruction fine-tuning data (data.format: sft): JSONL examples, tokenized once into a
// prepared file that later runs reuse, served as training rows with the loss masked to the
// completion (or assistant) tokens, one example per row or several packed per row.
//
// Input. Each non-blank line of the JSONL file is one object, either
//   {"prompt": "...", "completion": "..."}
//       tokens = Encode(prompt) ++ Encode(completion) ++ [EOS]   (EOS: the tokenizer's
//       end-of-text id, when it has one); the loss counts the completion tokens and the EOS,
//       so the model learns to stop. Prompt and completion are encoded separately, so the
//       boundary between them is exact.
//   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
//       rendered by the chat template (runtime/text/chat_template.h, ChatML); each segment is
//       encoded on its own and the loss counts the assistant segments (an assistant message's
//       content and the <|im_end|> after it). No EOS is appended: <|im_end|> is the stop.
// Other fields are ignored. Errors name "<file>:<line>" and what is wrong (invalid JSON, both
// or neither form, a field that is not a string, the chat template's unknown role or misplaced
// system message, an example without a single counted token).
//
// Prepared file ("<jsonl>.lattice-sft", next to the JSONL; little-endian):
//   char[8]  magic "LTSFT\0\0\1"
//   u64      format version (1)
//   u64      JSONL size in bytes, u64 CRC-32C of the JSONL bytes
//   u64      tokenizer identity: CRC-32C of the tokenizer.json bytes (of "byte" for the byte
//            tokenizer), u64 CRC-32C of the chat template's name and version
//   i64      EOS id appended to prompt/completion examples (-1: none)
//   u64      N examples, u64 M tokens
//   i64[N+1] example offsets into the token array (offsets[0] = 0, offsets[N] = M)
//   i64[N]   the JSONL line (1-based) of each example
//   i32[M]   token ids
//   u8[M]    loss mask: 1 where the token is a target the loss counts
//   u32      CRC-32C of every byte before it
// A run reuses the file when its header matches the JSONL and the tokenizer of this run (it
// logs which); otherwise it tokenizes again and replaces it. A file whose size or CRC is wrong
// is a DataLoss error naming it (delete it to prepare again).
//
// Rows. An example of n tokens fills n - 1 positions of a row: inputs x[0..n-2], targets
// x[1..n-1], each target counted only where the mask says so (else -1). So no position ever
// predicts the first token of another example. An example with n - 1 > model.seq_len is an
// error naming its file and line (lattice never truncates an answer silently). Positions after
// the last example are padding (input 0, target -1).
//   Unpacked (data.pack: false): one example per row.
//   Packed (data.pack: true): the examples, in an order shuffled once by train.seed, fill rows
//   sequentially: a row takes the next example while it fits, else a new row starts. Each token
//   records doc_start, the row position where its example begins; attention lets query t see
//   keys doc_start[t] <= j <= t only, and positions restart at 0 for every example
//   (t - doc_start[t]), so a packed row computes what the examples compute alone (up to the
//   order of fp32 sums; tests/model/packing_test.cc). Padding is a segment of its own.
// Order: rows are visited in a fresh Feistel order every epoch (runtime/data/dataset.h), and the
// data-parallel ranks share global row indices exactly as for pretraining.
#ifndef LATTICE_RUNTIME_DATA_SFT_H_
#define LATTICE_RUNTIME_DATA_SFT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/data/dataset.h"
#include "runtime/text/tokenizer.h"

namespace lattice {

// Tokenized examples (what the prepared file holds).
struct SftExamples {
  std::string source;              // the JSONL path
  std::vector<int64_t> offsets;    // (N + 1) into tokens
  std::vector<int64_t> lines;      // (N) 1-based JSONL line of each example
  std::vector<int32_t> tokens;     // (M)
  std::vector<uint8_t> mask;       // (M) 1 = a target the loss counts
  int64_t size() const { return static_cast<int64_t>(lines.size()); }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t length(int64_t i) const { return offsets[i + 1] - offsets[i]; }
};

// Parses and tokenizes JSONL text (`source` names it in errors). `eos`: appended to
// prompt/completion examples when >= 0.
absl::StatusOr<SftExamples> TokenizeSftJsonl(absl::string_view jsonl, absl::string_view source,
                                             const Tokenizer& tokenizer, int32_t eos);

// Where the prepared file of a JSONL file lives.
std::string SftPreparedPath(const std::string& jsonl);

struct SftPrepareResult {
  std::string prepared_path;
  bool reused = false;  // the existing prepared file matched: nothing was tokenized
  int64_t examples = 0;
  int64_t tokens = 0;
};

// Makes sure the prepared file of `jsonl` is current for `tokenizer_spec` ("byte" or a
// tokenizer.json path): reuses it when its header matches, else tokenizes and writes it
// atomically. Errors name the JSONL (with line) or the prepared file.
absl::StatusOr<SftPrepareResult> PrepareSft(const std::string& jsonl,
                                            const std::string& tokenizer_spec);

// Reads a prepared file, checking magic, version, sizes and CRC (DataLoss naming it).
absl::StatusOr<SftExamples> ReadSftPrepared(const std::string& prepared_path,
                                            const std::string& source_name);

struct SftSampleOptions {
  int64_t seq_len = 0;     // model.seq_len: positions per row
  uint64_t seed = 0;       // train.seed
  bool pack = false;       // data.pack
  int64_t vocab_size = 0;  // > 0: every token must be below it
  std::string name = "train";  // names the shuffle streams
};

// Rows of examples, random access by global row index. Thread-safe (const).
class SftSamples final : public SampleSource {
 public:
  // InvalidArgument naming the JSONL line for an example longer than seq_len + 1 tokens or a
  // token outside the vocabulary; for no examples at all.
  static absl::StatusOr<std::unique_ptr<SftSamples>> Create(
      std::shared_ptr<const SftExamples> examples, const std::string& prepared_path,
      const SftSampleOptions& options);

  int64_t seq_len() const override { return options_.seq_len; }
  // Rows first .. first + batch - 1: inputs, targets (-1 where not counted) and, when packed,
  // doc_starts.
  absl::Status ReadBatch(int64_t first_global_index, int64_t batch,
                         TokenBatch& out) const override;
  // sources[0] = {prepared file, tokens}, sources[1] = {"rows per epoch", rows}: a change of
  // the data, seq_len or packing is refused on resume.
  DataLoaderState State(int64_t consumed_samples) const override;
  absl::Status CheckState(const DataLoaderState& state) const override;

  int64_t rows_per_epoch() const { return static_cast<int64_t>(row_begin_.size()) - 1; }
  // Examples of row r (in the packing order), for tests.
  std::vector<int64_t> RowExamples(int64_t row) const;
  const SftExamples& examples() const { return *examples_; }
  // The row global index g reads (epoch shuffle applied).
  int64_t RowOf(int64_t global_index) const;

 private:
  SftSamples() = default;
  std::shared_ptr<const SftExamples> examples_;
  std::string prepared_path_;
  SftSampleOptions options_;
  std::vector<int64_t> order_;      // examples in packing order
  std::vector<int64_t> row_begin_;  // (rows + 1) into order_
};

}  // namespace lattice

#endif  // LATTICE_RUNTIME_DATA_SFT_H_
