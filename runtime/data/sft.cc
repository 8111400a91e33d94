#include "runtime/data/sft.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/io/crc32c.h"
#include "runtime/io/json_limits.h"
#include "runtime/io/mapped_file.h"
#include "runtime/io/output_file.h"
#include "runtime/status.h"
#include "runtime/text/chat_template.h"

namespace lattice {

namespace {

constexpr char kMagic[8] = {'L', 'T', 'S', 'F', 'T', '\0', '\0', '\1'};
constexpr uint64_t kFormatVersion = 1;
// Names the rendering rules the prepared tokens depend on; changing the template or the
// prompt/completion rule means changing this, which makes every prepared file stale.
constexpr absl::string_view kRenderingId = "chatml-1;prompt+completion+eos-1";
// magic, version, size, crc, tokenizer, template, eos, N, M.
constexpr size_t kHeaderBytes = 8 + 8 * 8;

struct Header {
  uint64_t version = kFormatVersion;
  uint64_t source_size = 0;
  uint64_t source_crc = 0;
  uint64_t tokenizer_crc = 0;
  uint64_t rendering_crc = 0;
  int64_t eos = -1;
  uint64_t examples = 0;
  uint64_t tokens = 0;
};

template <typename T>
void Put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

template <typename T>
T Take(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

absl::StatusOr<std::string> ReadWhole(const std::string& path, absl::string_view what) {
  absl::StatusOr<std::unique_ptr<MappedFile>> f = MappedFile::Open(path);
  if (!f.ok()) return Annotate(f.status(), what);
  const MappedFile& m = **f;
  return std::string(reinterpret_cast<const char*>(m.data()), m.size());
}

uint64_t TokenizerIdentity(const std::string& spec, absl::string_view tokenizer_json) {
  if (spec == "byte") return Crc32c("byte", 4);
  return Crc32c(tokenizer_json.data(), tokenizer_json.size());
}

uint64_t RenderingIdentity() { return Crc32c(kRenderingId.data(), kRenderingId.size()); }

absl::StatusOr<const nlohmann::json*> StringField(const nlohmann::json& j, const char* key,
                                                  const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing \"", key, "\""));
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"", key, "\" must be a string, got ",
                                                   JsonSnippet(*it, 60)));
  }
  return &*it;
}

void AppendTokens(SftExamples& ex, const std::vector<int32_t>& ids, bool counted) {
  ex.tokens.insert(ex.tokens.end(), ids.begin(), ids.end());
  ex.mask.insert(ex.mask.end(), ids.size(), counted ? 1 : 0);
}

std::string Serialize(const Header& h, const SftExamples& ex) {
  std::string out;
  out.reserve(kHeaderBytes + 16 * ex.lines.size() + 5 * ex.tokens.size() + 16);
  out.append(kMagic, sizeof(kMagic));
  Put<uint64_t>(out, h.version);
  Put<uint64_t>(out, h.source_size);
  Put<uint64_t>(out, h.source_crc);
  Put<uint64_t>(out, h.tokenizer_crc);
  Put<uint64_t>(out, h.rendering_crc);
  Put<int64_t>(out, h.eos);
  Put<uint64_t>(out, h.examples);
  Put<uint64_t>(out, h.tokens);
  out.append(reinterpret_cast<const char*>(ex.offsets.data()), ex.offsets.size() * 8);
  out.append(reinterpret_cast<const char*>(ex.lines.data()), ex.lines.size() * 8);
  out.append(reinterpret_cast<const char*>(ex.tokens.data()), ex.tokens.size() * 4);
  out.append(reinterpret_cast<const char*>(ex.mask.data()), ex.mask.size());
  Put<uint32_t>(out, Crc32c(out.data(), out.size()));
  return out;
}

// The header of a prepared file (its magic and version checked), or DataLoss naming it.
absl::StatusOr<Header> ParseHeader(const uint8_t* p, size_t size, const std::string& path) {
  if (size < kHeaderBytes + 4 || std::memcmp(p, kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError(absl::StrCat(
        path, ": not a lattice prepared SFT file (bad magic or too short: ", size,
        " bytes); delete it to prepare the JSONL again"));
  }
  Header h;
  const uint8_t* q = p + 8;
  h.version = Take<uint64_t>(q);
  h.source_size = Take<uint64_t>(q + 8);
  h.source_crc = Take<uint64_t>(q + 16);
  h.tokenizer_crc = Take<uint64_t>(q + 24);
  h.rendering_crc = Take<uint64_t>(q + 32);
  h.eos = Take<int64_t>(q + 40);
  h.examples = Take<uint64_t>(q + 48);
  h.tokens = Take<uint64_t>(q + 56);
  if (h.version != kFormatVersion) {
    return absl::DataLossError(absl::StrCat(path, ": prepared SFT format version ", h.version,
                                            " (this lattice reads ", kFormatVersion,
                                            "); delete it to prepare the JSONL again"));
  }
  // Bounds before any product: both counts are capped by the file size itself.
  const uint64_t expected =
      h.examples <= size && h.tokens <= size
          ? kHeaderBytes + 8 * (h.examples + 1) + 8 * h.examples + 5 * h.tokens + 4
          : std::numeric_limits<uint64_t>::max();
  if (expected != size) {
    return absl::DataLossError(absl::StrCat(
        path, ": prepared SFT file has ", size, " bytes, but its header (", h.examples,
        " examples, ", h.tokens, " tokens) implies ", expected,
        "; it is truncated or damaged: delete it to prepare the JSONL again"));
  }
  return h;
}

}  // namespace

