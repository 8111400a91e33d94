// `lattice prepare`: tokenizes text or JSONL into Megatron .bin/.idx files, PREFIX_train and
// PREFIX_val.
//
// Documents.
//   JSONL (.jsonl / .json, or --jsonl): one JSON object per line, the document is the string
//     under --json-key (default "text"); whitespace-only lines are skipped.
//   Text, --doc-split blank-line (default): a document is a maximal run of non-blank lines (a
//     line is blank when it holds only spaces, tabs or '\r'); its text is those lines with their
//     original line breaks, without the break after the last line.
//   Text, --doc-split line: every non-blank line is a document (without its line break).
//   Text, --doc-split file: each non-empty file is one document, verbatim.
// Every document is encoded on its own and followed by the tokenizer's EOT token (unless
// --append-eot false); documents that end up with no tokens are skipped.
//
// Split. Documents are numbered 0, 1, 2, ... across all inputs in order; with
// p = round(val_fraction * 1e6), document i goes to validation when (i * p) mod 1e6 < p. That
// spreads validation evenly through the corpus, exactly every k-th document (0, k, 2k, ...) when
// val_fraction = 1/k, and gives the first document to validation so even a small input has one.
// --val-fraction 0 writes no validation files.
//
// Pipeline. A reader thread maps the inputs and cuts them into chunks of about 1 MiB of
// documents; worker threads encode chunks (and parse JSON) in parallel; the main thread writes
// chunks strictly in input order, so the output does not depend on --threads. At most
// 4 * threads chunks are in flight, which bounds memory whatever the input size.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "launcher/preflight.h"
#include "runtime/io/mapped_file.h"
#include "runtime/io/json_limits.h"
#include "runtime/status.h"
#include "runtime/data/token_file.h"
#include "runtime/text/tokenizer.h"

namespace lattice {
namespace {

namespace po = boost::program_options;

enum class DocSplit { kBlankLine, kLine, kFile };

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::string json_key = "text";
  bool force_jsonl = false;
  std::string tokenizer;
  std::string out;
  double val_fraction = 0.01;
  int threads = 0;
  bool append_eot = true;
  DocSplit doc_split = DocSplit::kBlankLine;
};

constexpr int64_t kValScale = 1000000;
constexpr size_t kChunkBytes = 1 << 20;

absl::StatusOr<bool> ParseBool(const std::string& flag, const std::string& v) {
  const std::string s = absl::AsciiStrToLower(v);
  if (s == "true" || s == "1" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "0" || s == "no" || s == "off") return false;
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " takes true or false, got \"", v,
                                                 "\""));
}

// One document as the reader found it: text to encode, or a JSON line to parse first.
struct RawDoc {
  absl::string_view text;
  int64_t index = 0;  // document number across all inputs (decides train/val)
  int32_t file = 0;   // into PrepareOptions::inputs
  int64_t line = 0;   // 1-based line number (JSONL)
  bool json = false;
};

struct Chunk {
  int64_t seq = 0;
  std::vector<RawDoc> docs;
  int64_t input_end = 0;  // input bytes (all files) up to the end of the last document
};

struct EncodedChunk {
  absl::Status status;
  std::vector<int32_t> tokens;     // all documents back to back
  std::vector<int64_t> lengths;    // (docs,) tokens per document
  std::vector<int64_t> doc_index;  // (docs,) RawDoc::index
  int64_t input_end = 0;
};

bool IsBlankLine(absl::string_view line) {
  for (char c : line) {
    if (c != ' ' && c != '\t' && c != '\r') return false;
  }
  return true;
}

absl::string_view StripLineBreak(absl::string_view s) {
  if (absl::EndsWith(s, "\n")) s.remove_suffix(1);
  if (absl::EndsWith(s, "\r")) s.remove_suffix(1);
  return s;
}

// Bounded, order-preserving hand-over between the reader, the workers and the writer.
class Pipeline {
 public:
  explicit Pipeline(int64_t max_in_flight) : max_in_flight_(max_in_flight) {}

