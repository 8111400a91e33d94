#include "runtime/io/checkpoint_format.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <iterator>
#include <limits>
#include <set>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/io/crc32c.h"
#include "runtime/io/json_limits.h"
#include "runtime/io/output_file.h"
#include "runtime/status.h"

namespace lattice {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

constexpr char kFormatName[] = "lattice-checkpoint";
constexpr char kStepPrefix[] = "step_";
// An index past this size is a corrupt or foreign file, not a checkpoint: a 70B model at
// tp=8, pp=16, dp=64 with ZeRO-1 has ~6e5 boxes of ~250 bytes of JSON each (~150 MB).
constexpr uint64_t kMaxIndexBytes = uint64_t{1} << 30;
// The index nests five deep (root > tensors > key > boxes > [i] > offset); the bound only
// keeps a hostile file from costing stack (runtime/io/json_limits.h).
constexpr int kMaxIndexDepth = 16;
// Bytes written per write(2) call and CRC pass: large enough that syscalls cost nothing next to
// the copy, small enough that the CRC pass reads data still in the cache.
constexpr uint64_t kWriteChunk = uint64_t{8} << 20;
// Elements of one state tensor at most: its F32 bytes (4 * numel) then fit in int64, so no byte
// count of a box or a file computed from a shape can wrap (2^61 elements is 8 EiB).
constexpr int64_t kMaxTensorElements = std::numeric_limits<int64_t>::max() / 4;

absl::Status Bad(const std::string& path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(path, ": ", what));
}

std::string Hex32(uint32_t v) { return absl::StrFormat("%08x", v); }

// OK when `crc` (of the bytes read) is the index's for the box, else DataLoss naming the file,
// the tensor and the box.
absl::Status CheckCrc(const std::string& path, const std::string& key, const StoredBox& b,
                      uint32_t crc) {
  if (crc == b.crc32c) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(path, ": tensor '", key, "' box ", b.box.ToString(),
                                          " ('", b.name, "'): CRC32C ", Hex32(crc),
                                          " differs from the index's ", Hex32(b.crc32c),
                                          " (the shard is corrupt)"));
}

// ---- Strict field access for the parser ----

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {}

  absl::StatusOr<const Json*> Field(const Json& obj, const char* key, const std::string& where) {
    if (!obj.is_object()) return Bad(path_, absl::StrCat(where, " is not a JSON object"));
    auto it = obj.find(key);
    if (it == obj.end()) return Bad(path_, absl::StrCat(where, " has no \"", key, "\""));
    return &*it;
  }
  absl::StatusOr<int64_t> Int(const Json& obj, const char* key, const std::string& where,
                              int64_t lo = 0, int64_t hi = std::numeric_limits<int64_t>::max()) {
    LATTICE_ASSIGN_OR_RETURN(const Json* v, Field(obj, key, where));
    return IntValue(*v, absl::StrCat(where, ".", key), lo, hi);
  }
  absl::StatusOr<int64_t> IntValue(const Json& v, const std::string& where, int64_t lo,
                                   int64_t hi) {
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u <= static_cast<uint64_t>(hi) && static_cast<int64_t>(u) >= lo) {
        return static_cast<int64_t>(u);
      }
    } else if (v.is_number_integer()) {
      const int64_t i = v.get<int64_t>();
      if (i >= lo && i <= hi) return i;
    }
    return Bad(path_, absl::StrCat(where, " = ", JsonSnippet(v, 40), " is not an integer in [",
                                   lo, ", ", hi, "]"));
  }
  absl::StatusOr<uint64_t> U64(const Json& obj, const char* key, const std::string& where) {
    LATTICE_ASSIGN_OR_RETURN(const Json* v, Field(obj, key, where));
    if (!v->is_number_unsigned()) {
      return Bad(path_, absl::StrCat(where, ".", key, " = ", JsonSnippet(*v, 40),
                                     " is not a non-negative integer"));
    }
    return v->get<uint64_t>();
  }
  absl::StatusOr<std::string> String(const Json& obj, const char* key, const std::string& where) {
    LATTICE_ASSIGN_OR_RETURN(const Json* v, Field(obj, key, where));
    if (!v->is_string()) {
      return Bad(path_, absl::StrCat(where, ".", key, " is not a string"));
    }
    return v->get<std::string>();
  }
  absl::StatusOr<bool> Bool(const Json& obj, const char* key, const std::string& where) {
    LATTICE_ASSIGN_OR_RETURN(const Json* v, Field(obj, key, where));
    if (!v->is_boolean()) return Bad(path_, absl::StrCat(where, ".", key, " is not a boolean"));
    return v->get<bool>();
  }
  absl::StatusOr<std::vector<int64_t>> Dims(const Json& obj, const char* key,
                                            const std::string& where) {
    LATTICE_ASSIGN_OR_RETURN(const Json* v, Field(obj, key, where));
    if (!v->is_array()) return Bad(path_, absl::StrCat(where, ".", key, " is not an array"));
    std::vector<int64_t> dims;
    for (size_t i = 0; i < v->size(); ++i) {
      LATTICE_ASSIGN_OR_RETURN(
          int64_t d, IntValue((*v)[i], absl::StrCat(where, ".", key, "[", i, "]"), 0,
                              std::numeric_limits<int64_t>::max()));
      dims.push_back(d);
    }
    return dims;
  }

 private:
  const std::string& path_;
};

bool SafeFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

// The element count of a shape, or -1 when it overflows int64.
int64_t CheckedNumel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) return -1;
  }
  return n;
}

// Boxes here are validated: inside their tensor, so offset + shape never overflows.
bool Overlap(const Box& a, const Box& b) {
  for (size_t d = 0; d < a.offset.size(); ++d) {
    if (a.offset[d] + a.shape[d] <= b.offset[d] || b.offset[d] + b.shape[d] <= a.offset[d]) {
      return false;
    }
  }
  return true;
}

