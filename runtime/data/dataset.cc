#include "runtime/data/dataset.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <tuple>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "runtime/config.h"
#include "runtime/io/json_limits.h"
#include "runtime/rng.h"
#include "runtime/status.h"

namespace lattice {

namespace {

// Six rounds of a Philox-keyed Feistel network: far more mixing than a shuffle needs; the
// cost (six Philox calls per sample) is nothing next to reading T tokens.
constexpr int kFeistelRounds = 6;

}  // namespace

uint64_t FeistelPermute(uint64_t x, uint64_t n, uint64_t seed, absl::string_view stream) {
  LATTICE_CHECK(x < n);
  if (n <= 1) return 0;
  // A balanced network on 2 * half bits, the smallest even width that holds n - 1.
  int bits = 64 - std::countl_zero(n - 1);
  if (bits % 2 != 0) ++bits;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  const CounterRng rng(seed, stream);
  // Cycle-walking: re-encrypt until the value falls inside [0, n). The domain is < 4n, so this
  // takes under 4 passes on average, and it is a bijection of [0, n) because the network is one
  // of [0, 2^bits).
  do {
    uint64_t left = x >> half;
    uint64_t right = x & mask;
    for (int r = 0; r < kFeistelRounds; ++r) {
      const uint64_t f = rng.Bits((static_cast<uint64_t>(r) << 32) | right) & mask;
      const uint64_t next_right = left ^ f;
      left = right;
      right = next_right;
    }
    x = (left << half) | right;
  } while (x >= n);
  return x;
}

// ---- DataLoaderState -------------------------------------------------------------------------

std::string DataLoaderState::ToJson() const {
  nlohmann::json j;
  j["version"] = kVersion;
  j["consumed_samples"] = consumed_samples;
  j["seed"] = seed;
  j["seq_len"] = seq_len;
  j["sources"] = nlohmann::json::array();
  for (const Source& s : sources) {
    j["sources"].push_back({{"path", s.path}, {"num_tokens", s.num_tokens}, {"weight", s.weight}});
  }
  j["skipped"] = SampleRangesToJson(skipped);
  return j.dump();
}

absl::StatusOr<DataLoaderState> DataLoaderState::FromJson(absl::string_view json) {
  // The state comes back from a checkpoint on disk, so it is parsed as untrusted input: bounded
  // depth, no duplicate keys, no NUL (runtime/io/json_limits.h).
  absl::StatusOr<nlohmann::json> parsed = ParseJson(json);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data loader state: ", parsed.status().message()));
  }
  const nlohmann::json& j = *parsed;
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("data loader state: not a JSON object but ",
                                                   JsonSnippet(j, 60)));
  }
  auto need = [&j](const char* key) -> absl::Status {
    if (!j.contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat("data loader state: missing \"", key, "\""));
    }
    return absl::OkStatus();
  };
  LATTICE_RETURN_IF_ERROR(need("version"));
  if (!j["version"].is_number_integer() || j["version"].get<int64_t>() != kVersion) {
    return absl::InvalidArgumentError(absl::StrCat("data loader state: version ",
                                                   JsonSnippet(j["version"]), " (this build reads ",
                                                   kVersion, ")"));
  }
  // An integer field in [min, 2^63): larger unsigned values would wrap when read as int64.
  auto integer = [](const nlohmann::json& obj, const char* key, int64_t min,
                    absl::string_view where) -> absl::StatusOr<int64_t> {
    auto it = obj.find(key);
    if (it == obj.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("data loader state: ", where, "missing \"", key, "\""));
    }
    const bool fits = it->is_number_unsigned()
                          ? it->get<uint64_t>() <=
                                static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
                          : it->is_number_integer();
    if (!fits || it->get<int64_t>() < min) {
      return absl::InvalidArgumentError(absl::StrCat("data loader state: ", where, "\"", key,
                                                     "\" must be an integer >= ", min, ", got ",
                                                     JsonSnippet(*it)));
    }
    return it->get<int64_t>();
  };
  DataLoaderState s;
  LATTICE_ASSIGN_OR_RETURN(s.consumed_samples, integer(j, "consumed_samples", 0, ""));
  LATTICE_ASSIGN_OR_RETURN(s.seq_len, integer(j, "seq_len", 1, ""));
  // The seed is a uint64 (train.seed): any non-negative integer JSON holds.
  LATTICE_RETURN_IF_ERROR(need("seed"));
  const nlohmann::json& seed = j["seed"];
  if (!seed.is_number_unsigned() && !(seed.is_number_integer() && seed.get<int64_t>() >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data loader state: \"seed\" must be a non-negative integer, got ", JsonSnippet(seed)));
  }
  s.seed = seed.get<uint64_t>();
  LATTICE_RETURN_IF_ERROR(need("sources"));
  if (!j["sources"].is_array()) {
    return absl::InvalidArgumentError("data loader state: \"sources\" must be an array");
  }
  for (size_t i = 0; i < j["sources"].size(); ++i) {
    const nlohmann::json& e = j["sources"][i];
    const std::string where = absl::StrCat("sources[", i, "]: ");
    if (!e.is_object() || !e.contains("path") || !e["path"].is_string() ||
        !e.contains("weight") || !e["weight"].is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data loader state: ", where, "each source needs path, num_tokens, weight; got ",
          JsonSnippet(e)));
    }
    LATTICE_ASSIGN_OR_RETURN(const int64_t num_tokens, integer(e, "num_tokens", 0, where));
    const double weight = e["weight"].get<double>();
    if (!(weight > 0.0) || !std::isfinite(weight)) {
      return absl::InvalidArgumentError(absl::StrCat("data loader state: ", where, "weight ",
                                                     JsonSnippet(e["weight"]),
                                                     " must be finite and > 0"));
    }
    s.sources.push_back({e["path"].get<std::string>(), num_tokens, weight});
  }
  if (j.contains("skipped")) {  // absent before loss-spike rollbacks existed: nothing skipped
    absl::StatusOr<std::vector<SampleRange>> skipped = SampleRangesFromJson(j["skipped"]);
    if (!skipped.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("data loader state: ", skipped.status().message()));
    }
    s.skipped = *std::move(skipped);
  }
  return s;
}