absl::StatusOr<SftExamples> TokenizeSftJsonl(absl::string_view jsonl, absl::string_view source,
                                             const Tokenizer& tokenizer, int32_t eos) {
  SftExamples ex;
  ex.source = std::string(source);
  ex.offsets.push_back(0);
  int64_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(jsonl, '\n')) {
    ++line_no;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    const std::string where = absl::StrCat(source, ":", line_no);
    absl::StatusOr<nlohmann::json> parsed = ParseJson(line);
    if (!parsed.ok()) return Annotate(parsed.status(), where);
    const nlohmann::json& j = *parsed;
    if (!j.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": each line must be a JSON object, got ", JsonSnippet(j, 60)));
    }
    const bool has_messages = j.contains("messages");
    const bool has_prompt = j.contains("prompt") || j.contains("completion");
    if (has_messages == has_prompt) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, has_messages ? ": has both \"messages\" and \"prompt\"/\"completion\""
                              : ": needs \"prompt\" and \"completion\", or \"messages\"",
          "; give one form per line"));
    }
    const size_t begin = ex.tokens.size();
    if (has_messages) {
      absl::StatusOr<std::vector<text::ChatMessage>> messages =
          text::ChatMessagesFromJson(j["messages"]);
      if (!messages.ok()) return Annotate(messages.status(), where);
      absl::StatusOr<std::vector<text::ChatSegment>> segments =
          text::RenderChatSegments(*messages, /*add_generation_prompt=*/false);
      if (!segments.ok()) return Annotate(segments.status(), where);
      for (const text::ChatSegment& seg : *segments) {
        AppendTokens(ex, tokenizer.Encode(seg.text), seg.assistant);
      }
    } else {
      LATTICE_ASSIGN_OR_RETURN(const nlohmann::json* prompt, StringField(j, "prompt", where));
      LATTICE_ASSIGN_OR_RETURN(const nlohmann::json* completion,
                               StringField(j, "completion", where));
      AppendTokens(ex, tokenizer.Encode(prompt->get_ref<const std::string&>()), false);
      AppendTokens(ex, tokenizer.Encode(completion->get_ref<const std::string&>()), true);
      if (eos >= 0) AppendTokens(ex, {eos}, true);
    }
    // Token 0 of an example is never a target (nothing before it predicts it).
    bool counted = false;
    for (size_t i = begin + 1; i < ex.tokens.size(); ++i) counted = counted || ex.mask[i] != 0;
    if (!counted) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": the example has no token for the loss to count (",
          has_messages ? "no assistant message"
                       : "empty completion, and the tokenizer has no end-of-text token",
          ")"));
    }
    ex.offsets.push_back(static_cast<int64_t>(ex.tokens.size()));
    ex.lines.push_back(line_no);
  }
  if (ex.lines.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no examples (empty JSONL file)"));
  }
  return ex;
}

std::string SftPreparedPath(const std::string& jsonl) { return jsonl + ".lattice-sft"; }

absl::StatusOr<SftExamples> ReadSftPrepared(const std::string& prepared_path,
                                            const std::string& source_name) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> f, MappedFile::Open(prepared_path));
  const uint8_t* p = f->data();
  const size_t size = f->size();
  LATTICE_ASSIGN_OR_RETURN(const Header h, ParseHeader(p, size, prepared_path));
  const uint32_t stored = Take<uint32_t>(p + size - 4);
  if (Crc32c(p, size - 4) != stored) {
    return absl::DataLossError(absl::StrCat(prepared_path,
                                            ": CRC-32C mismatch: the prepared SFT file is "
                                            "damaged; delete it to prepare the JSONL again"));
  }
  SftExamples ex;
  ex.source = source_name;
  ex.offsets.resize(h.examples + 1);
  ex.lines.resize(h.examples);
  ex.tokens.resize(h.tokens);
  ex.mask.resize(h.tokens);
  const uint8_t* q = p + kHeaderBytes;
  std::memcpy(ex.offsets.data(), q, ex.offsets.size() * 8);
  q += ex.offsets.size() * 8;
  std::memcpy(ex.lines.data(), q, ex.lines.size() * 8);
  q += ex.lines.size() * 8;
  std::memcpy(ex.tokens.data(), q, ex.tokens.size() * 4);
  q += ex.tokens.size() * 4;
  std::memcpy(ex.mask.data(), q, ex.mask.size());
  // The offsets must describe the token array (a CRC-valid file lattice did not write, or a
  // bug, must not index out of bounds).
  bool ok = !ex.offsets.empty() && ex.offsets.front() == 0 &&
            ex.offsets.back() == static_cast<int64_t>(h.tokens);
  for (size_t i = 1; ok && i < ex.offsets.size(); ++i) ok = ex.offsets[i] > ex.offsets[i - 1];
  if (!ok) {
    return absl::DataLossError(absl::StrCat(prepared_path,
                                            ": example offsets are not increasing from 0 to the "
                                            "token count; delete it to prepare again"));
  }
  return ex;
}