// Two boxes of `boxes` (validated, of one tensor) that overlap, or {nullptr, nullptr}. In
// O(n log n) for the 1-D and 2-D tensors lattice stores, so that an index of a million boxes
// (a hostile one, or a large ZeRO-1 run) costs milliseconds, not the hours a pairwise check
// of boxes sharing their rows would take.
std::pair<const Box*, const Box*> FindOverlap(const std::vector<const Box*>& boxes) {
  if (boxes.empty()) return {nullptr, nullptr};
  const size_t nd = boxes[0]->offset.size();
  if (nd == 1) {
    std::vector<const Box*> sorted = boxes;
    std::sort(sorted.begin(), sorted.end(),
              [](const Box* a, const Box* b) { return a->offset[0] < b->offset[0]; });
    for (size_t i = 0; i + 1 < sorted.size(); ++i) {
      if (sorted[i]->offset[0] + sorted[i]->shape[0] > sorted[i + 1]->offset[0]) {
        return {sorted[i], sorted[i + 1]};
      }
    }
    return {nullptr, nullptr};
  }
  if (nd == 2) {
    // A sweep over dim 0. The boxes whose row range holds the sweep position are "active";
    // their column ranges must be disjoint, so in a set ordered by first column a new box can
    // only meet its neighbours. A box ends before another starts at the same row (half-open).
    struct Event {
      int64_t row;
      bool start;
      const Box* box;
    };
    std::vector<Event> events;
    events.reserve(2 * boxes.size());
    for (const Box* b : boxes) {
      events.push_back({b->offset[0], true, b});
      events.push_back({b->offset[0] + b->shape[0], false, b});
    }
    std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
      return a.row != b.row ? a.row < b.row : (!a.start && b.start);
    });
    auto by_col = [](const Box* a, const Box* b) { return a->offset[1] < b->offset[1]; };
    std::set<const Box*, decltype(by_col)> active(by_col);
    for (const Event& e : events) {
      if (!e.start) {
        // Active boxes have distinct first columns, so the key finds this very box.
        active.erase(e.box);
        continue;
      }
      auto [it, inserted] = active.insert(e.box);
      if (!inserted) return {*it, e.box};  // the same first column: both are non-empty
      if (it != active.begin()) {
        const Box* prev = *std::prev(it);
        if (prev->offset[1] + prev->shape[1] > e.box->offset[1]) return {prev, e.box};
      }
      if (auto next = std::next(it); next != active.end()) {
        if (e.box->offset[1] + e.box->shape[1] > (*next)->offset[1]) return {e.box, *next};
      }
    }
    return {nullptr, nullptr};
  }
  // More dims (no lattice tensor has them): compare the boxes whose first ranges meet.
  std::vector<const Box*> sorted = boxes;
  std::sort(sorted.begin(), sorted.end(),
            [](const Box* a, const Box* b) { return a->offset < b->offset; });
  for (size_t i = 0; i < sorted.size(); ++i) {
    for (size_t k = i + 1;
         k < sorted.size() && sorted[k]->offset[0] < sorted[i]->offset[0] + sorted[i]->shape[0];
         ++k) {
      if (Overlap(*sorted[i], *sorted[k])) return {sorted[i], sorted[k]};
    }
  }
  return {nullptr, nullptr};
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t limit) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(path, ": ", std::strerror(err)));
  }
  std::string text;
  char buf[1 << 16];
  size_t n;
  while (text.size() <= limit && (n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return absl::DataLossError(absl::StrCat(path, ": read error"));
  if (text.size() > limit) {
    return absl::DataLossError(
        absl::StrCat(path, ": larger than ", limit, " bytes; not a lattice checkpoint index"));
  }
  return text;
}

// step_<digits> -> iteration.
bool ParseStepName(const std::string& name, int64_t* iteration) {
  if (!absl::StartsWith(name, kStepPrefix)) return false;
  const std::string digits = name.substr(std::strlen(kStepPrefix));
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit)) {
    return false;
  }
  return absl::SimpleAtoi(digits, iteration);
}

}  // namespace

std::string CheckpointDirName(int64_t iteration) {
  return absl::StrFormat("%s%08d", kStepPrefix, iteration);
}

std::string ShardFileName(int rank, int world) {
  return absl::StrFormat("shard_%05d_of_%05d.safetensors", rank, world);
}