  // Reader: blocks while too many chunks are in flight. False once the pipeline is stopped.
  bool Submit(Chunk chunk) {
    std::unique_lock<std::mutex> lock(mu_);
    space_cv_.wait(lock, [&] { return in_flight_ < max_in_flight_ || stopped_; });
    if (stopped_) return false;
    work_.push_back(std::move(chunk));
    ++in_flight_;
    work_cv_.notify_one();
    return true;
  }
  void FinishInput(int64_t num_chunks) {
    std::lock_guard<std::mutex> lock(mu_);
    input_done_ = true;
    num_chunks_ = num_chunks;
    work_cv_.notify_all();
    done_cv_.notify_all();
  }
  // Workers: the next chunk to encode, or nullopt when there is none left.
  std::optional<Chunk> Take() {
    std::unique_lock<std::mutex> lock(mu_);
    work_cv_.wait(lock, [&] { return !work_.empty() || input_done_ || stopped_; });
    if (stopped_ || work_.empty()) return std::nullopt;
    Chunk c = std::move(work_.front());
    work_.pop_front();
    return c;
  }
  void Deliver(int64_t seq, EncodedChunk result) {
    std::lock_guard<std::mutex> lock(mu_);
    done_.emplace(seq, std::move(result));
    done_cv_.notify_all();
  }
  // Writer: chunk `seq` once it is encoded, or nullopt after the last chunk.
  std::optional<EncodedChunk> Next(int64_t seq) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock,
                  [&] { return done_.count(seq) > 0 || (input_done_ && seq >= num_chunks_); });
    auto it = done_.find(seq);
    if (it == done_.end()) return std::nullopt;
    EncodedChunk r = std::move(it->second);
    done_.erase(it);
    --in_flight_;
    space_cv_.notify_one();
    return r;
  }
  void Stop() {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    space_cv_.notify_all();
    work_cv_.notify_all();
    done_cv_.notify_all();
  }

 private:
  const int64_t max_in_flight_;
  std::mutex mu_;
  std::condition_variable space_cv_, work_cv_, done_cv_;
  std::deque<Chunk> work_;
  std::map<int64_t, EncodedChunk> done_;
  int64_t in_flight_ = 0;
  int64_t num_chunks_ = 0;
  bool input_done_ = false;
  bool stopped_ = false;
};

class Preparer {
 public:
  Preparer(const PrepareOptions& opt, const Tokenizer& tok, std::optional<int32_t> eot,
           std::vector<std::unique_ptr<MappedFile>> files)
      : opt_(opt), tok_(tok), eot_(eot), files_(std::move(files)) {}

  absl::Status Run();

 private:
  bool IsJsonl(int32_t file) const {
    const std::string& p = opt_.inputs[file];
    return opt_.force_jsonl || absl::EndsWith(p, ".jsonl") || absl::EndsWith(p, ".json");
  }
  void ReadInputs(Pipeline* pipe) const;
  EncodedChunk Encode(const Chunk& chunk) const;
  absl::Status JsonText(const RawDoc& d, std::string* text) const;
  void Progress();

  const PrepareOptions& opt_;
  const Tokenizer& tok_;
  const std::optional<int32_t> eot_;
  std::vector<std::unique_ptr<MappedFile>> files_;

  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_progress_ = start_;
  bool progress_printed_ = false;
  int64_t total_bytes_ = 0;
  int64_t done_bytes_ = 0;
  int64_t docs_[2] = {0, 0};    // train, val
  int64_t tokens_[2] = {0, 0};  // train, val
  int64_t skipped_ = 0;
  const bool tty_ = ::isatty(2) != 0;
};

