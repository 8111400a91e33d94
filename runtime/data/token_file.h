// Token files users already have, read through one memory-mapped interface, and a writer for the
// Megatron indexed format (REFERENCE.md section 2).
//
// Formats read:
//   Megatron indexed dataset  PREFIX.idx + PREFIX.bin (dtype u8 i8 i16 i32 i64 u16)
//   llm.c shard               256 x int32 header (magic 20240520: uint16 v1, 20240801: uint32 v7)
//   nanoGPT                   raw uint16, no header, EOT after each document
//   plain text (.txt)         its bytes are the tokens (the byte tokenizer without EOT)
// Nothing is read into RAM as a whole: the token array is mapped and converted to int32 on Read().
//
// What "document" means per format (only splits use documents; samples cross them freely):
//   Megatron: the file's document_indices (a document = one or more sequences).
//   llm.c / nanoGPT: a document ends right after each EOT token (llm.c writes EOT *before* each
//     document, so there the first document is the lone leading EOT; harmless for splits);
//     tokens after the last EOT form a final document.
//   text: a document ends after each run of two or more '\n' (blank line).
// EOT-delimited boundaries need a scan of the file: it happens on the first call that asks for
// documents, never on open, so training from a 20 GB nanoGPT file starts at once.
#ifndef LATTICE_RUNTIME_DATA_TOKEN_FILE_H_
#define LATTICE_RUNTIME_DATA_TOKEN_FILE_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/io/output_file.h"

namespace lattice {

// Element type of a token file. The Megatron codes are those of its .idx header.
enum class TokenDType : uint8_t {
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kUInt16 = 8,
  kUInt32 = 100,  // llm.c v7 only; Megatron has no code for it
};
size_t TokenDTypeSize(TokenDType t);
absl::string_view TokenDTypeName(TokenDType t);  // "uint16", "int32", ...
// Megatron .idx dtype code -> TokenDType. Float codes (6 f64, 7 f32) and unknown codes are
// errors naming `file`.
absl::StatusOr<TokenDType> TokenDTypeFromMegatronCode(uint8_t code, absl::string_view file);
// The dtype Megatron picks for a vocabulary: uint16 when vocab_size < 65500, else int32.
TokenDType MegatronDTypeForVocab(int64_t vocab_size);

enum class TokenFileFormat { kAuto, kMegatron, kLlmc, kNanoGpt, kText };
absl::string_view TokenFileFormatName(TokenFileFormat f);

// Read-only view of a token array. Implementations are immutable after open; every method is
// thread-safe.
class TokenSource {
 public:
  virtual ~TokenSource() = default;

  // The file (or prefix) this reads, for messages.
  virtual const std::string& path() const = 0;
  virtual TokenFileFormat format() const = 0;
  virtual TokenDType dtype() const = 0;
  virtual int64_t num_tokens() const = 0;

  // Copies tokens [begin, begin + n) to out[0..n), converted to int32. OutOfRange when the range
  // is not inside [0, num_tokens()); DataLoss (naming file and position) for a stored value that
  // is negative or does not fit int32.
  virtual absl::Status Read(int64_t begin, int64_t n, int32_t* out) const = 0;

  // Document boundaries: ascending token offsets, starts[0] == 0 and starts.back() ==
  // num_tokens(), so document d is [starts[d], starts[d+1]). Empty token array: {0}.
  // May scan the file on first call (see the header comment); the result is cached.
  virtual absl::StatusOr<absl::Span<const int64_t>> DocumentStarts() const = 0;

  // The position of token `pos` in the underlying file (a view over part of a file adds its
  // offset), so messages point at the file, not at the view.
  virtual int64_t FileOffset(int64_t pos) const { return pos; }

  // Scans every token: DataLoss naming the file, the token position and the id for the first
  // id < 0 or >= vocab_size. Deterministic (the first bad position in file order).
  absl::Status Validate(int64_t vocab_size) const;