int64_t Box::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string Box::ToString() const {
  std::vector<std::string> dims;
  for (size_t d = 0; d < offset.size() && d < shape.size(); ++d) {
    // Error messages print boxes of indexes that failed validation: the end may not fit.
    int64_t end;
    if (__builtin_add_overflow(offset[d], shape[d], &end)) {
      dims.push_back(absl::StrCat(offset[d], ":", offset[d], "+", shape[d]));
    } else {
      dims.push_back(absl::StrCat(offset[d], ":", end));
    }
  }
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

std::string BoxTensorName(absl::string_view key, const Box& box) {
  return absl::StrCat(key, "@", absl::StrJoin(box.offset, ","));
}

std::string CheckpointLayout::ToString() const {
  return absl::StrCat("tp=", tp, " dp=", dp, " pp=", pp, " vpp=", vpp,
                      " zero1=", zero1 ? "on" : "off", " sp=", sequence_parallel ? "on" : "off",
                      " schedule=", schedule, " (", world, " ranks)");
}

uint64_t CheckpointIndex::payload_bytes() const {
  uint64_t n = 0;
  for (const auto& [key, t] : tensors) {
    for (const StoredBox& b : t.boxes) n += b.nbytes;
  }
  return n;
}

// ---- index.json -----------------------------------------------------------------------------

std::string CheckpointIndex::ToJson() const {
  OrderedJson j = OrderedJson::object();
  j["format"] = kFormatName;
  j["format_version"] = format_version;
  j["iteration"] = iteration;
  j["optimizer_step"] = optimizer_step;
  j["skipped_iterations"] = skipped_iterations;
  j["nan_iterations"] = nan_iterations;
  j["seed"] = seed;
  j["layout"] = {{"world", layout.world},
                 {"tp", layout.tp},
                 {"dp", layout.dp},
                 {"pp", layout.pp},
                 {"vpp", layout.vpp},
                 {"zero1", layout.zero1},
                 {"sequence_parallel", layout.sequence_parallel},
                 {"schedule", layout.schedule}};
  // The loader's own JSON (DataLoaderState::ToJson), embedded as an object so the index reads
  // as one document.
  j["data_state"] = data_state.empty() ? OrderedJson() : OrderedJson::parse(data_state);
  if (!loss_scaler.empty()) j["loss_scaler"] = OrderedJson::parse(loss_scaler);
  j["config"] = config_yaml;
  OrderedJson files_json = OrderedJson::array();
  for (const CheckpointFile& f : files) {
    files_json.push_back({{"name", f.name}, {"bytes", f.bytes}, {"rank", f.rank}});
  }
  j["files"] = std::move(files_json);
  OrderedJson tensors_json = OrderedJson::object();
  for (const auto& [key, t] : tensors) {
    OrderedJson boxes = OrderedJson::array();
    for (const StoredBox& b : t.boxes) {
      boxes.push_back({{"offset", b.box.offset},
                       {"shape", b.box.shape},
                       {"file", b.file},
                       {"name", b.name},
                       {"byte_offset", b.byte_offset},
                       {"nbytes", b.nbytes},
                       {"crc32c", Hex32(b.crc32c)}});
    }
    tensors_json[key] = {{"dtype", t.dtype}, {"shape", t.shape}, {"boxes", std::move(boxes)}};
  }
  j["tensors"] = std::move(tensors_json);
  return j.dump(1) + "\n";
}

absl::StatusOr<CheckpointIndex> CheckpointIndex::FromJson(absl::string_view text,
                                                          const std::string& path) {
  JsonParseOptions options;
  options.max_depth = kMaxIndexDepth;
  absl::StatusOr<Json> parsed = ParseJson(text, options);
  if (!parsed.ok()) {
    return Bad(path, absl::StrCat(parsed.status().message(),
                                  " (a truncated or damaged index: the checkpoint is unusable)"));
  }
  const Json& j = *parsed;
  Reader r(path);
  CheckpointIndex idx;
  LATTICE_ASSIGN_OR_RETURN(std::string format, r.String(j, "format", "the index"));
  if (format != kFormatName) {
    return Bad(path, absl::StrCat("format is '", format.substr(0, 60), "', not '", kFormatName,
                                  "'"));
  }
  LATTICE_ASSIGN_OR_RETURN(int64_t version, r.Int(j, "format_version", "the index", 0, 1 << 30));
  if (version != kCheckpointFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": checkpoint format_version ", version, "; this lattice reads version ",
        kCheckpointFormatVersion));
  }
  idx.format_version = static_cast<int>(version);
  LATTICE_ASSIGN_OR_RETURN(idx.iteration, r.Int(j, "iteration", "the index"));
  LATTICE_ASSIGN_OR_RETURN(idx.optimizer_step, r.Int(j, "optimizer_step", "the index"));
  LATTICE_ASSIGN_OR_RETURN(idx.skipped_iterations, r.Int(j, "skipped_iterations", "the index"));
  LATTICE_ASSIGN_OR_RETURN(idx.nan_iterations, r.Int(j, "nan_iterations", "the index"));
  LATTICE_ASSIGN_OR_RETURN(idx.seed, r.U64(j, "seed", "the index"));
  if (idx.optimizer_step > idx.iteration || idx.skipped_iterations > idx.iteration) {
    return Bad(path, absl::StrCat("optimizer_step ", idx.optimizer_step, " / skipped_iterations ",
                                  idx.skipped_iterations, " exceed iteration ", idx.iteration));
  }
  LATTICE_ASSIGN_OR_RETURN(const Json* layout, r.Field(j, "layout", "the index"));
  {
    CheckpointLayout& l = idx.layout;
    constexpr int64_t kMaxRanks = int64_t{1} << 24;  // far beyond any job; keeps products small
    LATTICE_ASSIGN_OR_RETURN(int64_t world, r.Int(*layout, "world", "layout", 1, kMaxRanks));
    LATTICE_ASSIGN_OR_RETURN(int64_t tp, r.Int(*layout, "tp", "layout", 1, kMaxRanks));
    LATTICE_ASSIGN_OR_RETURN(int64_t dp, r.Int(*layout, "dp", "layout", 1, kMaxRanks));
    LATTICE_ASSIGN_OR_RETURN(int64_t pp, r.Int(*layout, "pp", "layout", 1, kMaxRanks));
    LATTICE_ASSIGN_OR_RETURN(int64_t vpp, r.Int(*layout, "vpp", "layout", 1, kMaxRanks));
    LATTICE_ASSIGN_OR_RETURN(l.zero1, r.Bool(*layout, "zero1", "layout"));
    LATTICE_ASSIGN_OR_RETURN(l.sequence_parallel, r.Bool(*layout, "sequence_parallel", "layout"));
    LATTICE_ASSIGN_OR_RETURN(l.schedule, r.String(*layout, "schedule", "layout"));
    // Each factor is below 2^24, so tp * dp stays far inside int64; the product with pp may
    // not (2^72), and a product past kMaxRanks cannot be the world anyway.
    int64_t product = tp * dp;
    if (__builtin_mul_overflow(product, pp, &product) || product != world) {
      return Bad(path, absl::StrCat("layout tp*dp*pp = ", tp, "*", dp, "*", pp,
                                    " differs from world ", world));
    }
    l.world = static_cast<int>(world);
    l.tp = static_cast<int>(tp);
    l.dp = static_cast<int>(dp);
    l.pp = static_cast<int>(pp);
    l.vpp = static_cast<int>(vpp);
  }
  LATTICE_ASSIGN_OR_RETURN(const Json* data_state, r.Field(j, "data_state", "the index"));
  if (!data_state->is_null()) {
    if (!data_state->is_object()) return Bad(path, "data_state is neither an object nor null");
    idx.data_state = data_state->dump();
  }
  // Optional (fp16 runs only): the loss scaler's own JSON, checked by its loader on resume.
  if (auto scaler = j.find("loss_scaler"); scaler != j.end()) {
    if (!scaler->is_object()) return Bad(path, "loss_scaler is not an object");
    idx.loss_scaler = scaler->dump();
  }
  LATTICE_ASSIGN_OR_RETURN(idx.config_yaml, r.String(j, "config", "the index"));

  LATTICE_ASSIGN_OR_RETURN(const Json* files, r.Field(j, "files", "the index"));
  if (!files->is_array()) return Bad(path, "files is not an array");
  for (size_t i = 0; i < files->size(); ++i) {
    const std::string where = absl::StrCat("files[", i, "]");
    CheckpointFile f;
    LATTICE_ASSIGN_OR_RETURN(f.name, r.String((*files)[i], "name", where));
    LATTICE_ASSIGN_OR_RETURN(f.bytes, r.U64((*files)[i], "bytes", where));
    LATTICE_ASSIGN_OR_RETURN(int64_t rank, r.Int((*files)[i], "rank", where, 0, idx.layout.world - 1));
    f.rank = static_cast<int>(rank);
    idx.files.push_back(std::move(f));
  }

  LATTICE_ASSIGN_OR_RETURN(const Json* tensors, r.Field(j, "tensors", "the index"));
  if (!tensors->is_object()) return Bad(path, "tensors is not an object");
  for (auto it = tensors->begin(); it != tensors->end(); ++it) {
    const std::string where = absl::StrCat("tensor '", it.key().substr(0, 200), "'");
    CheckpointTensor t;
    LATTICE_ASSIGN_OR_RETURN(t.dtype, r.String(it.value(), "dtype", where));
    LATTICE_ASSIGN_OR_RETURN(t.shape, r.Dims(it.value(), "shape", where));
    LATTICE_ASSIGN_OR_RETURN(const Json* boxes, r.Field(it.value(), "boxes", where));
    if (!boxes->is_array()) return Bad(path, absl::StrCat(where, ": boxes is not an array"));
    for (size_t i = 0; i < boxes->size(); ++i) {
      const std::string bw = absl::StrCat(where, " box ", i);
      const Json& bj = (*boxes)[i];
      StoredBox b;
      LATTICE_ASSIGN_OR_RETURN(b.box.offset, r.Dims(bj, "offset", bw));
      LATTICE_ASSIGN_OR_RETURN(b.box.shape, r.Dims(bj, "shape", bw));
      LATTICE_ASSIGN_OR_RETURN(int64_t file, r.Int(bj, "file", bw, 0, std::numeric_limits<int>::max()));
      b.file = static_cast<int>(file);
      LATTICE_ASSIGN_OR_RETURN(b.name, r.String(bj, "name", bw));
      LATTICE_ASSIGN_OR_RETURN(b.byte_offset, r.U64(bj, "byte_offset", bw));
      LATTICE_ASSIGN_OR_RETURN(b.nbytes, r.U64(bj, "nbytes", bw));
      LATTICE_ASSIGN_OR_RETURN(std::string crc, r.String(bj, "crc32c", bw));
      uint32_t crc_value = 0;
      if (crc.size() != 8 || !absl::SimpleHexAtoi(crc, &crc_value)) {
        return Bad(path, absl::StrCat(bw, ": crc32c '", crc.substr(0, 20),
                                      "' is not 8 hex digits"));
      }
      b.crc32c = crc_value;
      t.boxes.push_back(std::move(b));
    }
    idx.tensors.emplace(it.key(), std::move(t));
  }
  LATTICE_RETURN_IF_ERROR(ValidateIndex(idx, path));
  return idx;
}

