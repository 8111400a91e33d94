#include "runtime/io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/io/json_limits.h"
#include "runtime/io/output_file.h"
#include "runtime/status.h"

namespace lattice {

static_assert(std::endian::native == std::endian::little,
              "safetensors is little-endian and lattice reads it in place");

namespace {

using Json = nlohmann::json;

// A header this large is a corrupt length field, not a real file (Hugging Face's own reader
// has the same limit).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// A valid header nests three deep ({ name: { shape: [ ... ] } }); the limit leaves room for
// metadata-like extensions while keeping a hostile `[[[[...` from costing memory. Stricter than
// the default of runtime/io/json_limits.h, which has to fit tokenizer.json.
constexpr int kMaxJsonDepth = 16;

struct DTypeEntry {
  const char* name;
  size_t size;
  bool supported;
  DType dtype;
};

// Every dtype the format defines; lattice holds the supported ones.
constexpr DTypeEntry kDTypes[] = {
    {"F32", 4, true, DType::kF32},       {"BF16", 2, true, DType::kBF16},
    {"F16", 2, true, DType::kF16},       {"I32", 4, true, DType::kI32},
    {"U16", 2, true, DType::kU16},       {"U32", 4, true, DType::kU32},
    {"F64", 8, false, DType::kF32},      {"I64", 8, false, DType::kF32},
    {"U64", 8, false, DType::kF32},      {"I16", 2, false, DType::kF32},
    {"I8", 1, false, DType::kF32},       {"U8", 1, false, DType::kF32},
    {"BOOL", 1, false, DType::kF32},     {"F8_E4M3", 1, false, DType::kF32},
    {"F8_E5M2", 1, false, DType::kF32},
};

const DTypeEntry* FindDType(const std::string& name) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) return &e;
  }
  return nullptr;
}

bool IsFloat(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

absl::Status Corrupt(const std::string& path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(path, ": not a valid safetensors file: ", what));
}

// Names and strings from the header, cut for messages (a header may hold a 100 MB name).
std::string Clip(absl::string_view s) {
  constexpr size_t kMaxChars = 120;
  if (s.size() <= kMaxChars) return std::string(s);
  size_t cut = kMaxChars - 3;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return absl::StrCat(s.substr(0, cut), "...");
}

absl::Status CorruptTensor(const std::string& path, const std::string& name,
                           absl::string_view what) {
  return absl::DataLossError(
      absl::StrCat(path, ": not a valid safetensors file: tensor '", Clip(name), "': ", what));
}

// The header as a JSON object. Besides what ParseJson rejects everywhere (nesting, duplicate
// keys in any object, NUL bytes), the format allows padding after the object with spaces only
// (the reference reader accepts trailing whitespace and rejects a NUL with junk after it).
absl::StatusOr<Json> ParseHeader(const std::string& path, const char* p, size_t n) {
  if (const void* nul = std::memchr(p, '\0', n); nul != nullptr) {
    return Corrupt(path, absl::StrCat("the ", n, "-byte header has a NUL byte at offset ",
                                      static_cast<const char*>(nul) - p,
                                      " (after the JSON only spaces may pad it)"));
  }
  JsonParseOptions options;
  options.max_depth = kMaxJsonDepth;
  absl::StatusOr<Json> header = ParseJson(absl::string_view(p, n), options);
  if (!header.ok()) return Corrupt(path, absl::StrCat("header: ", header.status().message()));
  return header;
}

// The byte count of `numel` elements of `item_size` bytes, if the shape's product fits int64
// and so does the byte count (dims are already known to be non-negative int64 values).
bool ShapeBytes(const Shape& shape, size_t item_size, uint64_t* nbytes) {
  const absl::StatusOr<int64_t> numel = CheckedNumElements(shape);
  int64_t bytes;
  if (!numel.ok() || __builtin_mul_overflow(*numel, static_cast<int64_t>(item_size), &bytes)) {
    return false;
  }
  *nbytes = static_cast<uint64_t>(bytes);
  return true;
}

