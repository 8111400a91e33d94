#include "runtime/text/bpe_trainer.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "runtime/io/mapped_file.h"
#include "runtime/status.h"
#include "runtime/text/unicode.h"

namespace lattice {
namespace {

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}
int32_t PairLeft(uint64_t key) { return static_cast<int32_t>(key >> 32); }
int32_t PairRight(uint64_t key) { return static_cast<int32_t>(key & 0xFFFFFFFFu); }

std::string Quote(absl::string_view s) { return nlohmann::json(std::string(s)).dump(); }

// Cuts the special tokens out of `text` (leftmost, longest first), appending the pieces between.
void CutSpecialTokens(absl::string_view text, const std::vector<std::string>& specials,
                      std::vector<absl::string_view>* out) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = absl::string_view::npos, best_len = 0;
    for (const std::string& s : specials) {
      const size_t at = text.find(s, pos);
      if (at == absl::string_view::npos) continue;
      if (at < best || (at == best && s.size() > best_len)) {
        best = at;
        best_len = s.size();
      }
    }
    if (best == absl::string_view::npos) break;
    if (best > pos) out->push_back(text.substr(pos, best - pos));
    pos = best + best_len;
  }
  if (pos < text.size()) out->push_back(text.substr(pos));
}

// Splits a segment into chunks for the counting threads, only after a "\n" followed by an ASCII
// letter or digit: no GPT-2 pre-token crosses such a point, so the counts do not change.
void AppendChunks(absl::string_view segment, std::vector<absl::string_view>* out) {
  constexpr size_t kTargetBytes = size_t{1} << 18;
  while (segment.size() > kTargetBytes) {
    size_t p = kTargetBytes;
    while (p < segment.size()) {
      const char c = segment[p];
      const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
      if (segment[p - 1] == '\n' && alnum) break;
      ++p;
    }
    if (p >= segment.size()) break;
    out->push_back(segment.substr(0, p));
    segment.remove_prefix(p);
  }
  if (!segment.empty()) out->push_back(segment);
}

using WordCounts = absl::flat_hash_map<absl::string_view, int64_t>;

WordCounts CountWords(const std::vector<absl::string_view>& chunks, int num_threads) {
  num_threads = std::max(1, std::min<int>(num_threads, static_cast<int>(chunks.size())));
  std::vector<WordCounts> partial(num_threads);
  std::atomic<size_t> next{0};
  auto work = [&](int t) {
    for (size_t i = next.fetch_add(1); i < chunks.size(); i = next.fetch_add(1)) {
      unicode::ForEachSplit(unicode::SplitPattern::kGpt2, chunks[i],
                            [&](absl::string_view word) { ++partial[t][word]; });
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < num_threads; ++t) threads.emplace_back(work, t);
  work(0);
  for (std::thread& th : threads) th.join();
  for (int t = 1; t < num_threads; ++t) {
    for (const auto& [word, n] : partial[t]) partial[0][word] += n;
  }
  return std::move(partial[0]);
}

struct HeapItem {
  int64_t count;
  uint64_t pair;
};
// Most frequent first; ties go to the smaller (left id, right id), so training is deterministic.
bool HeapLess(const HeapItem& a, const HeapItem& b) {
  return a.count != b.count ? a.count < b.count : a.pair > b.pair;
}

std::string WriteTokenizerJson(const std::vector<std::string>& tokens,
                               const std::vector<std::pair<int32_t, int32_t>>& merges,
                               const std::vector<std::string>& specials) {
  std::vector<std::string> names(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) names[i] = unicode::BytesToByteLevel(tokens[i]);
  const int32_t first_special = static_cast<int32_t>(tokens.size());
  std::string out;
  out.reserve(tokens.size() * 40 + merges.size() * 30 + 1024);
  absl::StrAppend(&out, "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n",
                  "  \"padding\": null,\n  \"added_tokens\": [");
  for (size_t i = 0; i < specials.size(); ++i) {
    absl::StrAppend(&out, i ? "," : "", "\n    {\"id\": ", first_special + i,
                    ", \"content\": ", Quote(specials[i]),
                    ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
                    "\"normalized\": false, \"special\": true}");
  }
  absl::StrAppend(
      &out, "\n  ],\n  \"normalizer\": null,\n",
      "  \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
      "\"trim_offsets\": true, \"use_regex\": true},\n",
      "  \"post_processor\": null,\n",
      "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, "
      "\"trim_offsets\": true, \"use_regex\": true},\n",
      "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n",
      "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n",
      "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": false,\n",
      "    \"vocab\": {");
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(&out, i ? "," : "", "\n      ", Quote(names[i]), ": ", i);
  }
  for (size_t i = 0; i < specials.size(); ++i) {
    absl::StrAppend(&out, ",\n      ", Quote(specials[i]), ": ", first_special + i);
  }
  absl::StrAppend(&out, "\n    },\n    \"merges\": [");
  for (size_t i = 0; i < merges.size(); ++i) {
    absl::StrAppend(&out, i ? "," : "", "\n      [", Quote(names[merges[i].first]), ", ",
                    Quote(names[merges[i].second]), "]");
  }
  absl::StrAppend(&out, "\n    ]\n  }\n}\n");
  return out;
}

}  // namespace

