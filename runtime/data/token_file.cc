#include "runtime/data/token_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "runtime/io/mapped_file.h"
#include "runtime/status.h"

namespace lattice {

// Every format here is little-endian and read with plain loads.
static_assert(std::endian::native == std::endian::little, "token files are little-endian");

namespace {

constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr int64_t kMegatronHeaderBytes = 9 + 8 + 1 + 8 + 8;  // magic, version, dtype, 2 counts
constexpr int32_t kLlmcMagicGpt2 = 20240520;
constexpr int32_t kLlmcMagicLlama3 = 20240801;
constexpr int64_t kLlmcHeaderInts = 256;
constexpr int64_t kLlmcHeaderBytes = kLlmcHeaderInts * 4;

// Index arrays in a .idx start at byte 34, so they are not aligned: always load via memcpy.
template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Converts n stored tokens to int32. Returns the index of the first value that is negative or
// does not fit int32, or -1 when all are fine.
int64_t ConvertTokens(const uint8_t* src, TokenDType dtype, int64_t n, int32_t* out) {
  switch (dtype) {
    case TokenDType::kUInt8:
      for (int64_t i = 0; i < n; ++i) out[i] = src[i];
      return -1;
    case TokenDType::kUInt16:
      for (int64_t i = 0; i < n; ++i) out[i] = Load<uint16_t>(src + 2 * i);
      return -1;
    case TokenDType::kInt8:
      for (int64_t i = 0; i < n; ++i) {
        const int8_t v = static_cast<int8_t>(src[i]);
        if (v < 0) return i;
        out[i] = v;
      }
      return -1;
    case TokenDType::kInt16:
      for (int64_t i = 0; i < n; ++i) {
        const int16_t v = Load<int16_t>(src + 2 * i);
        if (v < 0) return i;
        out[i] = v;
      }
      return -1;
    case TokenDType::kInt32:
      for (int64_t i = 0; i < n; ++i) {
        const int32_t v = Load<int32_t>(src + 4 * i);
        if (v < 0) return i;
        out[i] = v;
      }
      return -1;
    case TokenDType::kUInt32:
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t v = Load<uint32_t>(src + 4 * i);
        if (v > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) return i;
        out[i] = static_cast<int32_t>(v);
      }
      return -1;
    case TokenDType::kInt64:
      for (int64_t i = 0; i < n; ++i) {
        const int64_t v = Load<int64_t>(src + 8 * i);
        if (v < 0 || v > std::numeric_limits<int32_t>::max()) return i;
        out[i] = static_cast<int32_t>(v);
      }
      return -1;
  }
  return 0;
}

// The raw value at index i, for error messages.
int64_t RawToken(const uint8_t* src, TokenDType dtype, int64_t i) {
  switch (dtype) {
    case TokenDType::kUInt8: return src[i];
    case TokenDType::kInt8: return static_cast<int8_t>(src[i]);
    case TokenDType::kInt16: return Load<int16_t>(src + 2 * i);
    case TokenDType::kUInt16: return Load<uint16_t>(src + 2 * i);
    case TokenDType::kInt32: return Load<int32_t>(src + 4 * i);
    case TokenDType::kUInt32: return Load<uint32_t>(src + 4 * i);
    case TokenDType::kInt64: return Load<int64_t>(src + 8 * i);
  }
  return 0;
}

// A token array inside a mapped file. Subclasses say where documents start.
class MappedTokenSource : public TokenSource {
 public:
  MappedTokenSource(std::string path, TokenFileFormat format, TokenDType dtype,
                    std::shared_ptr<MappedFile> file, const uint8_t* tokens, int64_t num_tokens)
      : path_(std::move(path)),
        format_(format),
        dtype_(dtype),
        file_(std::move(file)),
        tokens_(tokens),
        num_tokens_(num_tokens) {}

  const std::string& path() const override { return path_; }
  TokenFileFormat format() const override { return format_; }
  TokenDType dtype() const override { return dtype_; }
  int64_t num_tokens() const override { return num_tokens_; }
  const std::string& detection() const override { return detection_; }
  // Set once by the opener, before the source is shared.
  void set_detection(std::string d) { detection_ = std::move(d); }