void Preparer::ReadInputs(Pipeline* pipe) const {
  int64_t seq = 0;
  int64_t doc_index = 0;
  int64_t base = 0;  // bytes of the files before this one
  Chunk chunk;
  size_t chunk_bytes = 0;
  auto flush = [&]() -> bool {
    chunk.seq = seq++;
    const bool ok = pipe->Submit(std::move(chunk));
    chunk = Chunk();
    chunk_bytes = 0;
    return ok;
  };
  auto add = [&](RawDoc d, int64_t end) -> bool {
    d.index = doc_index++;
    chunk_bytes += d.text.size();
    chunk.docs.push_back(d);
    chunk.input_end = end;
    return chunk_bytes < kChunkBytes || flush();
  };
  for (int32_t f = 0; f < static_cast<int32_t>(files_.size()); ++f) {
    const char* data = reinterpret_cast<const char*>(files_[f]->data());
    const absl::string_view all(data == nullptr ? "" : data, files_[f]->size());
    const bool jsonl = IsJsonl(f);
    if (!jsonl && opt_.doc_split == DocSplit::kFile) {
      if (!all.empty() && !add({.text = all, .file = f}, base + all.size())) return;
      base += static_cast<int64_t>(all.size());
      continue;
    }
    size_t pos = 0;
    int64_t line_no = 0;
    size_t doc_begin = absl::string_view::npos;  // blank-line mode: the open document ...
    size_t doc_end = 0;                          // ... ends here (its last line, no break)
    while (pos < all.size()) {
      const size_t nl = all.find('\n', pos);
      const size_t next = nl == absl::string_view::npos ? all.size() : nl + 1;
      const absl::string_view line = StripLineBreak(all.substr(pos, next - pos));
      ++line_no;
      const bool blank = IsBlankLine(line);
      if (jsonl || opt_.doc_split == DocSplit::kLine) {
        if (!blank &&
            !add({.text = line, .file = f, .line = line_no, .json = jsonl}, base + next)) {
          return;
        }
      } else if (!blank) {
        if (doc_begin == absl::string_view::npos) doc_begin = pos;
        doc_end = pos + line.size();
      } else if (doc_begin != absl::string_view::npos) {
        if (!add({.text = all.substr(doc_begin, doc_end - doc_begin), .file = f},
                 base + doc_end)) {
          return;
        }
        doc_begin = absl::string_view::npos;
      }
      pos = next;
    }
    if (doc_begin != absl::string_view::npos &&
        !add({.text = all.substr(doc_begin, doc_end - doc_begin), .file = f}, base + doc_end)) {
      return;
    }
    base += static_cast<int64_t>(all.size());
  }
  chunk.input_end = base;
  if (!chunk.docs.empty() && !flush()) return;
  pipe->FinishInput(seq);
}

absl::Status Preparer::JsonText(const RawDoc& d, std::string* text) const {
  const std::string where = absl::StrCat(opt_.inputs[d.file], ":", d.line);
  // The bounded parser (runtime/io/json_limits.h): no NUL-terminated junk, no unbounded depth
  // or duplicate keys, and error messages of bounded length.
  absl::StatusOr<nlohmann::json> parsed = ParseJson(d.text);
  if (!parsed.ok()) return Annotate(parsed.status(), where);
  nlohmann::json j = std::move(parsed).value();
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected one JSON object per line, "
                                                   "got a JSON ", j.type_name()));
  }
  auto it = j.find(opt_.json_key);
  if (it == j.end()) {
    std::vector<std::string> keys;
    for (auto k = j.begin(); k != j.end() && keys.size() < 10; ++k) {
      keys.push_back(absl::StrCat("\"", k.key(), "\""));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": no key \"", opt_.json_key, "\" in the object (its keys: ",
        keys.empty() ? "none" : absl::StrJoin(keys, ", "), "); choose one with --json-key"));
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"", opt_.json_key, "\" is a JSON ",
                                                   it->type_name(), ", not a string"));
  }
  *text = it->get<std::string>();
  return absl::OkStatus();
}

EncodedChunk Preparer::Encode(const Chunk& chunk) const {
  EncodedChunk r;
  r.input_end = chunk.input_end;
  r.lengths.reserve(chunk.docs.size());
  r.doc_index.reserve(chunk.docs.size());
  std::string json_text;
  for (const RawDoc& d : chunk.docs) {
    absl::string_view text = d.text;
    if (d.json) {
      r.status = JsonText(d, &json_text);
      if (!r.status.ok()) return r;
      text = json_text;
    }
    const std::vector<int32_t> ids = tok_.Encode(text);
    r.tokens.insert(r.tokens.end(), ids.begin(), ids.end());
    if (eot_.has_value()) r.tokens.push_back(*eot_);
    r.lengths.push_back(static_cast<int64_t>(ids.size()) + (eot_.has_value() ? 1 : 0));
    r.doc_index.push_back(d.index);
  }
  return r;
}

void Preparer::Progress() {
  const auto now = std::chrono::steady_clock::now();
  if (now - last_progress_ < std::chrono::milliseconds(tty_ ? 500 : 10000)) return;
  last_progress_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = static_cast<double>(done_bytes_) / std::max(elapsed, 1e-9);
  const double eta = rate > 0 ? static_cast<double>(total_bytes_ - done_bytes_) / rate : 0.0;
  std::fprintf(stderr, "%sprepare: %.1f / %.1f MB (%.0f%%), %.1f MB/s, ETA %.0f s, %lld documents, "
               "%lld tokens%s",
               tty_ ? "\r" : "", static_cast<double>(done_bytes_) / 1e6,
               static_cast<double>(total_bytes_) / 1e6,
               100.0 * static_cast<double>(done_bytes_) / std::max<double>(total_bytes_, 1),
               rate / 1e6, eta, static_cast<long long>(docs_[0] + docs_[1]),
               static_cast<long long>(tokens_[0] + tokens_[1]), tty_ ? "   " : "\n");
  progress_printed_ = true;
}

