#include "runtime/io/json_limits.h"

#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lattice {
namespace {

using Json = nlohmann::json;

// A path longer than this in a message is cut: it only has to point a reader at the place.
constexpr size_t kMaxPathChars = 200;
// nlohmann's own message is cut to this: its position and reason fit in ~150 characters.
constexpr size_t kMaxParseErrorChars = 300;

bool IsPlainKey(const std::string& k) {
  if (k.empty()) return false;
  for (char c : k) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// nlohmann's SAX interface, building the same DOM as its own parser while counting depth and
// checking keys. Containers are reached through pointers into their parents, which stay valid
// because a parent never grows while one of its children is open.
class BoundedDomBuilder {
 public:
  BoundedDomBuilder(Json* root, const JsonParseOptions& options)
      : root_(root), options_(options) {}

  bool null() { return Put(Json(nullptr)) != nullptr; }
  bool boolean(bool v) { return Put(Json(v)) != nullptr; }
  bool number_integer(Json::number_integer_t v) { return Put(Json(v)) != nullptr; }
  bool number_unsigned(Json::number_unsigned_t v) { return Put(Json(v)) != nullptr; }
  bool number_float(Json::number_float_t v, const Json::string_t& /*text*/) {
    return Put(Json(v)) != nullptr;
  }
  bool string(Json::string_t& v) { return Put(Json(std::move(v))) != nullptr; }
  bool binary(Json::binary_t& v) { return Put(Json(std::move(v))) != nullptr; }

  bool start_object(std::size_t /*elements*/) { return Open(Json::object()); }
  bool start_array(std::size_t /*elements*/) { return Open(Json::array()); }
  bool end_object() { return Close(); }
  bool end_array() { return Close(); }

  bool key(Json::string_t& k) {
    Json::object_t& obj = stack_.back().container->get_ref<Json::object_t&>();
    auto [it, inserted] = obj.try_emplace(std::move(k), nullptr);
    if (!inserted && options_.reject_duplicate_keys) {
      // try_emplace leaves k alone when the key exists, so it->first is the same text.
      error_ = absl::StrCat("duplicate key ", JsonSnippet(Json(it->first), 80), " in ", Path());
      return false;
    }
    pending_key_ = &it->first;
    pending_value_ = &it->second;
    return true;
  }

  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& e) {
    absl::string_view what = e.what();
    // "[json.exception.parse_error.101] parse error at ...": the bracketed id says nothing to
    // a user.
    if (absl::StartsWith(what, "[json.exception.")) {
      const size_t close = what.find("] ");
      if (close != absl::string_view::npos) what.remove_prefix(close + 2);
    }
    // The message ends in "last read: '<the token so far>'", which for a long string is the
    // whole string: keep the start, where the position is.
    std::string text(what);
    if (text.size() > kMaxParseErrorChars) {
      size_t cut = kMaxParseErrorChars - 3;
      while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
      text.resize(cut);
      text += "...";
    }
    error_ = absl::StrCat("invalid JSON: ", text);
    return false;
  }

  const std::string& error() const { return error_; }

 private:
  struct Frame {
    Json* container;
    const std::string* key;  // how the parent reached it: a key of an object ...
    size_t index;            // ... or an index of an array (key == nullptr)
  };

  // Stores a value where the parser is: the root, the next array element or the pending key.
  Json* Put(Json&& v) {
    if (stack_.empty()) {
      *root_ = std::move(v);
      entered_by_key_ = nullptr;
      return root_;
    }
    Json& top = *stack_.back().container;
    if (top.is_array()) {
      Json::array_t& arr = top.get_ref<Json::array_t&>();
      arr.push_back(std::move(v));
      entered_by_key_ = nullptr;
      entered_by_index_ = arr.size() - 1;
      return &arr.back();
    }
    *pending_value_ = std::move(v);
    entered_by_key_ = pending_key_;
    return pending_value_;
  }

  bool Open(Json&& empty) {
    if (static_cast<int>(stack_.size()) >= options_.max_depth) {
      error_ = absl::StrCat("JSON nested deeper than ", options_.max_depth, " levels at ",
                            Path());
      return false;
    }
    Json* where = Put(std::move(empty));
    stack_.push_back(Frame{where, entered_by_key_, entered_by_index_});
    return true;
  }

  bool Close() {
    stack_.pop_back();
    return true;
  }

  // Where the parser is, e.g. model.merges[3]; only built for messages.
  std::string Path() const {
    std::string p;
    for (size_t i = 1; i < stack_.size() && p.size() <= kMaxPathChars; ++i) {
      const Frame& f = stack_[i];
      if (f.key == nullptr) {
        absl::StrAppend(&p, "[", f.index, "]");
      } else if (IsPlainKey(*f.key)) {
        absl::StrAppend(&p, p.empty() ? "" : ".", *f.key);
      } else {
        absl::StrAppend(&p, "[", JsonSnippet(Json(*f.key), 40), "]");
      }
    }
    if (p.size() > kMaxPathChars) p = p.substr(0, kMaxPathChars) + "...";
    return p.empty() ? "(root)" : p;
  }

  Json* root_;
  JsonParseOptions options_;
  std::vector<Frame> stack_;
  const std::string* pending_key_ = nullptr;
  Json* pending_value_ = nullptr;
  const std::string* entered_by_key_ = nullptr;
  size_t entered_by_index_ = 0;
  std::string error_;
};

// Appends `v` to *out until out holds more than `budget` characters. Every container level
// appends a bracket before it descends, so the recursion is at most `budget` deep.
void AppendBounded(const Json& v, size_t budget, std::string* out) {
  if (out->size() > budget) return;
  auto scalar = [&](const Json& s) {
    if (s.is_string() && s.get_ref<const std::string&>().size() > budget) {
      // Only the start of a huge string can be shown; cut it before encoding it.
      const std::string& text = s.get_ref<const std::string&>();
      *out += Json(text.substr(0, budget)).dump(-1, ' ', false, Json::error_handler_t::replace);
      return;
    }
    *out += s.dump(-1, ' ', false, Json::error_handler_t::replace);
  };
  if (v.is_object()) {
    out->push_back('{');
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (out->size() > budget) return;
      if (!first) out->push_back(',');
      first = false;
      scalar(Json(it.key()));
      out->push_back(':');
      AppendBounded(it.value(), budget, out);
    }
    out->push_back('}');
  } else if (v.is_array()) {
    out->push_back('[');
    bool first = true;
    for (const Json& e : v) {
      if (out->size() > budget) return;
      if (!first) out->push_back(',');
      first = false;
      AppendBounded(e, budget, out);
    }
    out->push_back(']');
  } else {
    scalar(v);
  }
}

}  // namespace