  absl::Status Read(int64_t begin, int64_t n, int32_t* out) const override {
    if (begin < 0 || n < 0 || begin > num_tokens_ || n > num_tokens_ - begin) {
      return absl::OutOfRangeError(absl::StrCat(path_, ": read of ", n, " tokens at position ",
                                                begin, " is outside the ", num_tokens_,
                                                " tokens of the file"));
    }
    const size_t item = TokenDTypeSize(dtype_);
    const int64_t bad = ConvertTokens(tokens_ + static_cast<size_t>(begin) * item, dtype_, n, out);
    if (bad >= 0) {
      const int64_t raw = RawToken(tokens_ + static_cast<size_t>(begin) * item, dtype_, bad);
      return absl::DataLossError(absl::StrCat(path_, ": token at position ", begin + bad,
                                              " has id ", raw,
                                              ", which is negative or does not fit int32"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<absl::Span<const int64_t>> DocumentStarts() const override {
    std::call_once(starts_once_, [this] { starts_ = ComputeDocumentStarts(); });
    if (!starts_.ok()) return starts_.status();
    return absl::Span<const int64_t>(*starts_);
  }

 protected:
  virtual absl::StatusOr<std::vector<int64_t>> ComputeDocumentStarts() const = 0;

  // Starts after every position where `is_end(i)` holds (i is the last token of a document).
  template <typename IsEnd>
  std::vector<int64_t> StartsAfter(IsEnd is_end) const {
    std::vector<int64_t> starts = {0};
    for (int64_t i = 0; i + 1 < num_tokens_; ++i) {
      if (is_end(i)) starts.push_back(i + 1);
    }
    if (num_tokens_ > 0) starts.push_back(num_tokens_);
    return starts;
  }

  const uint8_t* tokens() const { return tokens_; }

 private:
  std::string path_;
  TokenFileFormat format_;
  TokenDType dtype_;
  std::shared_ptr<MappedFile> file_;  // keeps tokens_ mapped
  const uint8_t* tokens_;
  int64_t num_tokens_;
  std::string detection_ = "format given by the caller";
  mutable std::once_flag starts_once_;
  mutable absl::StatusOr<std::vector<int64_t>> starts_;
};

// Documents end after each EOT token (llm.c, nanoGPT).
class EotDelimitedSource : public MappedTokenSource {
 public:
  EotDelimitedSource(std::string path, TokenFileFormat format, TokenDType dtype,
                     std::shared_ptr<MappedFile> file, const uint8_t* tokens, int64_t num_tokens,
                     int32_t eot)
      : MappedTokenSource(std::move(path), format, dtype, std::move(file), tokens, num_tokens),
        eot_(eot) {}

 protected:
  absl::StatusOr<std::vector<int64_t>> ComputeDocumentStarts() const override {
    const uint8_t* t = tokens();
    if (dtype() == TokenDType::kUInt16) {
      if (eot_ < 0 || eot_ > 0xFFFF) return StartsAfter([](int64_t) { return false; });
      const uint16_t e = static_cast<uint16_t>(eot_);
      return StartsAfter([t, e](int64_t i) { return Load<uint16_t>(t + 2 * i) == e; });
    }
    const uint32_t e = static_cast<uint32_t>(eot_);
    if (eot_ < 0) return StartsAfter([](int64_t) { return false; });
    return StartsAfter([t, e](int64_t i) { return Load<uint32_t>(t + 4 * i) == e; });
  }

 private:
  int32_t eot_;
};

// A text file read as byte tokens; documents end after each run of two or more newlines.
class TextBytesSource : public MappedTokenSource {
 public:
  using MappedTokenSource::MappedTokenSource;

 protected:
  absl::StatusOr<std::vector<int64_t>> ComputeDocumentStarts() const override {
    const uint8_t* t = tokens();
    const int64_t n = num_tokens();
    return StartsAfter([t, n](int64_t i) {
      // i is the last newline of a run of >= 2 newlines.
      return t[i] == '\n' && i >= 1 && t[i - 1] == '\n' && (i + 1 >= n || t[i + 1] != '\n');
    });
  }
};

// Megatron: documents come from document_indices (validated on open).
class MegatronSource : public MappedTokenSource {
 public:
  MegatronSource(std::string path, TokenDType dtype, std::shared_ptr<MappedFile> bin,
                 const uint8_t* tokens, int64_t num_tokens, std::shared_ptr<MappedFile> idx,
                 int64_t sequence_count, int64_t document_count, int64_t base_pointer)
      : MappedTokenSource(std::move(path), TokenFileFormat::kMegatron, dtype, std::move(bin),
                          tokens, num_tokens),
        idx_(std::move(idx)),
        sequence_count_(sequence_count),
        document_count_(document_count),
        base_pointer_(base_pointer) {}

 protected:
  absl::StatusOr<std::vector<int64_t>> ComputeDocumentStarts() const override {
    const uint8_t* p = idx_->data();
    const uint8_t* pointers = p + kMegatronHeaderBytes + 4 * sequence_count_;
    const uint8_t* doc_idx = pointers + 8 * sequence_count_;
    const int64_t item = static_cast<int64_t>(TokenDTypeSize(dtype()));
    std::vector<int64_t> starts;
    starts.reserve(static_cast<size_t>(document_count_));
    for (int64_t d = 0; d < document_count_; ++d) {
      const int64_t seq = Load<int64_t>(doc_idx + 8 * d);
      if (seq >= sequence_count_) {
        starts.push_back(num_tokens());
      } else {
        starts.push_back((Load<int64_t>(pointers + 8 * seq) - base_pointer_) / item);
      }
    }
    return starts;
  }

 private:
  std::shared_ptr<MappedFile> idx_;
  int64_t sequence_count_;
  int64_t document_count_;
  int64_t base_pointer_;
};

// Documents [first, last) of another source.
class DocumentRangeSource : public TokenSource {
 public:
  DocumentRangeSource(std::shared_ptr<const TokenSource> base, std::string path,
                      std::vector<int64_t> starts)
      : base_(std::move(base)), path_(std::move(path)), starts_(std::move(starts)) {
    offset_ = starts_.front();
    for (int64_t& s : starts_) s -= offset_;
  }
  const std::string& path() const override { return path_; }
  TokenFileFormat format() const override { return base_->format(); }
  TokenDType dtype() const override { return base_->dtype(); }
  int64_t num_tokens() const override { return starts_.back(); }
  const std::string& detection() const override { return base_->detection(); }
  absl::Status Read(int64_t begin, int64_t n, int32_t* out) const override {
    if (begin < 0 || n < 0 || begin > num_tokens() || n > num_tokens() - begin) {
      return absl::OutOfRangeError(absl::StrCat(path_, ": read of ", n, " tokens at position ",
                                                begin, " is outside the ", num_tokens(),
                                                " tokens of the range"));
    }
    return base_->Read(offset_ + begin, n, out);
  }
  absl::StatusOr<absl::Span<const int64_t>> DocumentStarts() const override {
    return absl::Span<const int64_t>(starts_);
  }
  int64_t FileOffset(int64_t pos) const override { return base_->FileOffset(offset_ + pos); }

 private:
  std::shared_ptr<const TokenSource> base_;
  std::string path_;
  std::vector<int64_t> starts_;  // (documents + 1,) relative to offset_
  int64_t offset_ = 0;
};

absl::Status IdxError(const std::string& idx_path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(idx_path, ": corrupt Megatron index: ", what));
}

// Records how OpenTokenSource chose the format (every opener returns a MappedTokenSource).
absl::StatusOr<std::unique_ptr<TokenSource>> Detected(
    absl::StatusOr<std::unique_ptr<TokenSource>> opened, std::string why) {
  if (opened.ok()) static_cast<MappedTokenSource&>(**opened).set_detection(std::move(why));
  return opened;
}

// Extensions of files users mistake for token data; reading one as raw uint16 would train on
// garbage without a word.
absl::string_view NotTokenDataExtension(absl::string_view path) {
  for (absl::string_view ext : {".json", ".jsonl", ".parquet", ".safetensors", ".npy", ".npz",
                                ".yaml", ".yml", ".gz", ".zst", ".xz", ".bz2", ".zip", ".tar"}) {
    if (absl::EndsWith(path, ext)) return ext;
  }
  return "";
}

// What makes the first 1024 bytes of a file (size `size`, >= 1024) look like an llm.c header
// whose magic is damaged, or "" when nothing does. Signs, any of which suffices:
//  - the magic is at most 3 bits from a real one (bit rot, a flipped byte);
//  - it is a 2024 date like the real magics (20240000..20249999: a mistyped digit);
//  - version 1 or 7 with a token count whose file size (1024 + count * 2 or 4) is this one.
// Raw nanoGPT tokens rarely trip these: the first two GPT-2 ids (< 50257) read as an int32 are
// never in the date range (that needs a first id >= 54912), and the last needs tokens 2..5 to
// spell out the file's own size.
std::string DamagedLlmcHeader(const uint8_t* p, size_t size) {
  const int32_t magic = Load<int32_t>(p);
  const int32_t version = Load<int32_t>(p + 4);
  const int32_t ntok = Load<int32_t>(p + 8);
  for (int32_t real : {kLlmcMagicGpt2, kLlmcMagicLlama3}) {
    const int bits = std::popcount(static_cast<uint32_t>(magic ^ real));
    if (bits <= 3) {
      return absl::StrCat("magic ", magic, " is ", bits, " bit", bits == 1 ? "" : "s", " off ",
                          real);
    }
  }
  if (magic >= 20240000 && magic <= 20249999) {
    return absl::StrCat("magic ", magic, " is a 2024 date like the llm.c magics");
  }
  if ((version == 1 || version == 7) && ntok >= 0) {
    const uint64_t item = version == 1 ? 2 : 4;
    if (static_cast<uint64_t>(kLlmcHeaderBytes) + static_cast<uint64_t>(ntok) * item == size) {
      return absl::StrCat("magic ", magic, ", but version ", version, " and ", ntok,
                          " tokens of ", item, " bytes match the file size");
    }
  }
  return "";
}

}  // namespace

size_t TokenDTypeSize(TokenDType t) {
  switch (t) {
    case TokenDType::kUInt8:
    case TokenDType::kInt8: return 1;
    case TokenDType::kInt16:
    case TokenDType::kUInt16: return 2;
    case TokenDType::kInt32:
    case TokenDType::kUInt32: return 4;
    case TokenDType::kInt64: return 8;
  }
  return 1;
}

absl::string_view TokenDTypeName(TokenDType t) {
  switch (t) {
    case TokenDType::kUInt8: return "uint8";
    case TokenDType::kInt8: return "int8";
    case TokenDType::kInt16: return "int16";
    case TokenDType::kUInt16: return "uint16";
    case TokenDType::kInt32: return "int32";
    case TokenDType::kUInt32: return "uint32";
    case TokenDType::kInt64: return "int64";
  }
  return "?";
}

absl::StatusOr<TokenDType> TokenDTypeFromMegatronCode(uint8_t code, absl::string_view file) {
  switch (code) {
    case 1: return TokenDType::kUInt8;
    case 2: return TokenDType::kInt8;
    case 3: return TokenDType::kInt16;
    case 4: return TokenDType::kInt32;
    case 5: return TokenDType::kInt64;
    case 8: return TokenDType::kUInt16;
    case 6:
    case 7:
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": dtype code ", code, " (", code == 6 ? "float64" : "float32",
          ") holds floats, not token ids; lattice reads integer dtypes "
          "(1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16)"));
    default:
      return absl::DataLossError(absl::StrCat(file, ": corrupt Megatron index: unknown dtype code ",
                                              code, " (known: 1-8)"));
  }
}

TokenDType MegatronDTypeForVocab(int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDType::kUInt16 : TokenDType::kInt32;
}

absl::string_view TokenFileFormatName(TokenFileFormat f) {
  switch (f) {
    case TokenFileFormat::kAuto: return "auto";
    case TokenFileFormat::kMegatron: return "megatron";
    case TokenFileFormat::kLlmc: return "llm.c";
    case TokenFileFormat::kNanoGpt: return "nanogpt";
    case TokenFileFormat::kText: return "text";
  }
  return "?";
}

std::string TokenSource::Describe() const {
  return absl::StrCat(path(), ": ", TokenFileFormatName(format()), ", ", TokenDTypeName(dtype()),
                      ", ", num_tokens(), " tokens (", detection(), ")");
}

absl::Status TokenSource::Validate(int64_t vocab_size) const {
  constexpr int64_t kChunk = 1 << 20;
  std::vector<int32_t> buf(static_cast<size_t>(std::min<int64_t>(kChunk, num_tokens())));
  for (int64_t begin = 0; begin < num_tokens(); begin += kChunk) {
    const int64_t n = std::min<int64_t>(kChunk, num_tokens() - begin);
    LATTICE_RETURN_IF_ERROR(Read(begin, n, buf.data()));
    for (int64_t i = 0; i < n; ++i) {
      if (buf[i] >= vocab_size) {
        return absl::DataLossError(absl::StrCat(path(), ": token at position ",
                                                FileOffset(begin + i), " has id ", buf[i],
                                                ", which is >= vocab_size ", vocab_size));
      }
    }
  }
  return absl::OkStatus();
}

// ---- Megatron ------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<TokenSource>> OpenMegatronDataset(const std::string& prefix) {
  const std::string idx_path = prefix + ".idx";
  const std::string bin_path = prefix + ".bin";
  LATTICE_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> idx, MappedFile::Open(idx_path));
  auto bin_or = MappedFile::Open(bin_path);
  if (!bin_or.ok()) {
    return Annotate(bin_or.status(), absl::StrCat("Megatron dataset ", prefix, " has an .idx but "
                                                  "its .bin cannot be opened"));
  }
  std::shared_ptr<MappedFile> bin = std::move(*bin_or);

  const uint8_t* p = idx->data();
  const int64_t size = static_cast<int64_t>(idx->size());
  if (size < kMegatronHeaderBytes) {
    return IdxError(idx_path, absl::StrCat("truncated: ", size, " bytes, the header alone needs ",
                                           kMegatronHeaderBytes));
  }
  if (std::memcmp(p, kMegatronMagic, sizeof(kMegatronMagic)) != 0) {
    return IdxError(idx_path, "bad magic (expected \"MMIDIDX\\0\\0\"); not a Megatron .idx file");
  }
  const uint64_t version = Load<uint64_t>(p + 9);
  if (version != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        idx_path, ": unsupported Megatron index version ", version, " (lattice reads version 1)"));
  }
  LATTICE_ASSIGN_OR_RETURN(const TokenDType dtype, TokenDTypeFromMegatronCode(p[17], idx_path));
  const uint64_t seq_count_u = Load<uint64_t>(p + 18);
  const uint64_t doc_count_u = Load<uint64_t>(p + 26);
  // Bound the counts by the file size before multiplying, so nothing overflows.
  const uint64_t body = static_cast<uint64_t>(size - kMegatronHeaderBytes);
  if (seq_count_u > body / 12 || doc_count_u > body / 8 ||
      12 * seq_count_u + 8 * doc_count_u > body) {
    return IdxError(idx_path, absl::StrCat("counts inconsistent with the file size: ",
                                           seq_count_u, " sequences and ", doc_count_u,
                                           " document indices need more than the ", size,
                                           " bytes of the file (truncated?)"));
  }
  const int64_t seq_count = static_cast<int64_t>(seq_count_u);
  const int64_t doc_count = static_cast<int64_t>(doc_count_u);
  const int64_t expected = kMegatronHeaderBytes + 12 * seq_count + 8 * doc_count;
  // Multimodal Megatron indexes append one int8 mode per sequence; those are ignored.
  if (size != expected && size != expected + seq_count) {
    return IdxError(idx_path, absl::StrCat("counts inconsistent with the file size: ", seq_count,
                                           " sequences and ", doc_count,
                                           " document indices make ", expected,
                                           " bytes, the file has ", size));
  }
  const uint8_t* sizes = p + kMegatronHeaderBytes;
  const uint8_t* pointers = sizes + 4 * seq_count;
  const uint8_t* doc_idx = pointers + 8 * seq_count;
  const int64_t item = static_cast<int64_t>(TokenDTypeSize(dtype));
  const int64_t bin_size = static_cast<int64_t>(bin->size());

  // The .bin holds exactly the tokens the lengths add up to. A .bin whose size fits the same
  // count at another item size means the dtype code is wrong (or the .bin belongs to another
  // index); say so before the per-sequence checks report a symptom of it. The sum stops once
  // it passes bin_size (then no item size fits), so with lengths < 2^31 it cannot overflow.
  // A negative length is reported by the loop below, not diagnosed as a dtype mismatch.
  int64_t total_tokens = 0;
  bool lengths_valid = true;
  for (int64_t i = 0; i < seq_count && total_tokens <= bin_size; ++i) {
    const int32_t len = Load<int32_t>(sizes + 4 * i);
    lengths_valid = lengths_valid && len >= 0;
    total_tokens += std::max<int32_t>(0, len);
  }
  const bool item_fits = bin_size % item == 0 && bin_size / item == total_tokens;
  if (lengths_valid && total_tokens > 0 && total_tokens <= bin_size && !item_fits &&
      bin_size % total_tokens == 0) {
    const int64_t fits = bin_size / total_tokens;
    if (fits == 1 || fits == 2 || fits == 4 || fits == 8) {
      return IdxError(idx_path,
                      absl::StrCat("dtype code ", static_cast<int>(p[17]), " (",
                                   TokenDTypeName(dtype), ", ", item, " bytes) disagrees with ",
                                   bin_path, ": its ", bin_size, " bytes hold the ", total_tokens,
                                   " tokens of the index only at ", fits,
                                   " bytes per token (a wrong dtype code, or the .bin of another "
                                   "dataset)"));
    }
  }

  // Sequences must lie inside the .bin, one after the other from byte 0, as Megatron's builder
  // writes them; then the token stream is one contiguous range and sequence offsets need no
  // table in RAM.
  int64_t base = 0;
  int64_t end = 0;
  for (int64_t i = 0; i < seq_count; ++i) {
    const int32_t len = Load<int32_t>(sizes + 4 * i);
    const int64_t ptr = Load<int64_t>(pointers + 8 * i);
    if (len < 0) {
      return IdxError(idx_path, absl::StrCat("sequence ", i, " has negative length ", len));
    }
    if (ptr < 0 || ptr > bin_size) {
      return IdxError(idx_path, absl::StrCat("sequence ", i, " points at byte ", ptr,
                                             ", outside ", bin_path, " (", bin_size, " bytes)"));
    }
    if (i == 0) {
      base = ptr;
    } else if (ptr != end) {
      return IdxError(idx_path,
                      absl::StrCat("sequence ", i, " points at byte ", ptr, " but sequence ",
                                   i - 1, " ends at byte ", end,
                                   "; lattice reads sequences stored back to back, as "
                                   "Megatron writes them"));
    }
    end = ptr + static_cast<int64_t>(len) * item;
    if (end > bin_size) {
      return IdxError(idx_path, absl::StrCat("sequence ", i, " (", len, " tokens of ", item,
                                             " bytes at byte ", ptr, ") ends at byte ", end,
                                             ", past the end of ", bin_path, " (", bin_size,
                                             " bytes)"));
    }
  }
  if (base != 0) {
    return IdxError(idx_path, absl::StrCat("sequence 0 starts at byte ", base, " of ", bin_path,
                                           "; Megatron writes it at byte 0, and no sequence "
                                           "covers the bytes before it"));
  }
  if (end != bin_size) {
    return absl::DataLossError(absl::StrCat(
        bin_path, ": ", bin_size, " bytes, but its index ", idx_path, " describes ", end,
        " (", end / item, " tokens of ", TokenDTypeName(dtype), "): ", bin_size - end,
        " bytes at the end belong to no sequence (a .bin appended to, or an .idx of another "
        "dataset)"));
  }
  if (doc_count < 1) {
    return IdxError(idx_path, "document_indices is empty (it starts with 0)");
  }
  int64_t prev = 0;
  for (int64_t d = 0; d < doc_count; ++d) {
    const int64_t v = Load<int64_t>(doc_idx + 8 * d);
    if (d == 0 && v != 0) {
      return IdxError(idx_path, absl::StrCat("document_indices[0] is ", v, ", must be 0"));
    }
    if (v < prev) {
      return IdxError(idx_path, absl::StrCat("document_indices are not monotonic: [", d - 1,
                                             "] = ", prev, " > [", d, "] = ", v));
    }
    if (v > seq_count) {
      return IdxError(idx_path, absl::StrCat("document_indices[", d, "] = ", v, " is past the ",
                                             seq_count, " sequences"));
    }
    prev = v;
  }
  if (prev != seq_count) {
    return IdxError(idx_path, absl::StrCat("the last document ends at sequence ", prev,
                                           " but there are ", seq_count, " sequences"));
  }
  const int64_t num_tokens = (end - base) / item;
  const uint8_t* tokens = bin->data() == nullptr ? nullptr : bin->data() + base;
  return std::unique_ptr<TokenSource>(new MegatronSource(prefix, dtype, std::move(bin), tokens,
                                                         num_tokens, std::move(idx), seq_count,
                                                         doc_count, base));
}