// ---- TrainingSamples -------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<TrainingSamples>> TrainingSamples::Create(
    std::vector<WeightedSource> sources, const SampleOptions& options) {
  if (options.seq_len < 1) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len must be >= 1, got ", options.seq_len));
  }
  if (sources.empty()) return absl::InvalidArgumentError("no data sources given");
  if (sources.size() > 255) {
    return absl::InvalidArgumentError(absl::StrCat("at most 255 blended sources, got ",
                                                   sources.size()));
  }
  std::unique_ptr<TrainingSamples> t(new TrainingSamples());
  t->options_ = options;
  double total = 0.0;
  for (size_t i = 0; i < sources.size(); ++i) {
    const WeightedSource& s = sources[i];
    if (s.source == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("data source ", i, " is null"));
    }
    if (!std::isfinite(s.weight) || s.weight <= 0.0) {
      return absl::InvalidArgumentError(absl::StrCat("blend weight ", s.weight, " of ",
                                                     s.source->path(),
                                                     " must be finite and > 0"));
    }
    const int64_t n = s.source->num_tokens();
    if (n < options.seq_len + 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          s.source->path(), " has ", n, " tokens, fewer than the seq_len + 1 = ",
          options.seq_len + 1, " that one ", options.name, " sample needs"));
    }
    total += s.weight;
    t->samples_per_epoch_.push_back((n - 1) / options.seq_len);
    t->shuffle_streams_.push_back(absl::StrCat(options.name, ".", i));
  }
  for (const WeightedSource& s : sources) t->weights_.push_back(s.weight / total);
  t->sources_ = std::move(sources);
  t->block_counts_.assign(t->sources_.size(), 0);  // block 0 starts with zero counts
  t->cached_which_.resize(kBlendBlock);
  t->cached_local_.resize(kBlendBlock);
  return t;
}

void TrainingSamples::SimulateBlock(int64_t block, std::vector<int64_t>* counts, uint8_t* which,
                                    int64_t* local) const {
  const size_t k = weights_.size();
  const int64_t first = block * kBlendBlock;
  for (int64_t i = 0; i < kBlendBlock; ++i) {
    const double n = static_cast<double>(first + i + 1);
    size_t best = 0;
    double best_deficit = weights_[0] * n - static_cast<double>((*counts)[0]);
    for (size_t d = 1; d < k; ++d) {
      const double deficit = weights_[d] * n - static_cast<double>((*counts)[d]);
      if (deficit > best_deficit) {
        best = d;
        best_deficit = deficit;
      }
    }
    if (which != nullptr) {
      which[i] = static_cast<uint8_t>(best);
      local[i] = (*counts)[best];
    }
    ++(*counts)[best];
  }
}