absl::StatusOr<BpeTrainerResult> TrainBpe(absl::Span<const absl::string_view> texts,
                                          const BpeTrainerOptions& options) {
  const int64_t num_special = static_cast<int64_t>(options.special_tokens.size());
  if (options.vocab_size < 256 + num_special || options.vocab_size > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("BPE trainer: vocab_size ", options.vocab_size,
                                                   " must be in [256 + ", num_special,
                                                   " special tokens, 2^30]"));
  }
  if (options.min_frequency < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("BPE trainer: min_frequency ", options.min_frequency, " must be >= 1"));
  }
  absl::flat_hash_set<std::string> seen_special;
  for (const std::string& s : options.special_tokens) {
    if (s.empty()) return absl::InvalidArgumentError("BPE trainer: empty special token");
    if (!seen_special.insert(s).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("BPE trainer: special token ", Quote(s), " given twice"));
    }
  }

  BpeTrainerResult result;
  std::vector<absl::string_view> chunks;
  for (absl::string_view text : texts) {
    result.num_bytes += static_cast<int64_t>(text.size());
    std::vector<absl::string_view> segments;
    CutSpecialTokens(text, options.special_tokens, &segments);
    for (absl::string_view seg : segments) AppendChunks(seg, &chunks);
  }
  const int threads = options.num_threads > 0
                          ? options.num_threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  WordCounts counts = CountWords(chunks, threads);

  // Words in byte order, so ties and ids never depend on hash order or thread count.
  std::vector<std::pair<absl::string_view, int64_t>> sorted(counts.begin(), counts.end());
  std::sort(sorted.begin(), sorted.end());
  counts.clear();
  result.num_words = static_cast<int64_t>(sorted.size());

  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> word_count(sorted.size());
  absl::flat_hash_map<uint64_t, int64_t> pair_count;
  absl::flat_hash_map<uint64_t, std::vector<int32_t>> pair_words;
  for (size_t w = 0; w < sorted.size(); ++w) {
    const absl::string_view bytes = sorted[w].first;
    word_count[w] = sorted[w].second;
    words[w].reserve(bytes.size());
    for (char c : bytes) words[w].push_back(static_cast<uint8_t>(c));
    for (size_t i = 0; i + 1 < words[w].size(); ++i) {
      const uint64_t p = PairKey(words[w][i], words[w][i + 1]);
      pair_count[p] += word_count[w];
      std::vector<int32_t>& where = pair_words[p];
      if (where.empty() || where.back() != static_cast<int32_t>(w)) where.push_back(w);
    }
  }
  std::vector<HeapItem> heap;
  heap.reserve(pair_count.size());
  for (const auto& [p, n] : pair_count) heap.push_back(HeapItem{n, p});
  std::make_heap(heap.begin(), heap.end(), HeapLess);

  std::vector<std::string> tokens(256);
  absl::flat_hash_map<std::string, int32_t> token_ids;
  for (int b = 0; b < 256; ++b) {
    tokens[b] = std::string(1, static_cast<char>(b));
    token_ids[tokens[b]] = b;
  }
  std::vector<std::pair<int32_t, int32_t>> merges;
  const int64_t target_tokens = options.vocab_size - num_special;
  std::vector<uint64_t> touched;
  std::vector<int32_t> merged;
  while (static_cast<int64_t>(tokens.size()) < target_tokens && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), HeapLess);
    const HeapItem top = heap.back();
    heap.pop_back();
    auto pc = pair_count.find(top.pair);
    const int64_t current = pc == pair_count.end() ? 0 : pc->second;
    if (current != top.count) {  // stale: a merge changed this pair's count since the push
      if (current > 0) {
        heap.push_back(HeapItem{current, top.pair});
        std::push_heap(heap.begin(), heap.end(), HeapLess);
      }
      continue;
    }
    if (current < options.min_frequency) break;

    const int32_t a = PairLeft(top.pair), b = PairRight(top.pair);
    std::string new_bytes = tokens[a] + tokens[b];
    int32_t new_id;
    if (auto it = token_ids.find(new_bytes); it != token_ids.end()) {
      new_id = it->second;  // the same string reached by another pair keeps its id
    } else {
      new_id = static_cast<int32_t>(tokens.size());
      token_ids.emplace(new_bytes, new_id);
      tokens.push_back(std::move(new_bytes));
    }
    merges.emplace_back(a, b);

    std::vector<int32_t> where = std::move(pair_words[top.pair]);
    pair_words.erase(top.pair);
    std::sort(where.begin(), where.end());
    where.erase(std::unique(where.begin(), where.end()), where.end());
    touched.clear();
    for (int32_t w : where) {
      std::vector<int32_t>& sym = words[w];
      bool present = false;
      for (size_t i = 0; i + 1 < sym.size() && !present; ++i)
        present = sym[i] == a && sym[i + 1] == b;
      if (!present) continue;  // a stale entry: an earlier merge consumed the pair here
      const int64_t n = word_count[w];
      for (size_t i = 0; i + 1 < sym.size(); ++i) pair_count[PairKey(sym[i], sym[i + 1])] -= n;
      merged.clear();
      for (size_t i = 0; i < sym.size(); ++i) {
        if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) {
          merged.push_back(new_id);
          ++i;
        } else {
          merged.push_back(sym[i]);
        }
      }
      sym.assign(merged.begin(), merged.end());
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        const uint64_t p = PairKey(sym[i], sym[i + 1]);
        pair_count[p] += n;
        if (sym[i] == new_id || sym[i + 1] == new_id) {
          std::vector<int32_t>& list = pair_words[p];
          if (list.empty() || list.back() != w) list.push_back(w);
          touched.push_back(p);
        }
      }
    }
    pair_count.erase(top.pair);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t p : touched) {
      const int64_t n = pair_count[p];
      if (n > 0) {
        heap.push_back(HeapItem{n, p});
        std::push_heap(heap.begin(), heap.end(), HeapLess);
      }
    }
  }

  absl::flat_hash_set<std::string> names;
  for (const std::string& t : tokens) names.insert(unicode::BytesToByteLevel(t));
  for (const std::string& s : options.special_tokens) {
    if (names.contains(s)) {
      return absl::InvalidArgumentError(
          absl::StrCat("BPE trainer: special token ", Quote(s),
                       " equals a byte-level token of the vocabulary; choose a distinct string"));
    }
  }
  result.num_merges = static_cast<int64_t>(merges.size());
  result.vocab_size = static_cast<int64_t>(tokens.size()) + num_special;
  result.tokenizer_json = WriteTokenizerJson(tokens, merges, options.special_tokens);
  return result;
}

absl::StatusOr<BpeTrainerResult> TrainBpeFromFiles(const std::vector<std::string>& paths,
                                                   const BpeTrainerOptions& options) {
  if (paths.empty()) return absl::InvalidArgumentError("BPE trainer: no input files");
  std::vector<std::unique_ptr<MappedFile>> files;
  std::vector<absl::string_view> texts;
  for (const std::string& path : paths) {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> f, MappedFile::Open(path));
    texts.emplace_back(reinterpret_cast<const char*>(f->data()), f->size());
    files.push_back(std::move(f));
  }
  return TrainBpe(texts, options);
}

}  // namespace lattice