// ---- llm.c, nanoGPT, text ------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<TokenSource>> OpenLlmcShard(const std::string& path, int32_t eot) {
  LATTICE_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::Open(path));
  const int64_t size = static_cast<int64_t>(file->size());
  if (size < kLlmcHeaderBytes) {
    return absl::DataLossError(absl::StrCat(path, ": llm.c shard of ", size,
                                            " bytes is shorter than its 1024-byte header"));
  }
  const uint8_t* p = file->data();
  const int32_t magic = Load<int32_t>(p);
  const int32_t version = Load<int32_t>(p + 4);
  const int32_t ntok = Load<int32_t>(p + 8);
  TokenDType dtype;
  if (magic == kLlmcMagicGpt2) {
    dtype = TokenDType::kUInt16;
    if (version != 1) {
      return absl::DataLossError(absl::StrCat(path, ": llm.c magic ", magic, " (uint16 tokens) "
                                              "needs version 1, the header says ", version));
    }
  } else if (magic == kLlmcMagicLlama3) {
    dtype = TokenDType::kUInt32;
    if (version != 7) {
      return absl::DataLossError(absl::StrCat(path, ": llm.c magic ", magic, " (uint32 tokens) "
                                              "needs version 7, the header says ", version));
    }
  } else {
    return absl::DataLossError(absl::StrCat(path, ": bad llm.c magic ", magic, " (expected ",
                                            kLlmcMagicGpt2, " or ", kLlmcMagicLlama3, ")"));
  }
  if (ntok < 0) {
    return absl::DataLossError(absl::StrCat(path, ": llm.c header has negative token count ", ntok));
  }
  const int64_t item = static_cast<int64_t>(TokenDTypeSize(dtype));
  const int64_t expected = kLlmcHeaderBytes + static_cast<int64_t>(ntok) * item;
  if (size != expected) {
    return absl::DataLossError(absl::StrCat(path, ": llm.c header says ", ntok, " tokens of ",
                                            item, " bytes (file of ", expected,
                                            " bytes) but the file has ", size, " bytes"));
  }
  const uint8_t* tokens = p + kLlmcHeaderBytes;
  return std::unique_ptr<TokenSource>(new EotDelimitedSource(
      path, TokenFileFormat::kLlmc, dtype, std::move(file), tokens, ntok, eot));
}