absl::Status Preparer::Run() {
  for (const auto& f : files_) total_bytes_ += static_cast<int64_t>(f->size());
  int threads = opt_.threads;
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());

  const std::filesystem::path parent = std::filesystem::path(opt_.out).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) {
      return absl::PermissionDeniedError(absl::StrCat(parent.string(), ": cannot create: ",
                                                      ec.message()));
    }
  }
  const int64_t p = static_cast<int64_t>(std::llround(opt_.val_fraction * kValScale));
  // Every output can be written and none of them is an input, before any document is read.
  std::vector<NamedPath> outputs, inputs;
  for (const char* split : {"_train", "_val"}) {
    if (split == std::string("_val") && p == 0) continue;
    for (const char* ext : {".bin", ".idx"}) outputs.push_back({"--out", opt_.out + split + ext});
  }
  for (const std::string& in : opt_.inputs) inputs.push_back({"--input", in});
  if (opt_.tokenizer != "byte") inputs.push_back({"--tokenizer", opt_.tokenizer});
  LATTICE_RETURN_IF_ERROR(CheckOutputs(outputs, inputs));
  MegatronDatasetWriter::Options wo;
  wo.vocab_size = tok_.vocab_size();
  LATTICE_ASSIGN_OR_RETURN(auto train, MegatronDatasetWriter::Create(opt_.out + "_train", wo));
  std::unique_ptr<MegatronDatasetWriter> val;
  if (p > 0) {
    LATTICE_ASSIGN_OR_RETURN(val, MegatronDatasetWriter::Create(opt_.out + "_val", wo));
  }

  Pipeline pipe(4 * static_cast<int64_t>(threads));
  std::thread reader([&] { ReadInputs(&pipe); });
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    workers.emplace_back([&] {
      while (std::optional<Chunk> c = pipe.Take()) pipe.Deliver(c->seq, Encode(*c));
    });
  }
  absl::Status status;
  for (int64_t seq = 0; status.ok(); ++seq) {
    std::optional<EncodedChunk> r = pipe.Next(seq);
    if (!r.has_value()) break;
    status = r->status;
    size_t off = 0;
    for (size_t k = 0; k < r->lengths.size() && status.ok(); ++k) {
      const absl::Span<const int32_t> doc(r->tokens.data() + off,
                                          static_cast<size_t>(r->lengths[k]));
      off += doc.size();
      if (doc.empty()) {
        ++skipped_;
        continue;
      }
      const bool is_val = p > 0 && (r->doc_index[k] * p) % kValScale < p;
      status = (is_val ? val : train)->AddDocument(doc);
      ++docs_[is_val];
      tokens_[is_val] += static_cast<int64_t>(doc.size());
    }
    done_bytes_ = r->input_end;
    Progress();
  }
  pipe.Stop();
  reader.join();
  for (std::thread& w : workers) w.join();
  if (!status.ok()) return status;
  if (docs_[0] == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no documents left for training (", docs_[1], " went to validation with --val-fraction ",
        opt_.val_fraction, "); give more documents or a smaller --val-fraction"));
  }
  LATTICE_RETURN_IF_ERROR(train->Finalize());
  if (val != nullptr) LATTICE_RETURN_IF_ERROR(val->Finalize());

  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (progress_printed_ && tty_) std::fprintf(stderr, "\n");
  std::fprintf(stderr,
               "prepare: %lld documents (%lld train, %lld val%s), %lld tokens (%lld train, %lld "
               "val), %.2f MB in %.2f s = %.2f MB/s on %d threads\n",
               static_cast<long long>(docs_[0] + docs_[1]), static_cast<long long>(docs_[0]),
               static_cast<long long>(docs_[1]),
               skipped_ > 0 ? absl::StrCat("; ", skipped_, " empty skipped").c_str() : "",
               static_cast<long long>(tokens_[0] + tokens_[1]), static_cast<long long>(tokens_[0]),
               static_cast<long long>(tokens_[1]), static_cast<double>(total_bytes_) / 1e6,
               elapsed, static_cast<double>(total_bytes_) / 1e6 / std::max(elapsed, 1e-9),
               threads);
  std::fprintf(stderr, "prepare: wrote %s_train.{bin,idx}%s (%s tokens, vocab_size %lld%s)\n",
               opt_.out.c_str(), val != nullptr ? absl::StrCat(" and ", opt_.out, "_val.{bin,idx}").c_str() : "",
               std::string(TokenDTypeName(train->dtype())).c_str(),
               static_cast<long long>(tok_.vocab_size()),
               eot_.has_value() ? absl::StrCat(", EOT ", *eot_, " after each document").c_str()
                                : "");
  return absl::OkStatus();
}

