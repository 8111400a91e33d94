// Byte-level BPE over Hugging Face tokenizer.json files.
//
// Supported (anything else is an InvalidArgument error naming the file and the field):
//   model           BPE: vocab, merges ("a b" strings or ["a", "b"] pairs), unk_token,
//                   fuse_unk, byte_fallback, ignore_merges; dropout null or 0;
//                   continuing_subword_prefix / end_of_word_suffix null or "".
//   pre_tokenizer   ByteLevel(add_prefix_space, use_regex), alone or last in a Sequence after
//                   Split steps whose regex is the GPT-2 or the Llama-3 pattern, behavior
//                   Isolated, invert false.
//   added_tokens    matched literally before pre-tokenization (leftmost-longest; non-normalized
//                   tokens first, then normalized ones in the gaps), with single_word, lstrip
//                   and rstrip. Ids are assigned the way `tokenizers` assigns them on load.
//   decoder         ByteLevel or null.
//   normalizer, truncation, padding: null. post_processor: ignored (see tokenizer.h).
// The JSON itself: at most kDefaultMaxJsonDepth levels deep, no key twice in any object, no NUL
// byte (runtime/io/json_limits.h); each is a DataLoss error naming the file and the place.
#include "runtime/text/tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <bitset>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/io/json_limits.h"
#include "runtime/io/mapped_file.h"
#include "runtime/status.h"
#include "runtime/text/unicode.h"

namespace lattice {
namespace {

using Json = nlohmann::json;
using unicode::SplitPattern;

constexpr absl::string_view kEndOfText = "<|endoftext|>";

// ---- Added tokens ------------------------------------------------------------------------------

struct AddedTokenSpec {
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;

  bool operator==(const AddedTokenSpec& o) const {
    return content == o.content && single_word == o.single_word && lstrip == o.lstrip &&
           rstrip == o.rstrip && normalized == o.normalized && special == o.special;
  }
  std::string Key() const {
    return absl::StrCat(content, "\x01", single_word, lstrip, rstrip, normalized, special);
  }
};

// Leftmost-longest literal matching, the semantics of the Aho-Corasick automaton `tokenizers`
// builds (MatchKind::LeftmostLongest). Candidates are bucketed by first byte, longest first.
class LiteralMatcher {
 public:
  void Build(std::vector<std::pair<std::string, int32_t>> patterns) {
    patterns_ = std::move(patterns);
    for (auto& b : by_first_byte_) b.clear();
    first_bytes_.reset();
    for (size_t i = 0; i < patterns_.size(); ++i) {
      if (patterns_[i].first.empty()) continue;
      const uint8_t b = static_cast<uint8_t>(patterns_[i].first[0]);
      by_first_byte_[b].push_back(static_cast<int32_t>(i));
      first_bytes_.set(b);
    }
    for (size_t i = 0; i < patterns_.size(); ++i) {
      if (!patterns_[i].first.empty()) by_first_byte_index_ = static_cast<int32_t>(i);
    }
    for (auto& bucket : by_first_byte_) {
      std::stable_sort(bucket.begin(), bucket.end(), [&](int32_t a, int32_t b) {
        return patterns_[a].first.size() > patterns_[b].first.size();
      });
    }
  }
  bool empty() const { return first_bytes_.none(); }

  // The leftmost-longest match at or after `pos`.
  bool Find(absl::string_view text, size_t pos, size_t* start, size_t* end, int32_t* id) const {
    const bool one_first_byte = first_bytes_.count() == 1;
    for (size_t p = pos; p < text.size(); ++p) {
      if (one_first_byte) {  // typically '<': skip to it with memchr
        const void* hit =
            std::memchr(text.data() + p, patterns_[by_first_byte_index_].first[0], text.size() - p);
        if (hit == nullptr) return false;
        p = static_cast<size_t>(static_cast<const char*>(hit) - text.data());
      }
      const uint8_t b = static_cast<uint8_t>(text[p]);
      if (!first_bytes_.test(b)) continue;
      const absl::string_view rest = text.substr(p);
      for (int32_t i : by_first_byte_[b]) {
        const std::string& pat = patterns_[i].first;
        if (rest.size() >= pat.size() && rest.substr(0, pat.size()) == pat) {
          *start = p;
          *end = p + pat.size();
          *id = patterns_[i].second;
          return true;
        }
      }
    }
    return false;
  }