absl::StatusOr<std::unique_ptr<TokenSource>> OpenNanoGptBin(const std::string& path,
                                                            int32_t eot) {
  LATTICE_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::Open(path));
  if (file->size() % 2 != 0) {
    return absl::DataLossError(absl::StrCat(
        path, ": size ", file->size(),
        " is odd, so it is not a nanoGPT .bin (raw uint16 tokens); a Megatron dataset needs ",
        "its .idx beside it, an llm.c shard a 1024-byte header with magic ", kLlmcMagicGpt2,
        " or ", kLlmcMagicLlama3));
  }
  const int64_t n = static_cast<int64_t>(file->size() / 2);
  const uint8_t* tokens = file->data();
  return std::unique_ptr<TokenSource>(new EotDelimitedSource(
      path, TokenFileFormat::kNanoGpt, TokenDType::kUInt16, std::move(file), tokens, n, eot));
}

absl::StatusOr<std::unique_ptr<TokenSource>> OpenTextBytes(const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::Open(path));
  const int64_t n = static_cast<int64_t>(file->size());
  const uint8_t* tokens = file->data();
  return std::unique_ptr<TokenSource>(new TextBytesSource(
      path, TokenFileFormat::kText, TokenDType::kUInt8, std::move(file), tokens, n));
}