std::pair<int, int64_t> TrainingSamples::Assign(int64_t global_index) const {
  if (sources_.size() == 1) return {0, global_index};
  const size_t k = sources_.size();
  const int64_t block = global_index / kBlendBlock;
  std::lock_guard<std::mutex> lock(blend_mu_);
  if (cached_block_ != block) {
    int64_t known = static_cast<int64_t>(block_counts_.size() / k);  // blocks with start counts
    std::vector<int64_t> counts(block_counts_.end() - k, block_counts_.end());
    while (known <= block) {
      SimulateBlock(known - 1, &counts, nullptr, nullptr);
      block_counts_.insert(block_counts_.end(), counts.begin(), counts.end());
      ++known;
    }
    counts.assign(block_counts_.begin() + block * k, block_counts_.begin() + (block + 1) * k);
    SimulateBlock(block, &counts, cached_which_.data(), cached_local_.data());
    cached_block_ = block;
  }
  const int64_t i = global_index % kBlendBlock;
  return {cached_which_[i], cached_local_[i]};
}

TrainingSamples::Location TrainingSamples::Locate(int64_t global_index) const {
  LATTICE_CHECK(global_index >= 0);
  Location loc;
  std::tie(loc.source, loc.local_index) = Assign(global_index);
  const int64_t per_epoch = samples_per_epoch_[loc.source];
  loc.epoch = loc.local_index / per_epoch;
  const int64_t pos = loc.local_index % per_epoch;
  loc.window = static_cast<int64_t>(FeistelPermute(
      static_cast<uint64_t>(pos), static_cast<uint64_t>(per_epoch), options_.seed,
      absl::StrCat("lattice.data.", shuffle_streams_[loc.source], ".epoch", loc.epoch)));
  return loc;
}