absl::Status ValidateIndex(const CheckpointIndex& index, const std::string& path) {
  std::set<std::string> file_names;
  for (const CheckpointFile& f : index.files) {
    if (!SafeFileName(f.name)) {
      return Bad(path, absl::StrCat("file name '", f.name.substr(0, 80),
                                    "' is not a plain name inside the checkpoint directory"));
    }
    if (!file_names.insert(f.name).second) {
      return Bad(path, absl::StrCat("file '", f.name, "' is listed twice"));
    }
  }
  std::vector<std::set<std::string>> names(index.files.size());
  for (const auto& [key, t] : index.tensors) {
    const std::string where = absl::StrCat("tensor '", key, "'");
    if (t.dtype != "F32") {
      return Bad(path, absl::StrCat(where, " has dtype ", t.dtype, "; lattice stores F32"));
    }
    const int64_t numel = CheckedNumel(t.shape);
    if (t.shape.empty() || numel < 0 || numel > kMaxTensorElements) {
      return Bad(path, absl::StrCat(where, " has shape ", ShapeToString(t.shape),
                                    " (empty or too large)"));
    }
    int64_t covered = 0;
    std::vector<const Box*> valid;  // the boxes checked so far
    for (size_t i = 0; i < t.boxes.size(); ++i) {
      const StoredBox& b = t.boxes[i];
      const std::string bw = absl::StrCat(where, " box ", i);
      if (b.box.offset.size() != t.shape.size() || b.box.shape.size() != t.shape.size()) {
        return Bad(path, absl::StrCat(bw, " has ", b.box.offset.size(), "/", b.box.shape.size(),
                                      " dims; the tensor has ", t.shape.size()));
      }
      for (size_t d = 0; d < t.shape.size(); ++d) {
        if (b.box.shape[d] < 1 || b.box.offset[d] > t.shape[d] - b.box.shape[d]) {
          return Bad(path, absl::StrCat(bw, " ", b.box.ToString(), " is empty or outside shape ",
                                        ShapeToString(t.shape)));
        }
      }
      const int64_t n = b.box.numel();
      if (b.nbytes != static_cast<uint64_t>(n) * 4) {
        return Bad(path, absl::StrCat(bw, " ", b.box.ToString(), " has ", b.nbytes,
                                      " bytes; its F32 shape needs ", n * 4));
      }
      if (b.file < 0 || static_cast<size_t>(b.file) >= index.files.size()) {
        return Bad(path, absl::StrCat(bw, " names file ", b.file, " of ", index.files.size()));
      }
      if (b.byte_offset > index.files[b.file].bytes ||
          b.nbytes > index.files[b.file].bytes - b.byte_offset) {
        return Bad(path, absl::StrCat(bw, " bytes [", b.byte_offset, ", ",
                                      b.byte_offset + b.nbytes, ") lie outside '",
                                      index.files[b.file].name, "' (", index.files[b.file].bytes,
                                      " bytes)"));
      }
      if (!names[b.file].insert(b.name).second) {
        return Bad(path, absl::StrCat(bw, ": safetensors name '", b.name, "' is used twice in '",
                                      index.files[b.file].name, "'"));
      }
      valid.push_back(&b.box);
      // n <= numel <= kMaxTensorElements and covered <= numel before the sum: no overflow.
      covered += n;
      // More elements than the tensor has: two of the boxes so far overlap (found below; the
      // boxes after them are not validated and never looked at).
      if (covered > numel) break;
    }
    // Exactly once: no two boxes overlap, and their volumes add up to the tensor.
    if (const auto [a, b] = FindOverlap(valid); a != nullptr) {
      return Bad(path, absl::StrCat(where, ": boxes ", a->ToString(), " and ", b->ToString(),
                                    " overlap"));
    }
    if (covered != numel) {
      return Bad(path, absl::StrCat(where, " of shape ", ShapeToString(t.shape), ": its ",
                                    t.boxes.size(), " boxes cover ", covered, " of ", numel,
                                    " elements (a shard is missing from the index)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CheckpointIndex> ReadCheckpointIndex(const std::string& dir) {
  const std::string path = (fs::path(dir) / kCheckpointIndexFile).string();
  absl::StatusOr<std::string> text = ReadSmallFile(path, kMaxIndexBytes);
  if (absl::IsNotFound(text.status())) {
    return absl::NotFoundError(absl::StrCat(
        dir, ": no ", kCheckpointIndexFile, " (not a committed checkpoint: a save that did not "
        "finish, or not a checkpoint directory)"));
  }
  if (!text.ok()) return text.status();
  return CheckpointIndex::FromJson(*text, path);
}

// ---- Discovery ------------------------------------------------------------------------------

bool IsCheckpointDirectory(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) &&
         fs::is_regular_file(fs::path(path) / kCheckpointIndexFile, ec);
}

absl::StatusOr<std::vector<CheckpointEntry>> ListCheckpoints(const std::string& root) {
  std::vector<CheckpointEntry> out;
  std::error_code ec;
  if (!fs::exists(root, ec)) return out;
  if (!fs::is_directory(root, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(root, ": not a directory"));
  }
  fs::directory_iterator it(root, ec), end;
  if (ec) return absl::PermissionDeniedError(absl::StrCat(root, ": ", ec.message()));
  for (; it != end; it.increment(ec)) {
    if (ec) return absl::PermissionDeniedError(absl::StrCat(root, ": ", ec.message()));
    int64_t iteration;
    const std::string name = it->path().filename().string();
    if (!ParseStepName(name, &iteration)) continue;
    if (!IsCheckpointDirectory(it->path().string())) continue;
    out.push_back({iteration, it->path().string()});
  }
  std::sort(out.begin(), out.end(), [](const CheckpointEntry& a, const CheckpointEntry& b) {
    return a.iteration < b.iteration;
  });
  return out;
}

absl::StatusOr<std::string> ResolveCheckpoint(const std::string& path) {
  if (IsCheckpointDirectory(path)) return path;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such checkpoint directory"));
  }
  LATTICE_ASSIGN_OR_RETURN(std::vector<CheckpointEntry> all, ListCheckpoints(path));
  if (all.empty()) {
    return absl::NotFoundError(absl::StrCat(
        path, ": neither a checkpoint (no ", kCheckpointIndexFile,
        ") nor a checkpoint directory holding a committed step_* checkpoint"));
  }
  return all.back().path;
}

absl::StatusOr<std::vector<std::string>> RemoveCheckpointLeftovers(const std::string& root) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return removed;
  std::vector<fs::path> doomed;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    // Save directories in progress, and the temporaries OutputFile makes for `latest`
    // ("latest.tmp.<pid>.<n>.<nonce>", runtime/io/output_file.h).
    if (absl::StartsWith(name, kCheckpointTempPrefix) ||
        absl::StartsWith(name, absl::StrCat(kCheckpointLatestFile, ".tmp."))) {
      doomed.push_back(it->path());
    }
  }
  if (ec) return absl::PermissionDeniedError(absl::StrCat(root, ": ", ec.message()));
  for (const fs::path& p : doomed) {
    fs::remove_all(p, ec);
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat(p.string(), ": cannot remove a failed save's leftovers: ", ec.message()));
    }
    removed.push_back(p.filename().string());
  }
  std::sort(removed.begin(), removed.end());
  return removed;
}

