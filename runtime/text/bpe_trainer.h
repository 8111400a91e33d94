// Trains a byte-level BPE tokenizer (GPT-2 pre-tokenizer, ByteLevel without prefix space) and
// writes it as a Hugging Face tokenizer.json that both lattice and `tokenizers` load.
//
// Ids: 0..255 are the 256 byte symbols in byte order, then one id per learned merge, then the
// special tokens (so "<|endoftext|>" is the last id, as in GPT-2).
#ifndef LATTICE_RUNTIME_TEXT_BPE_TRAINER_H_
#define LATTICE_RUNTIME_TEXT_BPE_TRAINER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace lattice {

struct BpeTrainerOptions {
  // Total vocabulary: 256 bytes + merges + special tokens.
  int64_t vocab_size = 8192;
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
  // Pairs seen fewer times than this are never merged (training may stop below vocab_size).
  int64_t min_frequency = 2;
  // Threads for counting words; 0: one per core. The result does not depend on it.
  int num_threads = 0;
};

struct BpeTrainerResult {
  std::string tokenizer_json;
  int64_t vocab_size = 0;  // ids in the file
  int64_t num_merges = 0;
  int64_t num_words = 0;  // distinct pre-tokenized words counted
  int64_t num_bytes = 0;  // training text
};

// Trains on in-memory texts (each one a document). Special tokens found in the text are cut out
// before counting, as `tokenizers` does.
absl::StatusOr<BpeTrainerResult> TrainBpe(absl::Span<const absl::string_view> texts,
                                          const BpeTrainerOptions& options);
// Trains on text files (each file a document).
absl::StatusOr<BpeTrainerResult> TrainBpeFromFiles(const std::vector<std::string>& paths,
                                                   const BpeTrainerOptions& options);

}  // namespace lattice

#endif  // LATTICE_RUNTIME_TEXT_BPE_TRAINER_H_