absl::StatusOr<std::unique_ptr<TokenSource>> OpenTokenSource(const std::string& path_or_prefix,
                                                             const TokenSourceOptions& options) {
  std::string prefix = path_or_prefix;
  if (absl::EndsWith(prefix, ".idx") || absl::EndsWith(prefix, ".bin")) {
    prefix.resize(prefix.size() - 4);
  }
  const std::string& path = path_or_prefix;
  switch (options.format) {
    case TokenFileFormat::kMegatron: {
      if (FileExists(path_or_prefix + ".idx")) return OpenMegatronDataset(path_or_prefix);
      return OpenMegatronDataset(prefix);
    }
    case TokenFileFormat::kLlmc: return OpenLlmcShard(path, options.eot);
    case TokenFileFormat::kNanoGpt: return OpenNanoGptBin(path, options.eot);
    case TokenFileFormat::kText: return OpenTextBytes(path);
    case TokenFileFormat::kAuto: break;
  }
  if (FileExists(path_or_prefix + ".idx")) {
    return Detected(OpenMegatronDataset(path_or_prefix),
                    absl::StrCat("auto-detected: Megatron index ", path_or_prefix, ".idx"));
  }
  if (prefix != path_or_prefix && FileExists(prefix + ".idx")) {
    return Detected(OpenMegatronDataset(prefix),
                    absl::StrCat("auto-detected: Megatron index ", prefix, ".idx"));
  }
  if (!FileExists(path)) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
    }
    return absl::NotFoundError(absl::StrCat("no token data at ", path, " (looked for the file ",
                                            path, " and the Megatron index ", path, ".idx)"));
  }
  if (absl::EndsWith(path, ".txt")) {
    return Detected(OpenTextBytes(path), "auto-detected: .txt, read as byte tokens");
  }
  if (absl::string_view ext = NotTokenDataExtension(path); !ext.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": a ", ext, " file is not token data (lattice reads Megatron .bin/.idx, llm.c "
        "shards, nanoGPT raw uint16 and .txt); tokenize text with `lattice prepare`"));
  }
  {
    LATTICE_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
    if (file->size() >= static_cast<size_t>(kLlmcHeaderBytes)) {
      const int32_t magic = Load<int32_t>(file->data());
      if (magic == kLlmcMagicGpt2 || magic == kLlmcMagicLlama3) {
        return Detected(OpenLlmcShard(path, options.eot),
                        absl::StrCat("auto-detected: llm.c magic ", magic, ", version ",
                                     Load<int32_t>(file->data() + 4)));
      }
      const std::string damaged = DamagedLlmcHeader(file->data(), file->size());
      if (!damaged.empty()) {
        return absl::DataLossError(absl::StrCat(
            path, ": not read as raw nanoGPT tokens: its header looks like a damaged llm.c "
            "header (", damaged, "; a valid one starts with magic ", kLlmcMagicGpt2,
            " (uint16, version 1) or ", kLlmcMagicLlama3, " (uint32, version 7))"));
      }
    }
  }
  return Detected(OpenNanoGptBin(path, options.eot),
                  "auto-detected: nanoGPT raw uint16 (no .idx beside it, no llm.c header, not "
                  ".txt)");
}