// ---- Shard files ----------------------------------------------------------------------------

absl::StatusOr<ShardPlan> PlanShard(const std::vector<ShardTensor>& tensors,
                                    const std::map<std::string, std::string>& metadata) {
  // The same header WriteSafetensors writes (runtime/io/safetensors.h): __metadata__ first,
  // then the tensors in file order, padded with spaces to 8 bytes.
  OrderedJson header = OrderedJson::object();
  OrderedJson meta = OrderedJson::object();
  if (metadata.count("format") == 0) meta["format"] = "pt";
  for (const auto& [k, v] : metadata) meta[k] = v;
  header["__metadata__"] = std::move(meta);
  uint64_t offset = 0;
  std::vector<uint64_t> relative;
  std::set<std::string> seen;
  for (const ShardTensor& t : tensors) {
    if (!seen.insert(t.name).second) {
      return absl::InternalError(absl::StrCat("shard tensor '", t.name, "' is given twice"));
    }
    if (t.nbytes != static_cast<uint64_t>(NumElements(t.shape)) * 4) {
      return absl::InternalError(absl::StrCat("shard tensor '", t.name, "': ", t.nbytes,
                                              " bytes for shape ", ShapeToString(t.shape)));
    }
    header[t.name] = {{"dtype", "F32"},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes}}};
    relative.push_back(offset);
    offset += t.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  ShardPlan plan;
  const uint64_t n = text.size();
  plan.header.assign(reinterpret_cast<const char*>(&n), 8);
  plan.header += text;
  for (uint64_t r : relative) plan.offsets.push_back(plan.header.size() + r);
  plan.file_bytes = plan.header.size() + offset;
  return plan;
}