absl::StatusOr<PrepareOptions> ParsePrepareArgs(const CommandArgs& args, bool* help) {
  PrepareOptions o;
  std::string append_eot = "true", doc_split = "blank-line";
  po::options_description desc(
      "lattice prepare: tokenize text or JSONL into Megatron PREFIX_train/PREFIX_val .bin/.idx\n"
      "(text: documents are separated by blank lines unless --doc-split says otherwise; JSONL:\n"
      "one document per line. Document i goes to validation when (i*p) mod 1e6 < p,\n"
      "p = round(val_fraction*1e6): every k-th document, starting with the first, for 1/k)");
  desc.add_options()
      ("input", po::value(&o.inputs)->composing()->required(),
       "input file (repeatable): text, or JSONL if it ends in .jsonl/.json")
      ("json-key", po::value(&o.json_key)->default_value("text"), "JSONL key holding the text")
      ("jsonl", po::bool_switch(&o.force_jsonl), "read every input as JSONL")
      ("tokenizer", po::value(&o.tokenizer)->required(), "tokenizer.json path, or \"byte\"")
      ("out", po::value(&o.out)->required(), "output prefix: writes PREFIX_train.* and PREFIX_val.*")
      ("val-fraction", po::value(&o.val_fraction)->default_value(0.01),
       "fraction of documents for validation (0 = no validation files)")
      ("threads", po::value(&o.threads)->default_value(0), "encoding threads (0 = one per core)")
      ("append-eot", po::value(&append_eot)->default_value("true"),
       "append the tokenizer's end-of-text token after every document (true|false)")
      ("doc-split", po::value(&doc_split)->default_value("blank-line"),
       "how text files split into documents: blank-line | line | file");
  po::variables_map vm;
  LATTICE_RETURN_IF_ERROR(ParseOptions("prepare", args, desc, vm, help));
  if (*help) return o;
  LATTICE_ASSIGN_OR_RETURN(o.append_eot, ParseBool("append-eot", append_eot));
  if (doc_split == "blank-line") {
    o.doc_split = DocSplit::kBlankLine;
  } else if (doc_split == "line") {
    o.doc_split = DocSplit::kLine;
  } else if (doc_split == "file") {
    o.doc_split = DocSplit::kFile;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--doc-split takes blank-line, line or file, got \"", doc_split, "\""));
  }
  if (!(o.val_fraction >= 0.0 && o.val_fraction < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("--val-fraction must be in [0, 1), got ",
                                                   o.val_fraction));
  }
  LATTICE_RETURN_IF_ERROR(CheckThreadsOption(o.threads));
  if (o.json_key.empty()) return absl::InvalidArgumentError("--json-key must not be empty");
  if (o.out.empty()) return absl::InvalidArgumentError("--out must not be empty");
  return o;
}

}  // namespace

absl::Status RunPrepareCommand(const CommandArgs& args) {
  bool help = false;
  LATTICE_ASSIGN_OR_RETURN(PrepareOptions opt, ParsePrepareArgs(args, &help));
  if (help) return absl::OkStatus();
  // Every input is opened before any work starts, so a missing file fails at once.
  std::vector<std::unique_ptr<MappedFile>> files;
  for (const std::string& path : opt.inputs) {
    auto f = MappedFile::Open(path);
    if (!f.ok()) return Annotate(f.status(), "--input");
    files.push_back(std::move(*f));
  }
  auto tok = Tokenizer::Load(opt.tokenizer);
  if (!tok.ok()) return Annotate(tok.status(), "--tokenizer");
  std::optional<int32_t> eot;
  if (opt.append_eot) {
    eot = (*tok)->eot_id();
    if (!eot.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tokenizer ", opt.tokenizer, " has no end-of-text token; pass --append-eot false"));
    }
  }
  Preparer preparer(opt, **tok, eot, std::move(files));
  return preparer.Run();
}

}  // namespace lattice