absl::StatusOr<Json> ParseJson(absl::string_view text, const JsonParseOptions& options) {
  // nlohmann's lexer takes a NUL byte for the end of the input; JSON text has none (control
  // characters must be escaped even inside strings), so any NUL means corrupt input.
  if (const void* nul = std::memchr(text.data(), '\0', text.size()); nul != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid JSON: NUL byte at offset ", static_cast<const char*>(nul) - text.data()));
  }
  Json root;
  BoundedDomBuilder builder(&root, options);
  bool ok = false;
  try {
    ok = Json::sax_parse(text.begin(), text.end(), &builder, Json::input_format_t::json,
                         /*strict=*/true);
  } catch (const Json::exception& e) {
    // sax_parse reports through parse_error; this catches anything it throws besides.
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON: ", e.what()));
  }
  if (!ok) {
    return absl::InvalidArgumentError(builder.error().empty() ? std::string("invalid JSON")
                                                              : builder.error());
  }
  return root;
}

std::string JsonSnippet(const Json& value, size_t max_chars) {
  if (max_chars < 4) max_chars = 4;
  std::string out;
  AppendBounded(value, max_chars, &out);
  if (out.size() <= max_chars) return out;
  size_t cut = max_chars - 3;
  // Do not split a UTF-8 sequence: back up to the start of the character.
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
  out.resize(cut);
  out += "...";
  return out;
}

}  // namespace lattice