namespace {

// Walks the file bytes [begin, end) of a planned shard in order: extends the CRC of every
// tensor they cover (*cursor: the first tensor not yet finished) and, when `dst` is given,
// copies the bytes (header included) there. The CRC runs on 256 KiB pieces just before their
// copy, so the copy reads them from the cache.
void WalkShardBytes(const ShardPlan& plan, const std::vector<ShardTensor>& tensors,
                    uint64_t begin, uint64_t end, uint8_t* dst, std::vector<uint32_t>* crcs,
                    size_t* cursor) {
  constexpr uint64_t kPiece = uint64_t{256} << 10;
  uint64_t at = begin;
  if (at < plan.header.size()) {
    const uint64_t n = std::min<uint64_t>(end, plan.header.size()) - at;
    if (dst != nullptr) std::memcpy(dst, plan.header.data() + at, n);
    at += n;
  }
  while (at < end && *cursor < tensors.size()) {
    const ShardTensor& t = tensors[*cursor];
    const uint64_t t_begin = plan.offsets[*cursor], t_end = t_begin + t.nbytes;
    const uint64_t stop = std::min(end, t_end);
    const uint8_t* src = static_cast<const uint8_t*>(t.data);
    for (uint64_t p = at; p < stop; p += kPiece) {
      const uint64_t n = std::min(kPiece, stop - p);
      (*crcs)[*cursor] = Crc32cExtend((*crcs)[*cursor], src + (p - t_begin), n);
      if (dst != nullptr) std::memcpy(dst + (p - begin), src + (p - t_begin), n);
    }
    at = stop;
    if (at == t_end) ++*cursor;
  }
}

}  // namespace

void AlignedHostBuffer::Free::operator()(uint8_t* p) const { std::free(p); }

absl::StatusOr<AlignedHostBuffer> AlignedHostBuffer::Allocate(uint64_t bytes) {
  constexpr uint64_t kAlign = OutputFile::kDirectAlignment;
  const uint64_t rounded = std::max<uint64_t>((bytes + kAlign - 1) / kAlign * kAlign, kAlign);
  void* p = std::aligned_alloc(kAlign, rounded);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate ", rounded, " bytes of host memory for the checkpoint copy"));
  }
  // Touch every page now: the copy at the step boundary then only copies.
  std::memset(p, 0, rounded);
  AlignedHostBuffer b;
  b.data_.reset(static_cast<uint8_t*>(p));
  b.size_ = rounded;
  return b;
}

void CopyShardImage(const ShardPlan& plan, std::vector<ShardTensor>* tensors, uint8_t* image) {
  std::memcpy(image, plan.header.data(), plan.header.size());
  for (size_t i = 0; i < tensors->size(); ++i) {
    ShardTensor& t = (*tensors)[i];
    std::memcpy(image + plan.offsets[i], t.data, t.nbytes);
    t.data = image + plan.offsets[i];
  }
}

absl::StatusOr<std::vector<uint32_t>> WriteShard(const std::string& path, const ShardPlan& plan,
                                                 const std::vector<ShardTensor>& tensors,
                                                 const ShardWriteOptions& options) {
  if (plan.offsets.size() != tensors.size()) {
    return absl::InternalError(absl::StrCat(path, ": the shard plan has ", plan.offsets.size(),
                                            " tensors, ", tensors.size(), " were given"));
  }
  if (options.image != nullptr) {
    bool laid_out = std::memcmp(options.image, plan.header.data(), plan.header.size()) == 0;
    for (size_t i = 0; i < tensors.size() && laid_out; ++i) {
      laid_out = tensors[i].data == options.image + plan.offsets[i];
    }
    if (!laid_out) {
      return absl::InternalError(absl::StrCat(path, ": the shard image is not the planned file"));
    }
  }
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<OutputFile> out, OutputFile::Create(path));
  if (options.direct_io) (void)out->EnableDirectIO();
  // Staging (no image): two aligned buffers, one filled while the other is being written.
  std::vector<AlignedHostBuffer> stage;
  if (options.image == nullptr) {
    const uint64_t n = std::min<uint64_t>(kWriteChunk, plan.file_bytes);
    for (int k = 0; k < 2 && n > 0; ++k) {
      LATTICE_ASSIGN_OR_RETURN(AlignedHostBuffer b, AlignedHostBuffer::Allocate(n));
      stage.push_back(std::move(b));
    }
  }
  std::vector<uint32_t> crcs(tensors.size(), 0);
  size_t cursor = 0;
  // The write of the previous piece runs while this one is prepared; the write of the piece
  // before it has finished (its buffer is the one being refilled).
  std::future<absl::Status> in_flight;
  uint64_t k = 0;
  for (uint64_t at = 0; at < plan.file_bytes; at += kWriteChunk, ++k) {
    const uint64_t n = std::min(kWriteChunk, plan.file_bytes - at);
    uint8_t* dst = options.image == nullptr ? stage[k % 2].data() : nullptr;
    WalkShardBytes(plan, tensors, at, at + n, dst, &crcs, &cursor);
    const uint8_t* piece = dst != nullptr ? dst : options.image + at;
    if (in_flight.valid()) {
      LATTICE_RETURN_IF_ERROR(in_flight.get());
      if (options.progress) options.progress(at, plan.file_bytes);
    }
    in_flight = std::async(std::launch::async, [&out, piece, n] { return out->Write(piece, n); });
  }
  if (in_flight.valid()) LATTICE_RETURN_IF_ERROR(in_flight.get());
  if (options.progress) options.progress(plan.file_bytes, plan.file_bytes);
  LATTICE_RETURN_IF_ERROR(out->Commit());
  return crcs;
}