absl::StatusOr<SftPrepareResult> PrepareSft(const std::string& jsonl,
                                            const std::string& tokenizer_spec) {
  LATTICE_ASSIGN_OR_RETURN(const std::string text, ReadWhole(jsonl, "SFT data"));
  std::string tokenizer_json;
  if (tokenizer_spec != "byte") {
    LATTICE_ASSIGN_OR_RETURN(tokenizer_json, ReadWhole(tokenizer_spec, "data.tokenizer"));
  }
  Header want;
  want.source_size = text.size();
  want.source_crc = Crc32c(text.data(), text.size());
  want.tokenizer_crc = TokenizerIdentity(tokenizer_spec, tokenizer_json);
  want.rendering_crc = RenderingIdentity();

  SftPrepareResult r;
  r.prepared_path = SftPreparedPath(jsonl);
  {
    // An existing file is reused when it was made from these bytes with this tokenizer; a
    // damaged one is an error (the user decides), a stale one is replaced.
    absl::StatusOr<std::unique_ptr<MappedFile>> f = MappedFile::Open(r.prepared_path);
    if (f.ok()) {
      LATTICE_ASSIGN_OR_RETURN(const Header have,
                               ParseHeader((*f)->data(), (*f)->size(), r.prepared_path));
      if (have.source_size == want.source_size && have.source_crc == want.source_crc &&
          have.tokenizer_crc == want.tokenizer_crc && have.rendering_crc == want.rendering_crc) {
        LATTICE_ASSIGN_OR_RETURN(SftExamples ex, ReadSftPrepared(r.prepared_path, jsonl));
        r.reused = true;
        r.examples = ex.size();
        r.tokens = ex.num_tokens();
        return r;
      }
    } else if (!absl::IsNotFound(f.status())) {
      return f.status();
    }
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      tokenizer_spec == "byte" ? absl::StatusOr<std::unique_ptr<Tokenizer>>(Tokenizer::Bytes())
                               : Tokenizer::FromJson(tokenizer_json, tokenizer_spec);
  if (!tok.ok()) return Annotate(tok.status(), "data.tokenizer");
  const std::optional<int32_t> eot = (*tok)->eot_id();
  want.eos = eot.has_value() ? *eot : -1;
  LATTICE_ASSIGN_OR_RETURN(SftExamples ex,
                           TokenizeSftJsonl(text, jsonl, **tok, static_cast<int32_t>(want.eos)));
  want.examples = static_cast<uint64_t>(ex.size());
  want.tokens = static_cast<uint64_t>(ex.num_tokens());
  LATTICE_RETURN_IF_ERROR(WriteOutputFile(r.prepared_path, Serialize(want, ex)));
  r.examples = ex.size();
  r.tokens = ex.num_tokens();
  return r;
}

// ---- SftSamples ------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SftSamples>> SftSamples::Create(
    std::shared_ptr<const SftExamples> examples, const std::string& prepared_path,
    const SftSampleOptions& options) {
  if (options.seq_len < 1) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len must be >= 1, got ", options.seq_len));
  }
  if (examples == nullptr || examples->size() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(prepared_path, ": no SFT examples"));
  }
  const SftExamples& ex = *examples;
  for (int64_t i = 0; i < ex.size(); ++i) {
    const std::string where = absl::StrCat(ex.source, ":", ex.lines[i]);
    const int64_t n = ex.length(i);
    if (n - 1 > options.seq_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": the example has ", n, " tokens, more than model.seq_len + 1 = ",
          options.seq_len + 1, " (lattice does not truncate examples: shorten it or raise "
          "model.seq_len)"));
    }
    if (options.vocab_size > 0) {
      for (int64_t k = ex.offsets[i]; k < ex.offsets[i + 1]; ++k) {
        if (ex.tokens[k] < 0 || ex.tokens[k] >= options.vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, ": token id ", ex.tokens[k], " is outside model.vocab_size=",
              options.vocab_size, " (prepared file ", prepared_path, ")"));
        }
      }
    }
  }
  std::unique_ptr<SftSamples> s(new SftSamples());
  s->examples_ = std::move(examples);
  s->prepared_path_ = prepared_path;
  s->options_ = options;
  const int64_t n = ex.size();
  s->order_.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    // Packing fills rows from a seeded order, so rows mix examples from the whole file;
    // unpacked rows keep the file order (each epoch shuffles the rows anyway).
    s->order_[i] = options.pack
                       ? static_cast<int64_t>(FeistelPermute(
                             static_cast<uint64_t>(i), static_cast<uint64_t>(n), options.seed,
                             absl::StrCat("lattice.sft.", options.name, ".pack")))
                       : i;
  }
  s->row_begin_.push_back(0);
  int64_t used = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t len = ex.length(s->order_[k]) - 1;  // positions the example fills
    if (k > 0 && (!options.pack || used + len > options.seq_len)) {
      s->row_begin_.push_back(k);
      used = 0;
    }
    used += len;
  }
  s->row_begin_.push_back(n);
  return s;
}