 private:
  std::vector<std::pair<std::string, int32_t>> patterns_;
  std::array<std::vector<int32_t>, 256> by_first_byte_;
  std::bitset<256> first_bytes_;
  int32_t by_first_byte_index_ = 0;  // some non-empty pattern (all share the first byte if one)
};

// Start of the last character of a non-empty `s`; an ill-formed tail is a one-byte character.
size_t LastCharStart(absl::string_view s) {
  size_t start = s.size() - 1;
  while (start > 0 && s.size() - start < 4 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) {
    --start;
  }
  const unicode::DecodedChar d = unicode::DecodeUtf8(s, start);
  return start + d.length == s.size() ? start : s.size() - 1;
}

int32_t LastCodePoint(absl::string_view s) {
  if (s.empty()) return unicode::kInvalidCodePoint;
  return unicode::DecodeUtf8(s, LastCharStart(s)).code_point;
}

// A token or key as a JSON string for messages, cut when long (a file may hold megabyte keys).
std::string Quote(absl::string_view s) { return JsonSnippet(nlohmann::json(std::string(s))); }

// ---- BPE word cache ----------------------------------------------------------------------------

// Words repeat heavily (Zipf), so most pre-tokens are served from a cache. Each thread keeps its
// own (no locks, no shared cache lines between threads encoding different documents), for up to
// kOwners tokenizers at a time; a tokenizer is known by a never-reused serial number, so a cache
// can never outlive its tokenizer's meaning.
class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 128;
  static constexpr size_t kMaxEntries = size_t{1} << 17;

  using Map = absl::flat_hash_map<std::string, std::vector<int32_t>>;
  static Map& ForTokenizer(uint64_t serial) {
    thread_local std::array<Slot, kOwners> slots;
    thread_local uint64_t clock = 0;
    Slot* victim = &slots[0];
    for (Slot& slot : slots) {
      if (slot.serial == serial) {
        slot.last_use = ++clock;
        return slot.map;
      }
      if (slot.last_use < victim->last_use) victim = &slot;
    }
    victim->serial = serial;
    victim->last_use = ++clock;
    victim->map = Map();
    return victim->map;
  }
  static uint64_t NewSerial() {
    static std::atomic<uint64_t> next{1};
    return next.fetch_add(1);
  }

 private:
  static constexpr int kOwners = 4;
  struct Slot {
    uint64_t serial = 0;
    uint64_t last_use = 0;
    Map map;
  };
};

// ---- JSON helpers ------------------------------------------------------------------------------

class JsonReader {
 public:
  explicit JsonReader(absl::string_view source) : source_(source) {}

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", field, ": ", what));
  }
  absl::Status Unsupported(absl::string_view field, const Json& value,
                           absl::string_view supported) const {
    return Error(field, absl::StrCat("unsupported value ", Short(value), " (lattice supports ",
                                     supported, ")"));
  }
  // At most 120 characters of `v`, visiting only what is printed (never a full dump, whose
  // recursion and size follow the value's).
  static std::string Short(const Json& v) { return JsonSnippet(v, 120); }
  static const char* TypeName(const Json& v) { return v.type_name(); }

  absl::StatusOr<bool> Bool(const Json& obj, const char* key, bool default_value,
                            absl::string_view field) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return default_value;
    if (!it->is_boolean()) {
      return Error(absl::StrCat(field, ".", key),
                   absl::StrCat("expected a boolean, got ", TypeName(*it)));
    }
    return it->get<bool>();
  }
  absl::StatusOr<std::optional<std::string>> OptString(const Json& obj, const char* key,
                                                       absl::string_view field) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return std::optional<std::string>();
    if (!it->is_string()) {
      return Error(absl::StrCat(field, ".", key),
                   absl::StrCat("expected a string, got ", TypeName(*it)));
    }
    return std::optional<std::string>(it->get<std::string>());
  }
  absl::Status OnlyKeys(const Json& obj, std::initializer_list<const char*> keys,
                        absl::string_view field) const {
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      bool known = false;
      for (const char* k : keys) known = known || it.key() == k;
      if (!known) {
        const std::string& k = it.key();
        return Error(absl::StrCat(field, ".", k.size() <= 64 ? k : Quote(k)),
                     "unknown field (lattice does not support it)");
      }
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Type(const Json& obj, absl::string_view field) const {
    if (!obj.is_object()) {
      return Error(field, absl::StrCat("expected an object, got ", TypeName(obj)));
    }
    auto it = obj.find("type");
    if (it == obj.end() || !it->is_string()) return Error(field, "missing string field \"type\"");
    return it->get<std::string>();
  }

 private:
  std::string source_;
};

// ---- The BPE tokenizer -------------------------------------------------------------------------

class BpeTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(const Json& root,
                                                           absl::string_view source);

  std::vector<int32_t> Encode(absl::string_view text) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> TokenToId(absl::string_view token) const override;
  std::optional<int32_t> eot_id() const override { return eot_id_; }

 private:
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  absl::Status ParseModel(const JsonReader& r, const Json& model);
  absl::Status ParsePreTokenizer(const JsonReader& r, const Json& pt, absl::string_view field,
                                 bool inside_sequence);
  absl::Status ParseAddedTokens(const JsonReader& r, const Json& added);
  absl::Status ParseDecoder(const JsonReader& r, const Json& decoder);
  void Finish();

  // `tokenizers`' AddedVocabulary::find_matches: calls fn(segment, id) with id -1 for the text
  // between matches; empty segments are skipped.
  template <typename Fn>
  void SplitOnAddedTokens(absl::string_view text, const LiteralMatcher& matcher, Fn&& fn) const;
  void EncodeSegment(absl::string_view text, size_t split_level, std::vector<int32_t>* ids) const;
  void EncodeByteLevelPiece(absl::string_view piece, std::vector<int32_t>* ids) const;
  void EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const;
  void MergeWord(absl::string_view word, std::vector<int32_t>* ids) const;

  // Pre-tokenizer: Split steps, then ByteLevel.
  std::vector<SplitPattern> splits_;
  bool add_prefix_space_ = true;
  bool use_regex_ = true;
  bool has_byte_level_ = false;
  bool byte_level_decoder_ = false;

  // Model.
  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_map<int32_t, std::string> vocab_r_;
  absl::flat_hash_map<std::string, int32_t> vocab_by_bytes_;  // raw bytes -> id (ignore_merges)
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_id_;                         // -1: not in the vocab
  std::array<std::vector<int32_t>, 256> byte_fallback_ids_;  // <0xXX> ids, if all exist
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;

  // Added tokens, in `tokenizers`' bookkeeping.
  absl::flat_hash_map<std::string, int32_t> added_ids_;
  absl::flat_hash_map<int32_t, AddedTokenSpec> added_by_id_;
  LiteralMatcher raw_matcher_;         // normalized == false
  LiteralMatcher normalized_matcher_;  // normalized == true

  absl::flat_hash_map<int32_t, std::string> decode_piece_;
  int64_t vocab_size_ = 0;
  std::optional<int32_t> eot_id_;
  const uint64_t serial_ = WordCache::NewSerial();
};