  // Why the file was read in this format, e.g. "auto-detected: llm.c magic 20240520, version 1"
  // or "format given by the caller".
  virtual const std::string& detection() const = 0;
  // One line for the log of a command that opens data:
  // "<path>: llm.c, uint16, 12345 tokens (auto-detected: llm.c magic 20240520, version 1)".
  std::string Describe() const;
};

struct TokenSourceOptions {
  TokenFileFormat format = TokenFileFormat::kAuto;
  // The end-of-text token that separates documents in llm.c and nanoGPT files.
  int32_t eot = 50256;
};

// Opens `path_or_prefix`, detecting the format unless options.format says it, in this order:
//   PREFIX.idx exists (path given as PREFIX, PREFIX.idx or PREFIX.bin) -> Megatron;
//   a file ending in .txt                                            -> text bytes;
//   a name ending in .json, .jsonl, .parquet, .safetensors, .npy, .yaml or an archive
//     extension                                                      -> InvalidArgument (not
//                                                                       token data);
//   a file of >= 1024 bytes starting with an llm.c magic             -> llm.c;
//   a file of >= 1024 bytes whose header looks like llm.c's but is damaged (a magic a few
//     bits or digits off, or version 1/7 with a token count that matches the file size)
//                                                                    -> DataLoss, never raw;
//   any other file of even size                                      -> nanoGPT raw uint16.
// The choice is in detection() / Describe(). NotFound when nothing matches; DataLoss /
// InvalidArgument for a malformed file, naming it and the format it was read as.
absl::StatusOr<std::unique_ptr<TokenSource>> OpenTokenSource(
    const std::string& path_or_prefix, const TokenSourceOptions& options = {});

// Explicit openers (what OpenTokenSource dispatches to).
absl::StatusOr<std::unique_ptr<TokenSource>> OpenMegatronDataset(const std::string& prefix);
absl::StatusOr<std::unique_ptr<TokenSource>> OpenLlmcShard(const std::string& path,
                                                           int32_t eot);
absl::StatusOr<std::unique_ptr<TokenSource>> OpenNanoGptBin(const std::string& path, int32_t eot);
absl::StatusOr<std::unique_ptr<TokenSource>> OpenTextBytes(const std::string& path);

// The documents [first_document, last_document) of `base` as a source of their own (used for
// train/val splits). Errors when the range is empty or outside the base's documents.
absl::StatusOr<std::unique_ptr<TokenSource>> DocumentRange(std::shared_ptr<const TokenSource> base,
                                                           int64_t first_document,
                                                           int64_t last_document);

// Streams documents into PREFIX.bin and writes PREFIX.idx on Finalize(), in exactly Megatron's
// layout: one sequence per document, so document_indices = [0, 1, ..., n].
//
// Crash safety: tokens go to a temporary file next to PREFIX.bin (runtime/io/output_file.h: never
// a planted link), which Finalize() renames to PREFIX.bin before it writes PREFIX.idx the same
// way, so an .idx never describes a partial .bin. Not thread-safe.
class MegatronDatasetWriter {
 public:
  struct Options {
    // Vocabulary size: picks the dtype as Megatron does (uint16 below 65500, else int32) and
    // every token must be < vocab_size. Must be > 0.
    int64_t vocab_size = 0;
    // Overrides the dtype (any Megatron integer dtype); tokens must fit it.
    bool override_dtype = false;
    TokenDType dtype = TokenDType::kUInt16;
  };
  static absl::StatusOr<std::unique_ptr<MegatronDatasetWriter>> Create(const std::string& prefix,
                                                                       const Options& options);
  ~MegatronDatasetWriter();  // Without Finalize(): removes the temporary .bin.
  MegatronDatasetWriter(const MegatronDatasetWriter&) = delete;
  MegatronDatasetWriter& operator=(const MegatronDatasetWriter&) = delete;

  // Appends one document. InvalidArgument (naming the value) for a token outside
  // [0, vocab_size) or outside the dtype, or a document longer than INT32_MAX tokens.
  absl::Status AddDocument(absl::Span<const int32_t> tokens);
  // Flushes PREFIX.bin and writes PREFIX.idx. No call is valid afterwards.
  absl::Status Finalize();

  TokenDType dtype() const { return dtype_; }
  int64_t num_documents() const { return static_cast<int64_t>(sizes_.size()); }
  int64_t num_tokens() const { return num_tokens_; }
  const std::string& prefix() const { return prefix_; }

 private:
  MegatronDatasetWriter() = default;
  absl::Status FlushBuffer();

  std::string prefix_;
  TokenDType dtype_ = TokenDType::kUInt16;
  int64_t vocab_size_ = 0;
  std::unique_ptr<OutputFile> bin_;  // PREFIX.bin until Finalize()
  std::vector<uint8_t> buffer_;   // encoded tokens not yet written
  std::vector<int32_t> sizes_;    // (num_documents,) tokens per sequence
  int64_t num_tokens_ = 0;
  bool finalized_ = false;
};

}  // namespace lattice

#endif  // LATTICE_RUNTIME_DATA_TOKEN_FILE_H_