absl::StatusOr<std::unique_ptr<TokenSource>> DocumentRange(std::shared_ptr<const TokenSource> base,
                                                           int64_t first_document,
                                                           int64_t last_document) {
  LATTICE_ASSIGN_OR_RETURN(absl::Span<const int64_t> starts, base->DocumentStarts());
  const int64_t num_docs = static_cast<int64_t>(starts.size()) - 1;
  if (first_document < 0 || last_document > num_docs || first_document >= last_document) {
    return absl::InvalidArgumentError(absl::StrCat(base->path(), ": document range [",
                                                   first_document, ", ", last_document,
                                                   ") is empty or outside the ", num_docs,
                                                   " documents"));
  }
  std::vector<int64_t> sub(starts.begin() + first_document, starts.begin() + last_document + 1);
  std::string name = absl::StrCat(base->path(), " (documents ", first_document, "..",
                                  last_document - 1, ")");
  return std::unique_ptr<TokenSource>(
      new DocumentRangeSource(std::move(base), std::move(name), std::move(sub)));
}

// ---- Writer --------------------------------------------------------------------------------------

namespace {

constexpr size_t kWriteBufferBytes = 4 << 20;

int64_t DTypeMax(TokenDType t) {
  switch (t) {
    case TokenDType::kUInt8: return 0xFF;
    case TokenDType::kInt8: return 0x7F;
    case TokenDType::kInt16: return 0x7FFF;
    case TokenDType::kUInt16: return 0xFFFF;
    case TokenDType::kInt32:
    case TokenDType::kUInt32:
    case TokenDType::kInt64: return std::numeric_limits<int32_t>::max();
  }
  return 0;
}

template <typename T>
void Append(std::vector<uint8_t>& buf, T v) {
  const size_t at = buf.size();
  buf.resize(at + sizeof(T));
  std::memcpy(buf.data() + at, &v, sizeof(T));
}

}  // namespace