absl::StatusOr<std::unique_ptr<Tokenizer>> BpeTokenizer::Create(const Json& root,
                                                                absl::string_view source) {
  JsonReader r(source);
  if (!root.is_object()) {
    return r.Error("(root)", absl::StrCat("expected a JSON object, got ", root.type_name()));
  }
  LATTICE_RETURN_IF_ERROR(
      r.OnlyKeys(root,
                 {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer",
                  "post_processor", "decoder", "model"},
                 "(root)"));
  for (const char* key : {"truncation", "padding", "normalizer"}) {
    auto it = root.find(key);
    if (it != root.end() && !it->is_null()) return r.Unsupported(key, *it, "null");
  }
  auto tok = std::unique_ptr<BpeTokenizer>(new BpeTokenizer());
  auto model = root.find("model");
  if (model == root.end()) return r.Error("model", "missing");
  LATTICE_RETURN_IF_ERROR(tok->ParseModel(r, *model));

  auto pt = root.find("pre_tokenizer");
  if (pt == root.end() || pt->is_null()) {
    return r.Error("pre_tokenizer", "missing (lattice supports byte-level BPE: ByteLevel)");
  }
  LATTICE_RETURN_IF_ERROR(tok->ParsePreTokenizer(r, *pt, "pre_tokenizer", false));
  if (!tok->has_byte_level_) {
    return r.Error("pre_tokenizer", "no ByteLevel step (lattice supports byte-level BPE only)");
  }
  auto decoder = root.find("decoder");
  if (decoder != root.end()) LATTICE_RETURN_IF_ERROR(tok->ParseDecoder(r, *decoder));
  auto added = root.find("added_tokens");
  if (added != root.end() && !added->is_null()) {
    LATTICE_RETURN_IF_ERROR(tok->ParseAddedTokens(r, *added));
  }
  tok->Finish();
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

absl::Status BpeTokenizer::ParseModel(const JsonReader& r, const Json& model) {
  if (!model.is_object()) {
    return r.Error("model", absl::StrCat("expected an object, got ", model.type_name()));
  }
  auto type = model.find("type");
  if (type != model.end() && !(type->is_string() && type->get<std::string>() == "BPE")) {
    return r.Unsupported("model.type", *type, "\"BPE\"");
  }
  LATTICE_RETURN_IF_ERROR(
      r.OnlyKeys(model,
                 {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                  "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges"},
                 "model"));
  auto dropout = model.find("dropout");
  if (dropout != model.end() && !dropout->is_null() &&
      !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    return r.Unsupported("model.dropout", *dropout, "null: encoding must be deterministic");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    LATTICE_ASSIGN_OR_RETURN(auto v, r.OptString(model, key, "model"));
    if (v.has_value() && !v->empty()) {
      return r.Unsupported(absl::StrCat("model.", key), model.at(key), "null");
    }
  }
  LATTICE_ASSIGN_OR_RETURN(fuse_unk_, r.Bool(model, "fuse_unk", false, "model"));
  LATTICE_ASSIGN_OR_RETURN(byte_fallback_, r.Bool(model, "byte_fallback", false, "model"));
  LATTICE_ASSIGN_OR_RETURN(ignore_merges_, r.Bool(model, "ignore_merges", false, "model"));

  auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object()) {
    return r.Error("model.vocab", "missing or not an object of token -> id");
  }
  vocab_.reserve(vocab->size());
  vocab_r_.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    const Json& v = it.value();
    const bool integral =
        v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
    if (!integral ||
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
      return r.Error(absl::StrCat("model.vocab[", Quote(it.key()), "]"),
                     absl::StrCat("id ", JsonReader::Short(v), " is not an integer in [0, 2^31)"));
    }
    const int32_t id = static_cast<int32_t>(v.get<uint64_t>());
    auto [pos, inserted] = vocab_r_.try_emplace(id, it.key());
    if (!inserted) {
      return r.Error("model.vocab", absl::StrCat("id ", id, " is used by both ", Quote(pos->second),
                                                 " and ", Quote(it.key())));
    }
    vocab_[it.key()] = id;
  }

  auto merges = model.find("merges");
  if (merges == model.end() || !merges->is_array()) {
    return r.Error("model.merges", "missing or not an array");
  }
  merges_.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const Json& m = (*merges)[i];
    const std::string field = absl::StrCat("model.merges[", i, "]");
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return r.Error(field, absl::StrCat("merge ", JsonReader::Short(m),
                                           " is not two tokens separated by one space"));
      }
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      return r.Error(field, absl::StrCat("merge ", JsonReader::Short(m),
                                         " is neither \"a b\" nor [\"a\", \"b\"]"));
    }
    auto lookup = [&](const std::string& token) -> absl::StatusOr<int32_t> {
      auto it = vocab_.find(token);
      if (it == vocab_.end()) {
        return r.Error(field, absl::StrCat("token ", Quote(token), " is not in model.vocab"));
      }
      return it->second;
    };
    LATTICE_ASSIGN_OR_RETURN(const int32_t a_id, lookup(a));
    LATTICE_ASSIGN_OR_RETURN(const int32_t b_id, lookup(b));
    LATTICE_ASSIGN_OR_RETURN(const int32_t new_id, lookup(a + b));
    // A repeated pair keeps its last rank, as `tokenizers`' map insertion does.
    merges_[PairKey(a_id, b_id)] = Merge{static_cast<uint32_t>(i), new_id};
  }

  LATTICE_ASSIGN_OR_RETURN(auto unk, r.OptString(model, "unk_token", "model"));
  if (unk.has_value()) {
    auto it = vocab_.find(*unk);
    if (it == vocab_.end()) {
      return r.Error("model.unk_token", absl::StrCat(Quote(*unk), " is not in model.vocab"));
    }
    unk_id_ = it->second;
  }

  // The initial symbols of a word are single byte-level characters; look them up once.
  const auto& to_cp = unicode::ByteToCodePoint();
  for (int byte = 0; byte < 256; ++byte) {
    std::string ch;
    unicode::AppendUtf8(to_cp[byte], &ch);
    auto it = vocab_.find(ch);
    byte_id_[byte] = it == vocab_.end() ? -1 : it->second;
    byte_fallback_ids_[byte].clear();
    if (byte_fallback_) {
      std::vector<int32_t> ids;
      for (char c : ch) {
        auto fb = vocab_.find(absl::StrFormat("<0x%02X>", static_cast<uint8_t>(c)));
        if (fb == vocab_.end()) {
          ids.clear();
          break;
        }
        ids.push_back(fb->second);
      }
      byte_fallback_ids_[byte] = std::move(ids);
    }
  }
  if (ignore_merges_) {
    for (const auto& [token, id] : vocab_) {
      std::optional<std::string> bytes = unicode::ByteLevelToBytes(token);
      if (bytes.has_value()) vocab_by_bytes_.emplace(std::move(*bytes), id);
    }
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePreTokenizer(const JsonReader& r, const Json& pt,
                                             absl::string_view field, bool inside_sequence) {
  LATTICE_ASSIGN_OR_RETURN(const std::string type, r.Type(pt, field));
  if (has_byte_level_) {
    return r.Error(field, "a pre-tokenizer step after ByteLevel (lattice needs ByteLevel last)");
  }
  if (type == "ByteLevel") {
    LATTICE_RETURN_IF_ERROR(
        r.OnlyKeys(pt, {"type", "add_prefix_space", "trim_offsets", "use_regex"}, field));
    LATTICE_ASSIGN_OR_RETURN(add_prefix_space_, r.Bool(pt, "add_prefix_space", true, field));
    LATTICE_ASSIGN_OR_RETURN(use_regex_, r.Bool(pt, "use_regex", true, field));
    LATTICE_RETURN_IF_ERROR(r.Bool(pt, "trim_offsets", true, field).status());
    has_byte_level_ = true;
    return absl::OkStatus();
  }
  if (type == "Sequence" && !inside_sequence) {
    LATTICE_RETURN_IF_ERROR(r.OnlyKeys(pt, {"type", "pretokenizers"}, field));
    auto steps = pt.find("pretokenizers");
    if (steps == pt.end() || !steps->is_array()) {
      return r.Error(field, "missing array \"pretokenizers\"");
    }
    for (size_t i = 0; i < steps->size(); ++i) {
      LATTICE_RETURN_IF_ERROR(
          ParsePreTokenizer(r, (*steps)[i], absl::StrCat(field, ".pretokenizers[", i, "]"), true));
    }
    return absl::OkStatus();
  }
  if (type == "Split") {
    LATTICE_RETURN_IF_ERROR(r.OnlyKeys(pt, {"type", "pattern", "behavior", "invert"}, field));
    auto pattern = pt.find("pattern");
    if (pattern == pt.end() || !pattern->is_object() || !pattern->contains("Regex") ||
        !(*pattern)["Regex"].is_string()) {
      return r.Error(absl::StrCat(field, ".pattern"),
                     "expected {\"Regex\": \"...\"} (lattice supports the GPT-2 and Llama-3 "
                     "split regexes)");
    }
    const std::string regex = (*pattern)["Regex"].get<std::string>();
    std::optional<SplitPattern> known = unicode::RecognizeSplitRegex(regex);
    if (!known.has_value()) {
      return r.Error(absl::StrCat(field, ".pattern.Regex"),
                     absl::StrCat("unknown split regex ", JsonReader::Short(Json(regex)),
                                  " (lattice implements only the GPT-2 and the Llama-3 patterns)"));
    }
    auto behavior = pt.find("behavior");
    if (behavior == pt.end() || !behavior->is_string() ||
        behavior->get<std::string>() != "Isolated") {
      return r.Unsupported(absl::StrCat(field, ".behavior"),
                           behavior == pt.end() ? Json() : *behavior, "\"Isolated\"");
    }
    LATTICE_ASSIGN_OR_RETURN(const bool invert, r.Bool(pt, "invert", false, field));
    if (invert) return r.Unsupported(absl::StrCat(field, ".invert"), Json(true), "false");
    splits_.push_back(*known);
    return absl::OkStatus();
  }
  return r.Unsupported(absl::StrCat(field, ".type"), Json(type),
                       inside_sequence ? "Split and ByteLevel inside a Sequence"
                                       : "ByteLevel, or a Sequence of Split steps and ByteLevel");
}

absl::Status BpeTokenizer::ParseDecoder(const JsonReader& r, const Json& decoder) {
  if (decoder.is_null()) return absl::OkStatus();
  LATTICE_ASSIGN_OR_RETURN(const std::string type, r.Type(decoder, "decoder"));
  if (type != "ByteLevel") return r.Unsupported("decoder.type", Json(type), "ByteLevel or null");
  byte_level_decoder_ = true;
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseAddedTokens(const JsonReader& r, const Json& added) {
  if (!added.is_array()) {
    return r.Error("added_tokens", absl::StrCat("expected an array, got ", added.type_name()));
  }
  // The order and the id rule of `tokenizers`' AddedVocabulary::add_tokens, called once per
  // entry: the "id" fields of the file are only checked there (with a warning), not used.
  std::vector<AddedTokenSpec> special_tokens, plain_tokens;
  absl::flat_hash_map<std::string, bool> special_set;
  absl::flat_hash_map<std::string, int> spec_count;  // AddedTokenSpec::Key of added_by_id_
  int64_t max_added_id = -1;
  const int64_t model_size = static_cast<int64_t>(vocab_.size());
  for (size_t i = 0; i < added.size(); ++i) {
    const Json& t = added[i];
    const std::string field = absl::StrCat("added_tokens[", i, "]");
    if (!t.is_object()) {
      return r.Error(field, absl::StrCat("expected an object, got ", t.type_name()));
    }
    LATTICE_RETURN_IF_ERROR(r.OnlyKeys(
        t, {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"}, field));
    auto id = t.find("id");
    if (id == t.end() ||
        !(id->is_number_unsigned() || (id->is_number_integer() && id->get<int64_t>() >= 0))) {
      return r.Error(absl::StrCat(field, ".id"), "missing or not a non-negative integer");
    }
    AddedTokenSpec spec;
    LATTICE_ASSIGN_OR_RETURN(auto content, r.OptString(t, "content", field));
    if (!content.has_value()) return r.Error(absl::StrCat(field, ".content"), "missing");
    spec.content = *content;
    LATTICE_ASSIGN_OR_RETURN(spec.single_word, r.Bool(t, "single_word", false, field));
    LATTICE_ASSIGN_OR_RETURN(spec.lstrip, r.Bool(t, "lstrip", false, field));
    LATTICE_ASSIGN_OR_RETURN(spec.rstrip, r.Bool(t, "rstrip", false, field));
    LATTICE_ASSIGN_OR_RETURN(spec.normalized, r.Bool(t, "normalized", true, field));
    LATTICE_ASSIGN_OR_RETURN(spec.special, r.Bool(t, "special", false, field));

    if (spec.special && !spec.content.empty() && !special_set.contains(spec.content)) {
      special_tokens.push_back(spec);
      special_set[spec.content] = true;
    }
    if (spec.content.empty() || spec_count[spec.Key()] > 0) continue;
    int64_t new_id;
    if (auto a = added_ids_.find(spec.content); a != added_ids_.end()) {
      new_id = a->second;
    } else if (auto v = vocab_.find(spec.content); v != vocab_.end()) {
      new_id = v->second;
    } else if (max_added_id < 0) {
      new_id = model_size;
    } else {
      new_id = (max_added_id >= model_size || model_size == 0) ? max_added_id + 1 : model_size;
    }
    if (new_id > std::numeric_limits<int32_t>::max()) {
      return r.Error(field, "the added token's id overflows int32");
    }
    added_ids_[spec.content] = static_cast<int32_t>(new_id);
    max_added_id = std::max(max_added_id, new_id);
    auto [slot, inserted] = added_by_id_.try_emplace(static_cast<int32_t>(new_id), spec);
    if (!inserted) {
      --spec_count[slot->second.Key()];
      slot->second = spec;
    }
    ++spec_count[spec.Key()];
    if (!special_set.contains(spec.content)) plain_tokens.push_back(spec);
  }

  std::vector<std::pair<std::string, int32_t>> raw, normalized;
  auto add_pattern = [&](const AddedTokenSpec& s) {
    const int32_t id = *TokenToId(s.content);  // present: added above
    (s.normalized ? normalized : raw).emplace_back(s.content, id);
  };
  for (const AddedTokenSpec& s : special_tokens) add_pattern(s);
  for (const AddedTokenSpec& s : plain_tokens) add_pattern(s);
  raw_matcher_.Build(std::move(raw));
  normalized_matcher_.Build(std::move(normalized));
  return absl::OkStatus();
}

void BpeTokenizer::Finish() {
  int64_t max_id = -1;
  for (const auto& [id, token] : vocab_r_) {
    max_id = std::max<int64_t>(max_id, id);
    std::string piece = token;
    if (byte_level_decoder_) {
      if (std::optional<std::string> bytes = unicode::ByteLevelToBytes(token)) piece = *bytes;
    }
    decode_piece_[id] = std::move(piece);
  }
  for (const auto& [id, spec] : added_by_id_) {
    max_id = std::max<int64_t>(max_id, id);
    std::string piece = spec.content;
    if (byte_level_decoder_) {
      if (std::optional<std::string> bytes = unicode::ByteLevelToBytes(spec.content)) {
        piece = *bytes;
      }
    }
    decode_piece_[id] = std::move(piece);
  }
  vocab_size_ = max_id + 1;
  for (absl::string_view name :
       {kEndOfText, absl::string_view("<|end_of_text|>"), absl::string_view("</s>")}) {
    if (std::optional<int32_t> id = TokenToId(name)) {
      eot_id_ = id;
      break;
    }
  }
}

std::optional<int32_t> BpeTokenizer::TokenToId(absl::string_view token) const {
  if (auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
  if (auto it = vocab_.find(token); it != vocab_.end()) return it->second;
  return std::nullopt;
}

template <typename Fn>
void BpeTokenizer::SplitOnAddedTokens(absl::string_view text, const LiteralMatcher& matcher,
                                      Fn&& fn) const {
  size_t start_offset = 0;
  size_t search = 0;
  size_t m_start, m_end;
  int32_t id;
  while (search < text.size() && matcher.Find(text, search, &m_start, &m_end, &id)) {
    search = m_end;
    size_t start = m_start, stop = m_end;
    const AddedTokenSpec& spec = added_by_id_.at(id);
    if (spec.single_word) {
      const bool start_space =
          start == 0 || !unicode::IsWordChar(LastCodePoint(text.substr(0, start)));
      const bool stop_space =
          stop == text.size() || !unicode::IsWordChar(unicode::DecodeUtf8(text, stop).code_point);
      if (!start_space || !stop_space) continue;
    }
    if (spec.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        const size_t last = LastCharStart(text.substr(0, new_start));
        if (!unicode::IsWhiteSpace(unicode::DecodeUtf8(text, last).code_point)) break;
        new_start = last;
      }
      start = std::max(new_start, start_offset);
    }
    if (spec.rstrip) {
      while (stop < text.size()) {
        const unicode::DecodedChar d = unicode::DecodeUtf8(text, stop);
        if (!unicode::IsWhiteSpace(d.code_point)) break;
        stop += d.length;
      }
    }
    if (start_offset < start) fn(text.substr(start_offset, start - start_offset), -1);
    fn(text.substr(start, stop - start), id);
    start_offset = stop;
  }
  if (start_offset < text.size()) fn(text.substr(start_offset), -1);
}

std::vector<int32_t> BpeTokenizer::Encode(absl::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  if (raw_matcher_.empty() && normalized_matcher_.empty()) {
    if (!text.empty()) EncodeSegment(text, 0, &ids);
    return ids;
  }
  SplitOnAddedTokens(text, raw_matcher_, [&](absl::string_view segment, int32_t id) {
    if (id >= 0) {
      ids.push_back(id);
      return;
    }
    SplitOnAddedTokens(segment, normalized_matcher_, [&](absl::string_view piece, int32_t id2) {
      if (id2 >= 0) {
        ids.push_back(id2);
      } else {
        EncodeSegment(piece, 0, &ids);
      }
    });
  });
  return ids;
}

void BpeTokenizer::EncodeSegment(absl::string_view text, size_t split_level,
                                 std::vector<int32_t>* ids) const {
  if (split_level == splits_.size()) {
    EncodeByteLevelPiece(text, ids);
    return;
  }
  unicode::ForEachSplit(splits_[split_level], text, [&](absl::string_view piece) {
    EncodeSegment(piece, split_level + 1, ids);
  });
}

void BpeTokenizer::EncodeByteLevelPiece(absl::string_view piece, std::vector<int32_t>* ids) const {
  std::string prefixed;
  if (add_prefix_space_ && (piece.empty() || piece[0] != ' ')) {
    prefixed.reserve(piece.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(piece.data(), piece.size());
    piece = prefixed;
  }
  if (!use_regex_) {
    EncodeWord(piece, ids);
    return;
  }
  unicode::ForEachSplit(SplitPattern::kGpt2, piece,
                        [&](absl::string_view word) { EncodeWord(word, ids); });
}

void BpeTokenizer::EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_by_bytes_.find(word); it != vocab_by_bytes_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  if (word.size() == 1 && byte_id_[static_cast<uint8_t>(word[0])] >= 0) {
    ids->push_back(byte_id_[static_cast<uint8_t>(word[0])]);
    return;
  }
  if (word.size() > WordCache::kMaxWordBytes) {
    MergeWord(word, ids);
    return;
  }
  WordCache::Map& cache = WordCache::ForTokenizer(serial_);
  if (auto it = cache.find(word); it != cache.end()) {
    ids->insert(ids->end(), it->second.begin(), it->second.end());
    return;
  }
  const size_t before = ids->size();
  MergeWord(word, ids);
  if (cache.size() < WordCache::kMaxEntries) {
    cache.try_emplace(std::string(word), ids->begin() + before, ids->end());
  }
}

// `tokenizers`' Word::merge_all: a min-heap of (rank, position) over adjacent pairs, skipping
// entries that went stale when a neighbour merged.
void BpeTokenizer::MergeWord(absl::string_view word, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool removed;
  };
  struct Entry {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id) {
    const int32_t n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back(Symbol{id, n - 1, -1, false});
  };
  int32_t pending_unk = 0;  // bytes of a pending unknown run
  for (char ch : word) {
    const uint8_t b = static_cast<uint8_t>(ch);
    if (byte_id_[b] >= 0) {
      if (pending_unk > 0) {
        add(*unk_id_);
        pending_unk = 0;
      }
      add(byte_id_[b]);
    } else if (byte_fallback_ && !byte_fallback_ids_[b].empty()) {
      for (int32_t id : byte_fallback_ids_[b]) add(id);
    } else if (unk_id_.has_value()) {
      if (pending_unk > 0 && !fuse_unk_) add(*unk_id_);
      pending_unk = (pending_unk > 0 && fuse_unk_) ? pending_unk + 1 : 1;
    }
  }
  if (pending_unk > 0) add(*unk_id_);

  auto later = [](const Entry& a, const Entry& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::vector<Entry> heap;
  heap.reserve(symbols.size() * 2);
  auto push = [&](int32_t pos, int32_t left, int32_t right) {
    auto it = merges_.find(PairKey(left, right));
    if (it == merges_.end()) return;
    heap.push_back(Entry{it->second.rank, pos, it->second.new_id});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    push(static_cast<int32_t>(i), symbols[i].id, symbols[i + 1].id);
  }
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Entry top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    const int32_t right_pos = left.next;
    const Symbol right = symbols[right_pos];
    auto current = merges_.find(PairKey(left.id, right.id));
    if (current == merges_.end() || current->second.new_id != top.new_id) continue;
    left.id = top.new_id;
    left.next = right.next;
    symbols[right_pos].removed = true;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev, symbols[left.prev].id, left.id);
    if (left.next >= 0) push(top.pos, left.id, symbols[left.next].id);
  }
  for (const Symbol& s : symbols) {
    if (!s.removed) ids->push_back(s.id);
  }
}

absl::StatusOr<std::string> BpeTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = decode_piece_.find(ids[i]);
    if (it == decode_piece_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("Decode: id ", ids[i], " at position ", i,
                                                     " is not in the vocabulary (size ",
                                                     vocab_size_, ")"));
    }
    if (!byte_level_decoder_ && i > 0) out.push_back(' ');
    out += it->second;
  }
  return byte_level_decoder_ ? unicode::Utf8Lossy(out) : out;
}