absl::StatusOr<SafetensorsTensorInfo> ParseEntry(const std::string& path, const std::string& name,
                                                 const Json& entry, uint64_t buffer_size) {
  if (!entry.is_object()) {
    return CorruptTensor(path, name, absl::StrCat("entry is a JSON ", entry.type_name(),
                                                  ", expected an object"));
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) {
      return CorruptTensor(path, name, absl::StrCat("entry has no \"", field, "\""));
    }
  }
  SafetensorsTensorInfo info;
  const Json& dtype = entry["dtype"];
  if (!dtype.is_string()) return CorruptTensor(path, name, "\"dtype\" is not a string");
  info.dtype_name = dtype.get<std::string>();
  const DTypeEntry* dt = FindDType(info.dtype_name);
  if (dt == nullptr) {
    return CorruptTensor(path, name, absl::StrCat("unknown dtype '", Clip(info.dtype_name), "'"));
  }
  info.supported = dt->supported;
  info.dtype = dt->dtype;

  const Json& shape = entry["shape"];
  if (!shape.is_array()) return CorruptTensor(path, name, "\"shape\" is not an array");
  for (const Json& d : shape) {
    if (!d.is_number_unsigned() ||
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return CorruptTensor(path, name, absl::StrCat("shape ", JsonSnippet(shape),
                                                    " has a dim that is not a non-negative "
                                                    "integer"));
    }
    info.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }
  uint64_t nbytes = 0;
  if (!ShapeBytes(info.shape, dt->size, &nbytes)) {
    return CorruptTensor(path, name,
                         absl::StrCat("shape ", JsonSnippet(shape), " is too large (its ",
                                      info.dtype_name, " bytes overflow int64)"));
  }

  const Json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    return CorruptTensor(path, name,
                         absl::StrCat("\"data_offsets\" ", JsonSnippet(offsets),
                                      " is not a pair of non-negative integers [begin, end]"));
  }
  info.begin = offsets[0].get<uint64_t>();
  info.end = offsets[1].get<uint64_t>();
  if (info.begin > info.end || info.end > buffer_size) {
    return CorruptTensor(path, name,
                         absl::StrCat("data_offsets [", info.begin, ", ", info.end,
                                      "] do not lie within the ", buffer_size, "-byte buffer"));
  }
  if (info.end - info.begin != nbytes) {
    return CorruptTensor(path, name,
                         absl::StrCat("shape ", ShapeToString(info.shape), " x ", info.dtype_name,
                                      " needs ", nbytes, " bytes but data_offsets [", info.begin,
                                      ", ", info.end, "] span ", info.end - info.begin));
  }
  return info;
}

// Storage over bytes of the read-only mapping, for converting without an intermediate copy.
// Only ever used as a conversion source, never written through.
class BorrowedBytes final : public Storage {
 public:
  BorrowedBytes(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  void* data() override { return const_cast<uint8_t*>(p_); }
  size_t bytes() const override { return n_; }
  Device device() const override { return Device::Cpu(); }

 private:
  const uint8_t* p_;
  size_t n_;
};

}  // namespace