absl::Status TrainingSamples::Get(int64_t global_index, int32_t* out) const {
  if (global_index < 0) {
    return absl::OutOfRangeError(absl::StrCat("sample index ", global_index, " is negative"));
  }
  const Location loc = Locate(global_index);
  const TokenSource& src = *sources_[loc.source].source;
  const int64_t T = options_.seq_len;
  const int64_t begin = loc.window * T;
  LATTICE_RETURN_IF_ERROR(src.Read(begin, T + 1, out));
  if (options_.vocab_size > 0) {
    for (int64_t i = 0; i <= T; ++i) {
      if (out[i] >= options_.vocab_size) {
        return absl::DataLossError(absl::StrCat(
            src.path(), ": token at position ", src.FileOffset(begin + i), " has id ", out[i],
            ", which is >= vocab_size ", options_.vocab_size, " (", options_.name, " sample ",
            global_index, ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status TrainingSamples::GetBatch(int64_t first_global_index, int64_t batch, int32_t* inputs,
                                       int32_t* targets) const {
  const int64_t T = options_.seq_len;
  std::vector<int32_t> sample(static_cast<size_t>(T + 1));  // (T + 1,)
  for (int64_t b = 0; b < batch; ++b) {
    LATTICE_RETURN_IF_ERROR(Get(first_global_index + b, sample.data()));
    std::copy(sample.begin(), sample.begin() + T, inputs + b * T);
    std::copy(sample.begin() + 1, sample.end(), targets + b * T);
  }
  return absl::OkStatus();
}

absl::StatusOr<TokenBatch> TrainingSamples::GetBatch(int64_t first_global_index,
                                                     int64_t batch) const {
  if (batch < 1) return absl::InvalidArgumentError(absl::StrCat("batch size ", batch, " < 1"));
  TokenBatch b;
  b.b = batch;
  b.t = options_.seq_len;
  b.inputs.resize(static_cast<size_t>(batch * options_.seq_len));
  b.targets.resize(b.inputs.size());
  LATTICE_RETURN_IF_ERROR(GetBatch(first_global_index, batch, b.inputs.data(), b.targets.data()));
  return b;
}

absl::Status TrainingSamples::ReadBatch(int64_t first_global_index, int64_t batch,
                                        TokenBatch& out) const {
  if (batch < 1) return absl::InvalidArgumentError(absl::StrCat("batch size ", batch, " < 1"));
  out.b = batch;
  out.t = options_.seq_len;
  out.inputs.resize(static_cast<size_t>(batch * options_.seq_len));
  out.targets.resize(out.inputs.size());
  out.doc_starts.clear();
  return GetBatch(first_global_index, batch, out.inputs.data(), out.targets.data());
}

DataLoaderState TrainingSamples::State(int64_t consumed_samples) const {
  DataLoaderState s;
  s.consumed_samples = consumed_samples;
  s.seed = options_.seed;
  s.seq_len = options_.seq_len;
  for (size_t i = 0; i < sources_.size(); ++i) {
    s.sources.push_back({sources_[i].source->path(), sources_[i].source->num_tokens(),
                         weights_[i]});
  }
  return s;
}

absl::Status TrainingSamples::CheckState(const DataLoaderState& state) const {
  if (state.seed != options_.seed) {
    return absl::InvalidArgumentError(absl::StrCat("checkpointed data order used seed ",
                                                   state.seed, ", the config has ",
                                                   options_.seed));
  }
  if (state.seq_len != options_.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("checkpointed data used seq_len ",
                                                   state.seq_len, ", the config has ",
                                                   options_.seq_len));
  }
  if (state.sources.size() != sources_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpointed data had ", state.sources.size(),
                                                   " sources, now there are ", sources_.size()));
  }
  for (size_t i = 0; i < sources_.size(); ++i) {
    const DataLoaderState::Source& s = state.sources[i];
    if (s.num_tokens != sources_[i].source->num_tokens()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data source ", i, " (", sources_[i].source->path(), ") has ",
          sources_[i].source->num_tokens(), " tokens, the checkpoint's (", s.path, ") had ",
          s.num_tokens, ": a different dataset would give different samples"));
    }
    if (std::fabs(s.weight - weights_[i]) > 1e-12) {
      return absl::InvalidArgumentError(absl::StrCat("blend weight of source ", i, " (",
                                                     sources_[i].source->path(), ") is ",
                                                     weights_[i], ", the checkpoint's is ",
                                                     s.weight));
    }
  }
  return absl::OkStatus();
}

// ---- SampleStream ----------------------------------------------------------------------------

SampleStream::SampleStream(std::shared_ptr<const SampleSource> samples, int64_t dp_rank,
                           int64_t dp_size, int64_t micro_batch)
    : samples_(std::move(samples)), dp_rank_(dp_rank), dp_size_(dp_size),
      micro_batch_(micro_batch) {
  LATTICE_CHECK(samples_ != nullptr);
  LATTICE_CHECK(dp_size_ >= 1 && dp_rank_ >= 0 && dp_rank_ < dp_size_);
  LATTICE_CHECK(micro_batch_ >= 1);
}

absl::Status SampleStream::Next(int32_t* inputs, int32_t* targets) {
  LATTICE_RETURN_IF_ERROR(Next(scratch_));
  std::copy(scratch_.inputs.begin(), scratch_.inputs.end(), inputs);
  std::copy(scratch_.targets.begin(), scratch_.targets.end(), targets);
  return absl::OkStatus();
}

absl::Status SampleStream::Next(TokenBatch& out) {
  if (skipped_.empty() || skipped_.back().end <= consumed_) {
    // Nothing skipped from here on: the micro-step is m * dp consecutive indices.
    LATTICE_RETURN_IF_ERROR(samples_->ReadBatch(next_global_index(), micro_batch_, out));
    consumed_ += micro_batch_ * dp_size_;
    return absl::OkStatus();
  }
  return NextSkipping(out);
}

absl::Status SampleStream::NextSkipping(TokenBatch& out) {
  // This rank's m indices are the (r*m)-th to (r*m + m - 1)-th unskipped ones from s; they are
  // read as runs of consecutive indices, each run one ReadBatch.
  const int64_t m = micro_batch_;
  const int64_t t = samples_->seq_len();
  out.b = m;
  out.t = t;
  out.inputs.resize(static_cast<size_t>(m * t));
  out.targets.resize(out.inputs.size());
  out.doc_starts.clear();
  TokenBatch part;
  int64_t g = next_global_index();
  for (int64_t row = 0; row < m;) {
    g = FirstUnskipped(g, skipped_);
    const int64_t run = std::min(m - row, UnskippedRunEnd(g, skipped_) - g);
    LATTICE_RETURN_IF_ERROR(samples_->ReadBatch(g, run, part));
    std::copy(part.inputs.begin(), part.inputs.end(), out.inputs.begin() + row * t);
    std::copy(part.targets.begin(), part.targets.end(), out.targets.begin() + row * t);
    if (!part.doc_starts.empty()) {
      if (out.doc_starts.size() != static_cast<size_t>(row * t)) {
        return absl::InternalError("a sample source gave document starts for some rows only");
      }
      out.doc_starts.insert(out.doc_starts.end(), part.doc_starts.begin(), part.doc_starts.end());
    }
    row += run;
    g += run;
  }
  if (!out.doc_starts.empty() && out.doc_starts.size() != out.inputs.size()) {
    return absl::InternalError("a sample source gave document starts for some rows only");
  }
  consumed_ = NthUnskipped(consumed_, m * dp_size_ - 1, skipped_) + 1;
  return absl::OkStatus();
}

absl::Status SampleStream::Restore(const DataLoaderState& state) {
  LATTICE_RETURN_IF_ERROR(samples_->CheckState(state));
  consumed_ = state.consumed_samples;
  skipped_ = MergeSampleRanges(state.skipped);
  return absl::OkStatus();
}

absl::Status SampleStream::Skip(const SampleRange& range) {
  if (range.begin < 0 || range.end <= range.begin) {
    return absl::InvalidArgumentError(absl::StrCat("cannot skip samples [", range.begin, ", ",
                                                   range.end, "): need 0 <= begin < end"));
  }
  std::vector<SampleRange> all = skipped_;
  all.push_back(range);
  skipped_ = MergeSampleRanges(std::move(all));
  return absl::OkStatus();
}

// ---- Splits and config -----------------------------------------------------------------------

absl::StatusOr<std::pair<std::shared_ptr<const TokenSource>, std::shared_ptr<const TokenSource>>>
SplitTrainVal(std::shared_ptr<const TokenSource> source, double val_fraction) {
  if (!(val_fraction > 0.0 && val_fraction < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("validation fraction ", val_fraction,
                                                   " must be in (0, 1)"));
  }
  LATTICE_ASSIGN_OR_RETURN(absl::Span<const int64_t> starts, source->DocumentStarts());
  const int64_t docs = static_cast<int64_t>(starts.size()) - 1;
  if (docs < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        source->path(), " has ", std::max<int64_t>(docs, 0),
        " document(s), too few to split off a validation set by documents; give data.val"));
  }
  int64_t val_docs = static_cast<int64_t>(std::llround(static_cast<double>(docs) * val_fraction));
  val_docs = std::clamp<int64_t>(val_docs, 1, docs - 1);
  LATTICE_ASSIGN_OR_RETURN(std::shared_ptr<const TokenSource> train,
                           DocumentRange(source, 0, docs - val_docs));
  LATTICE_ASSIGN_OR_RETURN(std::shared_ptr<const TokenSource> val,
                           DocumentRange(source, docs - val_docs, docs));
  return std::make_pair(std::move(train), std::move(val));
}