// ---- The byte tokenizer ------------------------------------------------------------------------

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kEot = 256;
  std::vector<int32_t> Encode(absl::string_view text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '<' && text.substr(i, kEndOfText.size()) == kEndOfText) {
        ids.push_back(kEot);
        i += kEndOfText.size() - 1;
        continue;
      }
      ids.push_back(static_cast<uint8_t>(text[i]));
    }
    return ids;
  }
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] == kEot) {
        out.append(kEndOfText.data(), kEndOfText.size());
      } else if (ids[i] >= 0 && ids[i] < 256) {
        out.push_back(static_cast<char>(ids[i]));
      } else {
        return absl::InvalidArgumentError(absl::StrCat("Decode: id ", ids[i], " at position ", i,
                                                       " is not in the byte vocabulary (257)"));
      }
    }
    return unicode::Utf8Lossy(out);
  }
  int64_t vocab_size() const override { return 257; }
  std::optional<int32_t> TokenToId(absl::string_view token) const override {
    if (token == kEndOfText) return kEot;
    if (token.size() == 1) return static_cast<uint8_t>(token[0]);
    return std::nullopt;
  }
  std::optional<int32_t> eot_id() const override { return kEot; }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(absl::string_view json_text,
                                                               absl::string_view source_name) {
  // Bounded depth (a file nested 100,000 deep once overflowed the stack in a recursive dump
  // while building an error message) and no duplicate keys in any object (vocab, top level,
  // ...: `tokenizers` and nlohmann would disagree about which one wins).
  absl::StatusOr<Json> root = ParseJson(json_text);
  if (!root.ok()) {
    return absl::DataLossError(
        absl::StrCat(source_name, ": not valid tokenizer JSON: ", root.status().message()));
  }
  try {
    return BpeTokenizer::Create(*root, source_name);
  } catch (const Json::exception& e) {
    // The reader checks types before every access; this is a last line of defence.
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ": unexpected tokenizer.json structure: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  const absl::string_view text(reinterpret_cast<const char*>(file->data()), file->size());
  return FromJson(text, path);
}

std::unique_ptr<Tokenizer> Tokenizer::Bytes() { return std::make_unique<ByteTokenizer>(); }

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& spec) {
  if (spec == "byte") return Bytes();
  return FromFile(spec);
}

std::vector<std::vector<int32_t>> Tokenizer::EncodeBatch(absl::Span<const absl::string_view> texts,
                                                         int num_threads) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  if (num_threads <= 0)
    num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  num_threads = static_cast<int>(std::min<size_t>(num_threads, texts.size()));
  if (num_threads <= 1) {
    for (size_t i = 0; i < texts.size(); ++i) out[i] = Encode(texts[i]);
    return out;
  }
  // Small chunks of documents from a shared counter balance uneven document lengths.
  std::atomic<size_t> next{0};
  const size_t chunk = std::max<size_t>(1, texts.size() / (static_cast<size_t>(num_threads) * 64));
  auto work = [&]() {
    for (;;) {
      const size_t begin = next.fetch_add(chunk);
      if (begin >= texts.size()) return;
      const size_t end = std::min(texts.size(), begin + chunk);
      for (size_t i = begin; i < end; ++i) out[i] = Encode(texts[i]);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < num_threads; ++t) threads.emplace_back(work);
  work();
  for (std::thread& t : threads) t.join();
  return out;
}

}  // namespace lattice