absl::StatusOr<std::unique_ptr<MegatronDatasetWriter>> MegatronDatasetWriter::Create(
    const std::string& prefix, const Options& options) {
  if (options.vocab_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, ": vocab_size must be > 0, got ",
                                                    options.vocab_size));
  }
  const TokenDType dtype =
      options.override_dtype ? options.dtype : MegatronDTypeForVocab(options.vocab_size);
  if (dtype == TokenDType::kUInt32) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, ": Megatron has no uint32 dtype code; use int32 or int64"));
  }
  std::unique_ptr<MegatronDatasetWriter> w(new MegatronDatasetWriter());
  w->prefix_ = prefix;
  w->dtype_ = dtype;
  w->vocab_size_ = options.vocab_size;
  // Both outputs are checked before any token is written, so a refused .idx (a directory, a
  // planted link, a read-only folder) fails now rather than after the whole corpus.
  LATTICE_RETURN_IF_ERROR(CheckOutputWritable(prefix + ".idx"));
  LATTICE_ASSIGN_OR_RETURN(w->bin_, OutputFile::Create(prefix + ".bin"));
  w->buffer_.reserve(kWriteBufferBytes + 1024);
  return w;
}

// An OutputFile dropped before Commit() removes its temporary file.
MegatronDatasetWriter::~MegatronDatasetWriter() = default;