std::vector<int64_t> SftSamples::RowExamples(int64_t row) const {
  return std::vector<int64_t>(order_.begin() + row_begin_[row],
                              order_.begin() + row_begin_[row + 1]);
}

int64_t SftSamples::RowOf(int64_t global_index) const {
  const int64_t rows = rows_per_epoch();
  const int64_t epoch = global_index / rows;
  return static_cast<int64_t>(FeistelPermute(
      static_cast<uint64_t>(global_index % rows), static_cast<uint64_t>(rows), options_.seed,
      absl::StrCat("lattice.sft.", options_.name, ".epoch", epoch)));
}

absl::Status SftSamples::ReadBatch(int64_t first_global_index, int64_t batch,
                                   TokenBatch& out) const {
  if (batch < 1) return absl::InvalidArgumentError(absl::StrCat("batch size ", batch, " < 1"));
  if (first_global_index < 0) {
    return absl::OutOfRangeError(absl::StrCat("sample index ", first_global_index,
                                              " is negative"));
  }
  const int64_t T = options_.seq_len;
  const SftExamples& ex = *examples_;
  out.b = batch;
  out.t = T;
  out.inputs.assign(static_cast<size_t>(batch * T), 0);
  out.targets.assign(out.inputs.size(), -1);
  if (options_.pack) {
    out.doc_starts.resize(out.inputs.size());
  } else {
    out.doc_starts.clear();
  }
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t row = RowOf(first_global_index + b);
    int32_t* in = out.inputs.data() + b * T;
    int32_t* tg = out.targets.data() + b * T;
    int64_t p = 0;
    for (int64_t k = row_begin_[row]; k < row_begin_[row + 1]; ++k) {
      const int64_t e = order_[k];
      const int64_t begin = ex.offsets[e], len = ex.length(e) - 1;
      for (int64_t i = 0; i < len; ++i) {
        in[p + i] = ex.tokens[begin + i];
        tg[p + i] = ex.mask[begin + i + 1] != 0 ? ex.tokens[begin + i + 1] : -1;
        if (options_.pack) out.doc_starts[b * T + p + i] = static_cast<int32_t>(p);
      }
      p += len;
    }
    // The padding after the last example is a segment of its own.
    if (options_.pack) {
      for (int64_t i = p; i < T; ++i) out.doc_starts[b * T + i] = static_cast<int32_t>(p);
    }
  }
  return absl::OkStatus();
}

DataLoaderState SftSamples::State(int64_t consumed_samples) const {
  DataLoaderState s;
  s.consumed_samples = consumed_samples;
  s.seed = options_.seed;
  s.seq_len = options_.seq_len;
  s.sources.push_back({prepared_path_, examples_->num_tokens(), 1.0});
  s.sources.push_back({options_.pack ? "sft rows per epoch (packed)" : "sft rows per epoch",
                       rows_per_epoch(), 1.0});
  return s;
}

absl::Status SftSamples::CheckState(const DataLoaderState& state) const {
  const DataLoaderState mine = State(state.consumed_samples);
  if (state.seed != mine.seed || state.seq_len != mine.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpointed SFT data used seed ", state.seed, " and seq_len ", state.seq_len,
        ", the config has ", mine.seed, " and ", mine.seq_len));
  }
  if (state.sources.size() != 2 || state.sources[0].num_tokens != mine.sources[0].num_tokens ||
      state.sources[1].num_tokens != mine.sources[1].num_tokens ||
      state.sources[1].path != mine.sources[1].path) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the checkpoint's data state (", state.ToJson(), ") is not this SFT data (",
        mine.ToJson(), "): different examples, tokenizer or data.pack would give other rows"));
  }
  return absl::OkStatus();
}

}  // namespace lattice