// ---- Reading --------------------------------------------------------------------------------

CheckpointReader::CheckpointReader(std::string dir, CheckpointIndex index)
    : dir_(std::move(dir)),
      index_(std::move(index)),
      files_(index_.files.size()),
      fds_(index_.files.size(), -1),
      direct_fds_(index_.files.size(), -1) {
  for (const auto& [key, t] : index_.tensors) verified_[key].assign(t.boxes.size(), false);
}

CheckpointReader::~CheckpointReader() {
  for (int fd : fds_) {
    if (fd >= 0) ::close(fd);
  }
  for (int fd : direct_fds_) {
    if (fd >= 0) ::close(fd);
  }
}

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& dir) {
  LATTICE_ASSIGN_OR_RETURN(CheckpointIndex index, ReadCheckpointIndex(dir));
  return std::make_unique<CheckpointReader>(dir, std::move(index));
}

int CheckpointReader::files_opened() const {
  int n = 0;
  for (const auto& f : files_) n += f != nullptr ? 1 : 0;
  return n;
}

absl::StatusOr<SafetensorsFile*> CheckpointReader::File(int f) {
  if (files_[f] != nullptr) return files_[f].get();
  const CheckpointFile& entry = index_.files[f];
  const std::string path = (fs::path(dir_) / entry.name).string();
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::DataLossError(absl::StrCat(path, ": missing shard (", std::strerror(errno),
                                            "); the index lists it"));
  }
  const bool size_ok = static_cast<uint64_t>(st.st_size) == entry.bytes;
  const absl::Status size_error = absl::DataLossError(
      absl::StrCat(path, ": the shard is ", st.st_size, " bytes; the index says ", entry.bytes,
                   " (truncated or replaced)"));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> opened = SafetensorsFile::Open(path);
  if (!opened.ok()) return size_ok ? opened.status() : size_error;
  std::unique_ptr<SafetensorsFile> file = std::move(opened).value();
  // Every box the index places in this file is there, as the index says, and nothing else is.
  // (Checked before the size: a whole shard under an index of other files is named by tensor.)
  size_t listed = 0;
  for (const auto& [key, t] : index_.tensors) {
    for (const StoredBox& b : t.boxes) {
      if (b.file != f) continue;
      ++listed;
      const std::string what =
          absl::StrCat(path, ": tensor '", key, "' box ", b.box.ToString(), " ('", b.name, "')");
      absl::StatusOr<SafetensorsTensorInfo> info = file->Info(b.name);
      if (!info.ok()) {
        return absl::DataLossError(absl::StrCat(what, ": not in the shard; the index does not "
                                                      "belong to these files"));
      }
      if (info->dtype_name != "F32" || info->shape != b.box.shape ||
          file->buffer_offset() + info->begin != b.byte_offset) {
        return absl::DataLossError(absl::StrCat(
            what, ": the shard holds ", info->dtype_name, " ", ShapeToString(info->shape),
            " at byte ", file->buffer_offset() + info->begin, ", the index says F32 ",
            ShapeToString(b.box.shape), " at byte ", b.byte_offset,
            " (an index from another checkpoint or model?)"));
      }
    }
  }
  if (listed != file->names().size()) {
    return absl::DataLossError(absl::StrCat(path, ": the shard holds ", file->names().size(),
                                            " tensors, the index lists ", listed));
  }
  if (!size_ok) return size_error;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::DataLossError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  // Without direct I/O every box comes through the page cache, in file order (ReadState), and
  // a doubled readahead window pays (cold resume of the checkpoint benchmark, 2026-12-02: 1.33-
  // 1.46 s with it, 1.75-1.93 s without). With direct I/O the page cache serves only the
  // shared boxes, and the doubled window reads further into the direct ones for nothing
  // (1684 MB from the disk for a 1485 MB checkpoint with it, 1571 MB without). Advice only:
  // its failure changes nothing.
  if (!direct_io_) (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  fds_[f] = fd;
  files_[f] = std::move(file);
  return files_[f].get();
}

absl::StatusOr<const float*> CheckpointReader::Box(const std::string& key, size_t i) {
  auto it = index_.tensors.find(key);
  if (it == index_.tensors.end() || i >= it->second.boxes.size()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": no box ", i, " of tensor '", key, "'"));
  }
  const StoredBox& b = it->second.boxes[i];
  LATTICE_ASSIGN_OR_RETURN(SafetensorsFile * file, File(b.file));
  LATTICE_ASSIGN_OR_RETURN(auto bytes, file->RawBytes(b.name));
  if (reinterpret_cast<uintptr_t>(bytes.first) % alignof(float) != 0) {
    return absl::DataLossError(absl::StrCat(file->path(), ": tensor '", key, "' box ",
                                            b.box.ToString(), " is not 4-byte aligned"));
  }
  std::vector<bool>& verified = verified_[key];
  if (!verified[i]) {
    bytes_read_ += bytes.second;
    LATTICE_RETURN_IF_ERROR(CheckCrc(file->path(), key, b, Crc32c(bytes.first, bytes.second)));
    verified[i] = true;
  }
  return reinterpret_cast<const float*>(bytes.first);
}