absl::Status MegatronDatasetWriter::FlushBuffer() {
  if (buffer_.empty()) return absl::OkStatus();
  LATTICE_RETURN_IF_ERROR(bin_->Write(buffer_.data(), buffer_.size()));
  buffer_.clear();
  return absl::OkStatus();
}

absl::Status MegatronDatasetWriter::AddDocument(absl::Span<const int32_t> tokens) {
  if (finalized_ || bin_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(prefix_, ": AddDocument after Finalize"));
  }
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(prefix_, ": document ", sizes_.size(), " has ",
                                                   tokens.size(),
                                                   " tokens; Megatron lengths are int32"));
  }
  const int64_t limit = std::min<int64_t>(vocab_size_ - 1, DTypeMax(dtype_));
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] > limit) {
      return absl::InvalidArgumentError(absl::StrCat(
          prefix_, ": token id ", tokens[i], " at position ", i, " of document ", sizes_.size(),
          " is outside [0, ", limit, "] (vocab_size ", vocab_size_, ", dtype ",
          TokenDTypeName(dtype_), ")"));
    }
  }
  for (int32_t t : tokens) {
    switch (dtype_) {
      case TokenDType::kUInt8: buffer_.push_back(static_cast<uint8_t>(t)); break;
      case TokenDType::kInt8: buffer_.push_back(static_cast<uint8_t>(t)); break;
      case TokenDType::kInt16: Append<int16_t>(buffer_, static_cast<int16_t>(t)); break;
      case TokenDType::kUInt16: Append<uint16_t>(buffer_, static_cast<uint16_t>(t)); break;
      case TokenDType::kInt32: Append<int32_t>(buffer_, t); break;
      case TokenDType::kUInt32: Append<uint32_t>(buffer_, static_cast<uint32_t>(t)); break;
      case TokenDType::kInt64: Append<int64_t>(buffer_, t); break;
    }
    if (buffer_.size() >= kWriteBufferBytes) LATTICE_RETURN_IF_ERROR(FlushBuffer());
  }
  sizes_.push_back(static_cast<int32_t>(tokens.size()));
  num_tokens_ += static_cast<int64_t>(tokens.size());
  return absl::OkStatus();
}

absl::Status MegatronDatasetWriter::Finalize() {
  if (finalized_ || bin_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(prefix_, ": Finalize called twice"));
  }
  finalized_ = true;
  LATTICE_RETURN_IF_ERROR(FlushBuffer());
  std::unique_ptr<OutputFile> bin = std::move(bin_);
  // A stale .idx from an earlier run must never describe the new .bin, even for a moment. Only
  // a regular file is removed (a device or FIFO is written in place below, never deleted).
  const std::string idx_path = prefix_ + ".idx";
  struct stat idx_st;
  if (::lstat(idx_path.c_str(), &idx_st) == 0 && S_ISREG(idx_st.st_mode) &&
      ::unlink(idx_path.c_str()) != 0 && errno != ENOENT) {
    return absl::PermissionDeniedError(absl::StrCat(idx_path, ": cannot replace: ",
                                                    std::strerror(errno)));
  }
  LATTICE_RETURN_IF_ERROR(bin->Commit());

  const int64_t n = static_cast<int64_t>(sizes_.size());
  std::vector<uint8_t> idx;
  idx.reserve(static_cast<size_t>(kMegatronHeaderBytes + 12 * n + 8 * (n + 1)));
  idx.insert(idx.end(), kMegatronMagic, kMegatronMagic + sizeof(kMegatronMagic));
  Append<uint64_t>(idx, 1);                                  // version
  Append<uint8_t>(idx, static_cast<uint8_t>(dtype_));        // dtype code
  Append<uint64_t>(idx, static_cast<uint64_t>(n));           // sequence_count
  Append<uint64_t>(idx, static_cast<uint64_t>(n + 1));       // document_count
  for (int32_t s : sizes_) Append<int32_t>(idx, s);          // sequence_lengths
  const int64_t item = static_cast<int64_t>(TokenDTypeSize(dtype_));
  int64_t pointer = 0;
  for (int32_t s : sizes_) {                                 // sequence_pointers
    Append<int64_t>(idx, pointer);
    pointer += static_cast<int64_t>(s) * item;
  }
  for (int64_t d = 0; d <= n; ++d) Append<int64_t>(idx, d);  // document_indices
  return WriteOutputFile(idx_path,
                         absl::string_view(reinterpret_cast<const char*>(idx.data()), idx.size()));
}

}  // namespace lattice