// ---- Reader -------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  const uint64_t size = file->size();
  if (size < 8) {
    return Corrupt(path, absl::StrCat("the file is ", size,
                                      " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_len;
  std::memcpy(&header_len, file->data(), 8);
  if (header_len > kMaxHeaderBytes) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " is absurd (more than ",
                                      kMaxHeaderBytes, " bytes)"));
  }
  if (header_len > size - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " exceeds the ", size - 8,
                                      " bytes after the length field (truncated file?)"));
  }
  const char* header_bytes = reinterpret_cast<const char*>(file->data() + 8);
  if (header_len < 2 || header_bytes[0] != '{') {
    return Corrupt(path, "the header does not start with '{'");
  }
  LATTICE_ASSIGN_OR_RETURN(Json header, ParseHeader(path, header_bytes, header_len));
  if (!header.is_object()) return Corrupt(path, "the header is not a JSON object");

  std::unique_ptr<SafetensorsFile> st(new SafetensorsFile());
  st->path_ = path;
  const uint64_t buffer_size = size - 8 - header_len;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it.value().is_null()) continue;
      if (!it.value().is_object()) return Corrupt(path, "__metadata__ is not a JSON object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) {
          return Corrupt(path, absl::StrCat("__metadata__ must map strings to strings; '",
                                            Clip(m.key()), "' is a ", m.value().type_name()));
        }
        st->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    LATTICE_ASSIGN_OR_RETURN(SafetensorsTensorInfo info,
                             ParseEntry(path, it.key(), it.value(), buffer_size));
    st->infos_.emplace(it.key(), std::move(info));
  }

  // The tensors must tile the buffer exactly: no overlaps (two tensors sharing bytes), no holes
  // and nothing after the last tensor (bytes no reader can account for).
  std::vector<std::pair<const std::string*, const SafetensorsTensorInfo*>> order;
  for (const auto& [name, info] : st->infos_) order.emplace_back(&name, &info);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::tie(a.second->begin, a.second->end, *a.first) <
           std::tie(b.second->begin, b.second->end, *b.first);
  });
  uint64_t cursor = 0;
  const std::string* previous = nullptr;
  for (const auto& [name, info] : order) {
    if (info->begin < cursor) {
      return CorruptTensor(path, *name,
                           absl::StrCat("data_offsets [", info->begin, ", ", info->end,
                                        "] overlap tensor '", Clip(*previous), "' (which ends at ",
                                        cursor, ")"));
    }
    if (info->begin > cursor) {
      return CorruptTensor(path, *name,
                           absl::StrCat("data_offsets [", info->begin, ", ", info->end,
                                        "] leave a hole of ", info->begin - cursor,
                                        " bytes at buffer offset ", cursor));
    }
    cursor = info->end;
    previous = name;
    st->names_.push_back(*name);
  }
  if (cursor != buffer_size) {
    return Corrupt(path, absl::StrCat("the tensors cover ", cursor, " bytes of the ", buffer_size,
                                      "-byte buffer; the rest belongs to no tensor"));
  }
  st->buffer_ = file->data() + 8 + header_len;
  st->buffer_offset_ = 8 + header_len;
  st->file_ = std::move(file);
  return st;
}

absl::StatusOr<const SafetensorsTensorInfo*> SafetensorsFile::Find(const std::string& name) const {
  auto it = infos_.find(name);
  if (it == infos_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor named '", Clip(name), "' (the file has ",
                                            infos_.size(), " tensors)"));
  }
  return &it->second;
}

absl::StatusOr<const SafetensorsTensorInfo*> SafetensorsFile::FindSupported(
    const std::string& name) const {
  LATTICE_ASSIGN_OR_RETURN(const SafetensorsTensorInfo* info, Find(name));
  if (!info->supported) {
    return absl::UnimplementedError(
        absl::StrCat(path_, ": tensor '", Clip(name), "' has unsupported dtype ", info->dtype_name,
                     " (lattice reads F32, BF16, F16, I32, U16 and U32)"));
  }
  return info;
}

absl::StatusOr<SafetensorsTensorInfo> SafetensorsFile::Info(const std::string& name) const {
  LATTICE_ASSIGN_OR_RETURN(const SafetensorsTensorInfo* info, Find(name));
  return *info;
}

absl::StatusOr<Tensor> SafetensorsFile::Read(const std::string& name) const {
  LATTICE_ASSIGN_OR_RETURN(const SafetensorsTensorInfo* info, FindSupported(name));
  Tensor t = Tensor::Zeros(info->shape, info->dtype);
  if (info->end > info->begin) std::memcpy(t.raw(), Bytes(*info), info->end - info->begin);
  return t;
}