DatasetOptions DatasetOptions::FromConfig(const Config& config) {
  DatasetOptions o;
  o.train = config.data.train;
  o.blend = config.data.blend;
  o.val = config.data.val;
  o.seq_len = config.model.seq_len;
  o.seed = config.train.seed;
  o.vocab_size = config.model.vocab_size;
  return o;
}

absl::StatusOr<Datasets> OpenDatasets(const DatasetOptions& options) {
  std::vector<std::pair<double, std::string>> entries = options.blend;
  if (!options.train.empty()) {
    if (!entries.empty()) {
      return absl::InvalidArgumentError(
          "data.train and data.blend are both set; give one of them");
    }
    entries.push_back({1.0, options.train});
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError("no training data: set data.train or data.blend");
  }
  std::vector<WeightedSource> train, val;
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& [weight, path] = entries[i];
    const std::string key =
        options.train.empty() ? absl::StrCat("data.blend[", i, "]") : std::string("data.train");
    auto opened = OpenTokenSource(path, options.source_options);
    if (!opened.ok()) return Annotate(opened.status(), key);
    std::shared_ptr<const TokenSource> src = std::move(*opened);
    if (options.val.empty() && options.val_fraction > 0.0) {
      auto split = SplitTrainVal(src, options.val_fraction);
      if (!split.ok()) return Annotate(split.status(), key);
      auto parts = std::move(*split);
      train.push_back({weight, std::move(parts.first)});
      val.push_back({weight, std::move(parts.second)});
    } else {
      train.push_back({weight, std::move(src)});
    }
  }
  if (!options.val.empty()) {
    auto opened = OpenTokenSource(options.val, options.source_options);
    if (!opened.ok()) return Annotate(opened.status(), "data.val");
    std::shared_ptr<const TokenSource> src = std::move(*opened);
    val.push_back({1.0, std::move(src)});
  }
  Datasets out;
  SampleOptions so;
  so.seq_len = options.seq_len;
  so.seed = options.seed;
  so.vocab_size = options.vocab_size;
  so.name = "train";
  LATTICE_ASSIGN_OR_RETURN(out.train, TrainingSamples::Create(std::move(train), so));
  if (!val.empty()) {
    so.name = "val";
    LATTICE_ASSIGN_OR_RETURN(out.val, TrainingSamples::Create(std::move(val), so));
  }
  return out;
}

}  // namespace lattice