absl::Status CheckpointReader::Read(const std::string& key, size_t i, float* dst) {
  auto it = index_.tensors.find(key);
  if (it == index_.tensors.end() || i >= it->second.boxes.size()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": no box ", i, " of tensor '", key, "'"));
  }
  const StoredBox& b = it->second.boxes[i];
  LATTICE_ASSIGN_OR_RETURN(SafetensorsFile * file, File(b.file));
  uint8_t* out = reinterpret_cast<uint8_t*>(dst);
  for (uint64_t done = 0; done < b.nbytes;) {
    const ssize_t n = ::pread(fds_[b.file], out + done, b.nbytes - done,
                              static_cast<off_t>(b.byte_offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::DataLossError(absl::StrCat(
          file->path(), ": tensor '", key, "' box ", b.box.ToString(), ": read failed at byte ",
          b.byte_offset + done, n < 0 ? absl::StrCat(": ", std::strerror(errno)) : " (end of file)"));
    }
    done += static_cast<uint64_t>(n);
  }
  bytes_read_ += b.nbytes;
  LATTICE_RETURN_IF_ERROR(CheckCrc(file->path(), key, b, Crc32c(dst, b.nbytes)));
  verified_[key][i] = true;
  return absl::OkStatus();
}

absl::Status CheckpointReader::ReadRun(absl::Span<const BoxRead> run) {
  if (run.empty()) return absl::OkStatus();
  std::vector<const StoredBox*> stored;
  stored.reserve(run.size());
  for (const BoxRead& r : run) {
    auto it = index_.tensors.find(*r.key);
    if (it == index_.tensors.end() || r.box >= it->second.boxes.size()) {
      return absl::NotFoundError(
          absl::StrCat(dir_, ": no box ", r.box, " of tensor '", *r.key, "'"));
    }
    const StoredBox* b = &it->second.boxes[r.box];
    if (!stored.empty() && (b->file != stored[0]->file ||
                            b->byte_offset < stored.back()->byte_offset + stored.back()->nbytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir_, ": ReadRun: tensor '", *r.key, "' box ", r.box,
          " is not in the run's file after the box before it"));
    }
    stored.push_back(b);
  }
  const int f = stored[0]->file;
  const uint64_t begin = stored.front()->byte_offset;
  const uint64_t end = stored.back()->byte_offset + stored.back()->nbytes;
  if (run.size() > 1 && end - begin > kRunBytes) {
    return absl::InvalidArgumentError(absl::StrCat(dir_, ": ReadRun: ", run.size(),
                                                   " boxes span ", end - begin, " bytes, over ",
                                                   kRunBytes));
  }
  LATTICE_ASSIGN_OR_RETURN(SafetensorsFile * file, File(f));
  constexpr uint64_t kAlign = OutputFile::kDirectAlignment;
  if (staging_.data() == nullptr) {
    // Room for a window of kRunBytes that starts and ends inside a block.
    LATTICE_ASSIGN_OR_RETURN(staging_, AlignedHostBuffer::Allocate(kRunBytes + 2 * kAlign));
  }
  if (direct_io_ && direct_fds_[f] == -1) {
    const int fd = ::open(file->path().c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    direct_fds_[f] = fd >= 0 ? fd : -2;  // refused (tmpfs, some FUSE mounts): buffered
  }
  std::vector<uint32_t> crc(run.size(), 0);
  size_t first = 0;  // the first box not yet wholly copied
  for (uint64_t w0 = begin; w0 < end;) {
    const uint64_t w1 = std::min(end, w0 + kRunBytes);
    // The window's bytes land at staging_ + (w0 - a).
    bool direct = direct_io_ && direct_fds_[f] >= 0;
    uint64_t a = direct ? w0 / kAlign * kAlign : w0;
    uint64_t b = direct ? (w1 + kAlign - 1) / kAlign * kAlign : w1;
    for (uint64_t done = 0; a + done < w1;) {
      const int fd = direct ? direct_fds_[f] : fds_[f];
      const ssize_t n = ::pread(fd, staging_.data() + done, b - a - done,
                                static_cast<off_t>(a + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EINVAL && direct) {
        // The filesystem took the open but not the read: this file goes buffered.
        ::close(direct_fds_[f]);
        direct_fds_[f] = -2;
        direct = false;
        a = w0;
        b = w1;
        done = 0;
        continue;
      }
      if (n <= 0) {
        return absl::DataLossError(absl::StrCat(
            file->path(), ": read failed at byte ", a + done, " (the boxes from byte ", begin,
            " to ", end, ")",
            n < 0 ? absl::StrCat(": ", std::strerror(errno)) : absl::string_view(" (end of file)")));
      }
      done += static_cast<uint64_t>(n);
    }
    const uint8_t* window = staging_.data() + (w0 - a);
    for (size_t k = first; k < run.size(); ++k) {
      const uint64_t b0 = std::max(stored[k]->byte_offset, w0);
      const uint64_t b1 = std::min(stored[k]->byte_offset + stored[k]->nbytes, w1);
      if (b0 >= b1) {
        if (stored[k]->byte_offset >= w1) break;
        continue;  // a box of no bytes, or one that ended in an earlier window
      }
      const uint8_t* src = window + (b0 - w0);
      std::memcpy(reinterpret_cast<uint8_t*>(run[k].dst) + (b0 - stored[k]->byte_offset), src,
                  b1 - b0);
      crc[k] = Crc32cExtend(crc[k], src, b1 - b0);
      if (b1 == stored[k]->byte_offset + stored[k]->nbytes && k == first) ++first;
    }
    w0 = w1;
  }
  for (size_t k = 0; k < run.size(); ++k) {
    const StoredBox& b = *stored[k];
    LATTICE_RETURN_IF_ERROR(CheckCrc(file->path(), *run[k].key, b, crc[k]));
    bytes_read_ += b.nbytes;
    run_bytes_read_ += b.nbytes;
    verified_[*run[k].key][run[k].box] = true;
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::VerifyAll() {
  for (size_t f = 0; f < index_.files.size(); ++f) {
    LATTICE_RETURN_IF_ERROR(File(static_cast<int>(f)).status());
  }
  for (const auto& [key, t] : index_.tensors) {
    for (size_t i = 0; i < t.boxes.size(); ++i) LATTICE_RETURN_IF_ERROR(Box(key, i).status());
  }
  return absl::OkStatus();
}

}  // namespace lattice