absl::StatusOr<std::pair<const uint8_t*, uint64_t>> SafetensorsFile::RawBytes(
    const std::string& name) const {
  LATTICE_ASSIGN_OR_RETURN(const SafetensorsTensorInfo* info, Find(name));
  return std::make_pair(Bytes(*info), info->end - info->begin);
}

absl::Status SafetensorsFile::ReadInto(const std::string& name, const Tensor& dst) const {
  LATTICE_ASSIGN_OR_RETURN(const SafetensorsTensorInfo* info, FindSupported(name));
  if (!dst.defined() || dst.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor '", Clip(name),
                     "': the destination must be an allocated CPU tensor (copy to the device "
                     "afterwards), got ",
                     dst.defined() ? dst.DebugString() : "an undefined tensor"));
  }
  if (dst.shape() != info->shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": tensor '", Clip(name), "' has shape ", ShapeToString(info->shape),
        " but the destination has shape ", ShapeToString(dst.shape())));
  }
  const size_t n = info->end - info->begin;
  if (dst.dtype() == info->dtype) {
    if (n > 0) std::memcpy(dst.raw(), Bytes(*info), n);
    return absl::OkStatus();
  }
  if (IsFloat(dst.dtype()) != IsFloat(info->dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor '", Clip(name), "' is ", info->dtype_name,
                     "; reading it into a ", DTypeName(dst.dtype()),
                     " tensor would mix integers and floats"));
  }
  // The buffer is only as aligned as the header length makes it; ConvertInto reads typed
  // elements, so an unaligned tensor goes through an aligned copy first.
  const uint8_t* src = Bytes(*info);
  Tensor source;
  if (reinterpret_cast<uintptr_t>(src) % DTypeSize(info->dtype) == 0) {
    source = Tensor(std::make_shared<BorrowedBytes>(src, n), 0, info->shape, info->dtype);
  } else {
    LATTICE_ASSIGN_OR_RETURN(source, Read(name));
  }
  return Annotate(ConvertInto(source, dst), absl::StrCat(path_, ": tensor '", name, "'"));
}

// ---- Writer -------------------------------------------------------------------------------

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  if (metadata.count("format") == 0) meta["format"] = "pt";
  for (const auto& [k, v] : metadata) meta[k] = v;
  header["__metadata__"] = std::move(meta);

  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": '__metadata__' is reserved and cannot name a tensor"));
    }
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor name '", name, "' is given twice"));
    }
    if (!t.defined() || t.device().type != DeviceType::kCpu) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", name, "' must be an allocated CPU tensor, got ",
          t.defined() ? t.DebugString() : "an undefined tensor"));
    }
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = std::string(DTypeSafetensorsName(t.dtype()));
    entry["shape"] = t.shape();
    entry["data_offsets"] = {offset, offset + t.nbytes()};
    header[name] = std::move(entry);
    offset += t.nbytes();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    // Names and metadata must be valid UTF-8 to be JSON strings.
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot encode the header: ", e.what()));
  }
  // Pad with spaces so that the buffer starts 8-byte aligned (the length field is 8 bytes).
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  // runtime/io/output_file.h: a fresh temporary (never a planted link), renamed over `path` only
  // once complete; a device or FIFO target is written in place. On any error the temporary is
  // removed when `out` goes away and the old file is untouched.
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<OutputFile> out, OutputFile::Create(path));
  LATTICE_RETURN_IF_ERROR(out->Write(&header_len, 8));
  LATTICE_RETURN_IF_ERROR(out->Write(text));
  for (const auto& [name, t] : tensors) {
    if (t.nbytes() > 0) LATTICE_RETURN_IF_ERROR(out->Write(t.raw(), t.nbytes()));
  }
  return out->Commit();
}

}  // namespace lattice
