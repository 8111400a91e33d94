// LATTICE_MPI_NP: 8
// LATTICE_TEST_LABELS: numeric
//
// Checkpoints across layouts (parallel/checkpoint.h), in process, on sub-worlds of the 8 ranks:
//
// 1. The reshard matrix. A tiny GPT-2 (tied embedding, vocabulary padded 50 -> 64) and a tiny
//    Llama (GQA: 4 heads, 2 kv heads, so tp=4 replicates kv heads) train 3 steps at each of six
//    layouts (plain, ZeRO-1 data parallel, tp x pp with sequence parallelism, dp x tp x pp with
//    ZeRO-1, interleaved pp with vpp=2, tp=4 x dp=2 with ZeRO-1), with 2 KiB gradient buckets
//    so ZeRO-1 chunks cut parameters mid-row; each saves a checkpoint. Every other layout loads
//    it: the weights and AdamW's moments gathered from the loading layout equal the saving
//    layout's gathered state bit for bit (the padded vocabulary rows included), the counters
//    are restored, and two more steps give the uninterrupted single-rank run's losses within
//    1e-5 relative (engine_mpi_test.cc says where 1e-5 comes from: fp32 sums in other orders).
// 2. Each rank reads only what it holds: a tp x pp rank reads well under the whole payload, a
//    one-rank layout reads all of it exactly once.
// 3. An async save writes the same bytes as a sync save of the same state (every shard file and
//    the index are byte-identical).
// 4. A write error of an async save on one rank surfaces on every rank at the next save, or at
//    Finish for the last one; nothing is committed, nothing is left behind.
// 5. Retention (keep=1) with async saves never deletes the newest committed checkpoint while a
//    save is in flight.
// 6. train.init_weights' path (a weights-only load) reads exactly the weight boxes a rank
//    holds, none of the optimizer's.
#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/optimizer.h"
#include "parallel/checkpoint.h"
#include "parallel/communicator.h"
#include "parallel/engine.h"
#include "runtime/config.h"
#include "runtime/io/checkpoint_format.h"
#include "tests/parallel/adam_drift.h"
#include "tests/parallel/engine_testing.h"
#include "tests/parallel/mpi_harness.h"

namespace lattice {
namespace {

namespace fs = std::filesystem;
using lattice::testing::FreshWorld;
using lattice::testing::Gathered;
using lattice::testing::NamedTensors;
using lattice::testing::World;

// Continued losses agree with the single-rank run to this (see the header comment).
constexpr double kTol = 1e-5;
constexpr int64_t kGlobalBatch = 8;
constexpr int64_t kMicro = 2;
constexpr int64_t kSeqLen = 16;
constexpr int kSaveStep = 3;   // the checkpoint is taken after this many steps
constexpr int kMoreSteps = 2;  // steps taken after loading it
// Small buckets: ZeRO-1 chunks then cut parameters in the middle of rows.
constexpr int64_t kBucketBytes = 2048;

using testing::Layout;
using testing::WithLayout;

std::vector<Layout> Layouts() {
  std::vector<Layout> l(6);
  l[1].dp = 2;
  l[1].zero1 = true;
  l[2].tp = 2;
  l[2].pp = 2;
  l[2].sp = true;
  l[3].dp = 2;
  l[3].tp = 2;
  l[3].pp = 2;
  l[3].zero1 = true;
  l[4].dp = 2;
  l[4].pp = 2;
  l[4].vpp = 2;
  l[4].schedule = PipelineSchedule::kInterleaved;
  l[5].dp = 2;
  l[5].tp = 4;
  l[5].zero1 = true;
  return l;
}

Config ModelConfigFor(Arch arch) {
  Config c = testing::TinyEngineConfig(arch, /*n_layer=*/4, kSeqLen, kMicro, kGlobalBatch);
  c.train.seed = 11;
  c.train.steps = kSaveStep + kMoreSteps;
  return c;
}

TokenBatch Samples(int64_t first, int64_t b, int64_t vocab) {
  return testing::PseudoRandomSamples(first, b, kSeqLen, vocab, /*salt=*/7);
}

// Step `step` (0-based) of dp rank r: Megatron's sampler over global sample indices.
std::vector<TokenBatch> LocalBatches(int step, int dp, int dp_rank, int64_t vocab) {
  std::vector<TokenBatch> out;
  const int64_t start = step * kGlobalBatch;
  for (int64_t s = start; s < start + kGlobalBatch; s += kMicro * dp) {
    out.push_back(Samples(s + dp_rank * kMicro, kMicro, vocab));
  }
  return out;
}

std::unique_ptr<ParallelEngine> MakeEngine(const Config& base, Communicator& comm) {
  Config cfg = base;
  absl::Status v = cfg.ValidateLayout(comm.size());
  EXPECT_TRUE(v.ok()) << v;
  EngineOptions options;
  options.bucket_bytes = kBucketBytes;
  absl::StatusOr<std::unique_ptr<ParallelEngine>> e = ParallelEngine::Create(cfg, comm, options);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(e).value() : nullptr;
}

// Takes steps [first, last) and returns their losses.
std::vector<double> TakeSteps(ParallelEngine& engine, const Config& cfg, int first, int last) {
  std::vector<double> losses;
  const ProcessGrid& g = engine.grid();
  for (int s = first; s < last; ++s) {
    const float lr = LearningRate(cfg.train, engine.iteration() + 1);
    absl::StatusOr<EngineStepResult> r =
        engine.Step(LocalBatches(s, g.dp_size(), g.dp_rank(), cfg.model.vocab_size), lr);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) break;
    losses.push_back(r->loss);
  }
  return losses;
}

// Weights, then the first and second moments, gathered (collective over the engine's world).
NamedTensors GatherState(ParallelEngine& engine) {
  NamedTensors all = Gathered(engine.GatherParameters());
  auto opt = engine.GatherOptimizerState();
  EXPECT_TRUE(opt.ok()) << opt.status();
  if (!opt.ok()) return all;
  for (auto& [name, t] : opt->first) all.emplace_back("exp_avg/" + name, std::move(t));
  for (auto& [name, t] : opt->second) all.emplace_back("exp_avg_sq/" + name, std::move(t));
  return all;
}

// Tensors that differ in any bit, by name ("" when none).
std::string FirstDifference(const NamedTensors& got, const NamedTensors& want) {
  if (got.size() != want.size()) return absl::StrCat(got.size(), " vs ", want.size(), " tensors");
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i].first != want[i].first) return got[i].first + " vs " + want[i].first;
    const Tensor& a = got[i].second;
    const Tensor& b = want[i].second;
    if (a.shape() != b.shape() || std::memcmp(a.raw(), b.raw(), a.nbytes()) != 0) {
      for (int64_t k = 0; k < a.numel() && k < b.numel(); ++k) {
        if (std::memcmp(a.f32() + k, b.f32() + k, 4) != 0) {
          return absl::StrCat(got[i].first, " element ", k, ": ", a.f32()[k], " vs ",
                              b.f32()[k]);
        }
      }
      return got[i].first + " (shape)";
    }
  }
  return "";
}

// The ranks [0, n) of the world as a communicator; nullptr elsewhere. Collective.
std::unique_ptr<Communicator> SubWorld(int n) {
  const int rank = World().rank();
  absl::StatusOr<std::unique_ptr<Communicator>> c =
      World().Split(rank < n ? 0 : Communicator::kNoColor, rank);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(c).value() : nullptr;
}

// A fresh directory every rank knows (rank 0 makes it; the path is broadcast), removed at the
// end of the test: the destructor is collective (all ranks meet first, so none removes it while
// another still reads or writes).
class SharedTempDir {
 public:
  SharedTempDir() {
    char path[256] = {0};
    if (World().rank() == 0) {
      const std::string pattern =
          (fs::temp_directory_path() / "lattice_ckpt_test_XXXXXX").string();
      std::snprintf(path, sizeof(path), "%s", pattern.c_str());
      EXPECT_NE(::mkdtemp(path), nullptr);
    }
    EXPECT_TRUE(World().Broadcast(path, sizeof(path), CommType::kU8, 0).ok());
    path_ = path;
  }
  ~SharedTempDir() {
    World().Barrier().IgnoreError();
    if (World().rank() == 0) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  SharedTempDir(const SharedTempDir&) = delete;
  SharedTempDir& operator=(const SharedTempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

CheckpointContents ContentsFor(const Config& cfg, const ParallelEngine& engine) {
  CheckpointContents c;
  c.iteration = engine.iteration();
  c.optimizer_step = engine.optimizer().step();
  c.seed = cfg.train.seed;
  Config validated = cfg;
  EXPECT_TRUE(validated.ValidateLayout(engine.grid().world_size()).ok());
  c.config_yaml = validated.ToYaml();
  c.layout = LayoutOf(validated);
  return c;
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class ReshardMatrix : public ::testing::TestWithParam<Arch> {};

TEST_P(ReshardMatrix, EveryLayoutLoadsEveryOtherBitForBit) {
  const Arch arch = GetParam();
  const Config base = ModelConfigFor(arch);
  const std::vector<Layout> layouts = Layouts();
  const SharedTempDir tmp;
  const std::string& root = tmp.path();

  // The uninterrupted single-rank run, on every rank.
  std::vector<double> ref_losses;
  {
    SelfCommunicator self;
    std::unique_ptr<ParallelEngine> e = MakeEngine(base, self);
    ASSERT_NE(e, nullptr);
    ref_losses = TakeSteps(*e, base, 0, kSaveStep + kMoreSteps);
  }
  ASSERT_EQ(ref_losses.size(), static_cast<size_t>(kSaveStep + kMoreSteps));

  // Each layout trains and saves; rank 0 keeps the gathered state it saved.
  std::vector<NamedTensors> saved(layouts.size());
  std::vector<std::string> dirs(layouts.size());
  for (size_t a = 0; a < layouts.size(); ++a) {
    SCOPED_TRACE("saved at " + layouts[a].Name());
    const Config cfg = WithLayout(base, layouts[a]);
    const std::string dir_root = (fs::path(root) / absl::StrCat("layout", a)).string();
    dirs[a] = (fs::path(dir_root) / CheckpointDirName(kSaveStep)).string();
    std::unique_ptr<Communicator> sub = SubWorld(layouts[a].world());
    if (sub == nullptr) continue;
    std::unique_ptr<ParallelEngine> engine = MakeEngine(cfg, *sub);
    ASSERT_NE(engine, nullptr);
    TakeSteps(*engine, cfg, 0, kSaveStep);
    NamedTensors state = GatherState(*engine);
    if (sub->rank() == 0) saved[a] = std::move(state);
    CheckpointOptions o;
    o.root = dir_root;
    absl::StatusOr<std::unique_ptr<CheckpointSaver>> saver = CheckpointSaver::Create(*sub, o);
    ASSERT_TRUE(saver.ok()) << saver.status();
    const TrainStateRegistry reg = TrainStateRegistry::ForEngine(*engine);
    absl::StatusOr<std::optional<SaveStats>> s = (*saver)->Save(reg, ContentsFor(cfg, *engine));
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_TRUE(s->has_value());
    EXPECT_EQ((*s)->path, dirs[a]);
    // Each shard holds its weights first, as one range, then the optimizer's tensors (the
    // file order CollectShard gives, so a replica reading a peer's weights reads one stream).
    if (sub->rank() == 0) {
      absl::StatusOr<CheckpointIndex> idx = ReadCheckpointIndex(dirs[a]);
      ASSERT_TRUE(idx.ok()) << idx.status();
      std::map<int, uint64_t> last_weight, first_optimizer;
      for (const auto& [key, t] : idx->tensors) {
        for (const StoredBox& b : t.boxes) {
          if (absl::StartsWith(key, "model/")) {
            last_weight[b.file] = std::max(last_weight[b.file], b.byte_offset);
          } else if (!first_optimizer.count(b.file) || b.byte_offset < first_optimizer[b.file]) {
            first_optimizer[b.file] = b.byte_offset;
          }
        }
      }
      EXPECT_FALSE(first_optimizer.empty());
      for (const auto& [file, offset] : first_optimizer) {
        if (last_weight.count(file)) {
          EXPECT_LT(last_weight[file], offset) << idx->files[file].name;
        }
      }
    }
  }

  double worst = 0;
  uint64_t run_bytes = 0;  // read by ReadRun (direct), on this rank over every load
  for (size_t a = 0; a < layouts.size(); ++a) {
    for (size_t b = 0; b < layouts.size(); ++b) {
      if (a == b) continue;
      SCOPED_TRACE(layouts[a].Name() + " loaded at " + layouts[b].Name());
      const Config cfg = WithLayout(base, layouts[b]);
      std::unique_ptr<Communicator> sub = SubWorld(layouts[b].world());
      if (sub == nullptr) continue;
      std::unique_ptr<ParallelEngine> engine = MakeEngine(cfg, *sub);
      ASSERT_NE(engine, nullptr);
      absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(dirs[a]);
      ASSERT_TRUE(reader.ok()) << reader.status();
      ASSERT_TRUE(CheckCompatible(**reader, cfg.model, /*need_optimizer=*/true).ok());
      // As the trainer loads: the boxes only one rank reads go direct (ReadRun).
      const TrainStateRegistry reg = TrainStateRegistry::ForEngine(*engine);
      std::vector<int32_t> readers = BoxesRead(**reader, reg);
      ASSERT_TRUE(sub->AllReduce(absl::MakeSpan(readers), ReduceOp::kSum).ok());
      // Every stored box is read by some rank: the loading layout holds all of the state.
      EXPECT_EQ(std::count(readers.begin(), readers.end(), 0), 0);
      const absl::Status read = ReadState(**reader, reg, nullptr, &readers);
      ASSERT_TRUE(AgreeOnStatus(*sub, read).ok()) << read;
      run_bytes += (*reader)->run_bytes_read();
      engine->set_iteration((*reader)->index().iteration);
      engine->optimizer().set_step((*reader)->index().optimizer_step);
      EXPECT_EQ(engine->iteration(), kSaveStep);
      EXPECT_EQ(engine->optimizer().step(), kSaveStep);

      // What each rank read: the boxes it holds, not the checkpoint.
      const uint64_t payload = (*reader)->index().payload_bytes();
      if (layouts[b].world() == 1) {
        EXPECT_EQ((*reader)->bytes_read(), payload);
      } else if (layouts[b].tp * layouts[b].pp >= 4) {
        EXPECT_LT((*reader)->bytes_read(), payload * 6 / 10)
            << "rank " << sub->rank() << " read " << (*reader)->bytes_read() << " of " << payload;
      }

      const NamedTensors state = GatherState(*engine);
      if (sub->rank() == 0) {
        EXPECT_EQ(FirstDifference(state, saved[a]), "")
            << "the loaded weights and moments differ from the saved ones";
      }
      const std::vector<double> more = TakeSteps(*engine, cfg, kSaveStep, kSaveStep + kMoreSteps);
      ASSERT_EQ(more.size(), static_cast<size_t>(kMoreSteps));
      for (int s = 0; s < kMoreSteps; ++s) {
        const double want = ref_losses[kSaveStep + s];
        EXPECT_NEAR(more[s], want, kTol * std::abs(want)) << "step " << kSaveStep + s + 1;
        worst = std::max(worst, std::abs(more[s] - want) / want);
      }
    }
  }
  // Some of the loads took the direct path (the boxes a rank alone reads, held whole).
  EXPECT_GT(run_bytes, 0u) << "rank " << World().rank();
  if (World().rank() == 0) {
    std::printf("  %zu layouts, %zu loads: state bit for bit; continued losses worst rel diff "
                "%.2e vs one rank; %.1f KiB of rank 0's reads direct\n",
                layouts.size(), layouts.size() * (layouts.size() - 1), worst, run_bytes / 1024.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ReshardMatrix, ::testing::Values(Arch::kGpt2, Arch::kLlama),
                         [](const ::testing::TestParamInfo<Arch>& i) {
                           return i.param == Arch::kGpt2 ? std::string("Gpt2")
                                                         : std::string("LlamaGqa");
                         });

TEST(AsyncSave, WritesTheBytesOfASyncSave) {
  const Layout l = Layouts()[3];  // dp x tp x pp with ZeRO-1
  const Config cfg = WithLayout(ModelConfigFor(Arch::kGpt2), l);
  const SharedTempDir tmp;
  const std::string& root = tmp.path();
  std::unique_ptr<Communicator> sub = SubWorld(l.world());
  if (sub != nullptr) {
    std::unique_ptr<ParallelEngine> engine = MakeEngine(cfg, *sub);
    ASSERT_NE(engine, nullptr);
    TakeSteps(*engine, cfg, 0, 2);
    const TrainStateRegistry reg = TrainStateRegistry::ForEngine(*engine);
    for (bool async : {false, true}) {
      CheckpointOptions o;
      o.root = (fs::path(root) / (async ? "async" : "sync")).string();
      o.async = async;
      absl::StatusOr<std::unique_ptr<CheckpointSaver>> saver = CheckpointSaver::Create(*sub, o);
      ASSERT_TRUE(saver.ok()) << saver.status();
      absl::StatusOr<std::optional<SaveStats>> s = (*saver)->Save(reg, ContentsFor(cfg, *engine));
      ASSERT_TRUE(s.ok()) << s.status();
      EXPECT_EQ(s->has_value(), !async) << "a sync save commits at once, an async one later";
      EXPECT_EQ((*saver)->in_flight(), async);
      // The writer owns a copy: training on does not change what it writes.
      if (async) TakeSteps(*engine, cfg, 2, 3);
      absl::StatusOr<std::optional<SaveStats>> f = (*saver)->Finish();
      ASSERT_TRUE(f.ok()) << f.status();
      EXPECT_EQ(f->has_value(), async);
      EXPECT_FALSE((*saver)->in_flight());
    }
    if (sub->rank() == 0) {
      const fs::path a = fs::path(root) / "sync" / CheckpointDirName(2);
      const fs::path b = fs::path(root) / "async" / CheckpointDirName(2);
      int files = 0;
      for (const auto& entry : fs::directory_iterator(a)) {
        const fs::path name = entry.path().filename();
        EXPECT_EQ(ReadFile(entry.path()), ReadFile(b / name)) << name;
        ++files;
      }
      EXPECT_EQ(files, l.world() + 1);  // the shards and the index
    }
  }
}

// An async save whose writer fails on one rank (its file size limit, RLIMIT_FSIZE, set below the
// shard's size: write(2) fails with EFBIG half-way through the shard, a real I/O error) is
// reported on EVERY rank, at the next save or, for the last save, at Finish (the end of
// training), naming the iteration and the failing rank's error; nothing is committed and the
// partial directory is removed; the saver then saves again normally.
TEST(AsyncSave, AWriteErrorOnOneRankSurfacesOnEveryRankAtTheNextSaveOrAtFinish) {
  const Layout l = Layouts()[1];  // dp=2 with ZeRO-1: two writers
  const Config cfg = WithLayout(ModelConfigFor(Arch::kGpt2), l);
  const SharedTempDir tmp;
  const std::string& root = tmp.path();
  std::unique_ptr<Communicator> sub = SubWorld(l.world());
  if (sub != nullptr) {
    std::unique_ptr<ParallelEngine> engine = MakeEngine(cfg, *sub);
    ASSERT_NE(engine, nullptr);
    CheckpointOptions o;
    o.root = root;
    o.async = true;
    absl::StatusOr<std::unique_ptr<CheckpointSaver>> saver = CheckpointSaver::Create(*sub, o);
    ASSERT_TRUE(saver.ok()) << saver.status();
    const TrainStateRegistry reg = TrainStateRegistry::ForEngine(*engine);
    // Rank 1's shard is ~0.3 MB (half of the tiny model's ~53K weights and their two moments):
    // at 4 KiB its write fails part-way through.
    ASSERT_GT(reg.save_bytes(), 16384u);
    const bool failing = sub->rank() == 1;
    struct rlimit saved_limit;
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved_limit), 0);
    void (*saved_handler)(int) = SIG_DFL;
    if (failing) {
      // Without SIGXFSZ ignored the kernel would kill the process instead of failing the write.
      saved_handler = std::signal(SIGXFSZ, SIG_IGN);
      struct rlimit small = saved_limit;
      small.rlim_cur = 4096;
      ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    }
    auto expect_failed = [&](const absl::StatusOr<std::optional<SaveStats>>& s, int iteration) {
      ASSERT_FALSE(s.ok()) << "rank " << sub->rank();
      const std::string m(s.status().message());
      EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted) << m;
      EXPECT_NE(m.find(absl::StrCat("checkpoint of iteration ", iteration, " was not saved")),
                std::string::npos) << m;
      EXPECT_NE(m.find("rank 1: "), std::string::npos) << m;
      EXPECT_NE(m.find("shard_00001_of_00002.safetensors: write failed: File too large"),
                std::string::npos) << m;
      EXPECT_FALSE((*saver)->in_flight());
    };

    // 1. At the next save.
    TakeSteps(*engine, cfg, 0, 1);
    absl::StatusOr<std::optional<SaveStats>> s = (*saver)->Save(reg, ContentsFor(cfg, *engine));
    ASSERT_TRUE(s.ok()) << s.status() << " (the writer runs in the background)";
    TakeSteps(*engine, cfg, 1, 2);
    s = (*saver)->Save(reg, ContentsFor(cfg, *engine));
    expect_failed(s, 1);
    // 2. At the end of training.
    s = (*saver)->Save(reg, ContentsFor(cfg, *engine));
    ASSERT_TRUE(s.ok()) << s.status();
    s = (*saver)->Finish();
    expect_failed(s, 2);
    if (failing) {
      ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &saved_limit), 0);
      std::signal(SIGXFSZ, saved_handler);
    }
    EXPECT_TRUE(ListCheckpoints(root)->empty());
    // 3. The saver goes on: the same iteration again, now with room.
    s = (*saver)->Save(reg, ContentsFor(cfg, *engine));
    ASSERT_TRUE(s.ok()) << s.status();
    s = (*saver)->Finish();
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_TRUE(s->has_value());
    EXPECT_EQ((*s)->iteration, 2);
    sub->Barrier().IgnoreError();
    std::vector<std::string> entries;
    for (const auto& e : fs::directory_iterator(root)) {
      entries.push_back(e.path().filename().string());
    }
    std::sort(entries.begin(), entries.end());
    EXPECT_EQ(entries, (std::vector<std::string>{"latest", "step_00000002"}))
        << "the failed saves left something behind";
  }
}

// Retention with async saves (checkpoint.keep=1): while a save is in flight the newest
// committed checkpoint is never deleted, however many older ones retention removes; each commit
// removes exactly the one it supersedes, and `latest` names the newest committed one.
TEST(Retention, KeepsTheNewestCommittedWhileAnAsyncSaveIsInFlight) {
  const Layout l = Layouts()[1];  // dp=2 with ZeRO-1: two writers
  const Config cfg = WithLayout(ModelConfigFor(Arch::kGpt2), l);
  const SharedTempDir tmp;
  const std::string& root = tmp.path();
  std::unique_ptr<Communicator> sub = SubWorld(l.world());
  if (sub != nullptr) {
    std::unique_ptr<ParallelEngine> engine = MakeEngine(cfg, *sub);
    ASSERT_NE(engine, nullptr);
    CheckpointOptions o;
    o.root = root;
    o.async = true;
    o.keep = 1;
    absl::StatusOr<std::unique_ptr<CheckpointSaver>> saver = CheckpointSaver::Create(*sub, o);
    ASSERT_TRUE(saver.ok()) << saver.status();
    const TrainStateRegistry reg = TrainStateRegistry::ForEngine(*engine);
    // The committed checkpoints (their iterations), as discovery and resume see them.
    auto committed = [&] {
      std::vector<int64_t> its;
      absl::StatusOr<std::vector<CheckpointEntry>> all = ListCheckpoints(root);
      EXPECT_TRUE(all.ok()) << all.status();
      if (all.ok()) {
        for (const CheckpointEntry& e : *all) its.push_back(e.iteration);
      }
      return its;
    };
    auto latest = [&] { return ReadFile(fs::path(root) / kCheckpointLatestFile); };
    auto removed = [&](const std::optional<SaveStats>& s) {
      return s.has_value() ? s->removed : std::vector<std::string>{"(no commit)"};
    };
    const std::vector<std::string> none;
    const std::string step1 = (fs::path(root) / CheckpointDirName(1)).string();
    const std::string step2 = (fs::path(root) / CheckpointDirName(2)).string();

    TakeSteps(*engine, cfg, 0, 1);
    absl::StatusOr<std::optional<SaveStats>> s = (*saver)->Save(reg, ContentsFor(cfg, *engine));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_FALSE(s->has_value());
    EXPECT_EQ(committed(), std::vector<int64_t>{});
    s = (*saver)->Finish();
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(removed(*s), none);
    EXPECT_EQ(committed(), std::vector<int64_t>{1});

    // The save of iteration 2 in flight: iteration 1 is the newest committed one and stays.
    TakeSteps(*engine, cfg, 1, 2);
    s = (*saver)->Save(reg, ContentsFor(cfg, *engine));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_FALSE(s->has_value()) << "nothing was in flight to commit";
    EXPECT_TRUE((*saver)->in_flight());
    EXPECT_EQ(committed(), std::vector<int64_t>{1});
    EXPECT_EQ(latest(), "step_00000001\n");

    // The save of iteration 3 commits 2 first (removing 1), then is in flight: 2 stays.
    TakeSteps(*engine, cfg, 2, 3);
    s = (*saver)->Save(reg, ContentsFor(cfg, *engine));
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_TRUE(s->has_value());
    EXPECT_EQ((*s)->iteration, 2);
    if (sub->rank() == 0) EXPECT_EQ((*s)->removed, std::vector<std::string>{step1});
    EXPECT_TRUE((*saver)->in_flight());
    // More steps with the save in flight (the ranks poll at every boundary, as the trainer
    // does): until it commits, iteration 2 is there.
    for (int step = 3; step < 5 && (*saver)->in_flight(); ++step) {
      EXPECT_EQ(committed(), std::vector<int64_t>{2});
      EXPECT_EQ(latest(), "step_00000002\n");
      TakeSteps(*engine, cfg, step, step + 1);
      s = (*saver)->Poll();
      ASSERT_TRUE(s.ok()) << s.status();
      if (s->has_value() && sub->rank() == 0) {
        EXPECT_EQ((*s)->removed, std::vector<std::string>{step2});
      }
    }
    s = (*saver)->Finish();
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(committed(), std::vector<int64_t>{3});
    EXPECT_EQ(latest(), "step_00000003\n");
  }
}

bool Meets(const Box& a, const Box& b) {
  for (size_t d = 0; d < a.offset.size(); ++d) {
    if (a.offset[d] + a.shape[d] <= b.offset[d] || b.offset[d] + b.shape[d] <= a.offset[d]) {
      return false;
    }
  }
  return true;
}

// train.init_weights from a checkpoint (launcher/trainer.cc, LoadInitialWeights: resolve, open,
// CheckCompatible without the optimizer, ReadState into the weights-only registry): a checkpoint
// of (dp,tp,pp)=(2,2,2) ZeRO-1 loaded at (1,2,2). Each rank reads exactly the stored weight
// boxes that meet the rows and columns it holds (counted independently here), none of the
// optimizer's, and well under all the weights; the gathered weights are the saved ones.
TEST(InitWeights, EachRankReadsOnlyTheWeightBoxesItHolds) {
  const Layout save_at = Layouts()[3];  // dp x tp x pp with ZeRO-1
  const Layout load_at = Layouts()[2];  // tp x pp with sequence parallelism
  const Config base = ModelConfigFor(Arch::kGpt2);
  const SharedTempDir tmp;
  const std::string& root = tmp.path();
  NamedTensors saved;
  {
    const Config cfg = WithLayout(base, save_at);
    std::unique_ptr<Communicator> sub = SubWorld(save_at.world());
    if (sub != nullptr) {
      std::unique_ptr<ParallelEngine> engine = MakeEngine(cfg, *sub);
      ASSERT_NE(engine, nullptr);
      TakeSteps(*engine, cfg, 0, 2);
      NamedTensors w = Gathered(engine->GatherParameters());
      if (sub->rank() == 0) saved = std::move(w);
      CheckpointOptions o;
      o.root = root;
      absl::StatusOr<std::unique_ptr<CheckpointSaver>> saver = CheckpointSaver::Create(*sub, o);
      ASSERT_TRUE(saver.ok()) << saver.status();
      absl::StatusOr<std::optional<SaveStats>> s =
          (*saver)->Save(TrainStateRegistry::ForEngine(*engine), ContentsFor(cfg, *engine));
      ASSERT_TRUE(s.ok()) << s.status();
    }
  }
  const Config cfg = WithLayout(base, load_at);
  std::unique_ptr<Communicator> sub = SubWorld(load_at.world());
  if (sub != nullptr) {
    std::unique_ptr<ParallelEngine> engine = MakeEngine(cfg, *sub);
    ASSERT_NE(engine, nullptr);
    absl::StatusOr<std::string> dir = ResolveCheckpoint(root);
    ASSERT_TRUE(dir.ok()) << dir.status();
    absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(*dir);
    ASSERT_TRUE(reader.ok()) << reader.status();
    ASSERT_TRUE(CheckCompatible(**reader, cfg.model, /*need_optimizer=*/false).ok());
    const TrainStateRegistry weights = TrainStateRegistry::ForEngine(*engine, /*weights_only=*/true);
    EXPECT_FALSE(weights.has_optimizer());
    const absl::Status read = ReadState(**reader, weights);
    ASSERT_TRUE(AgreeOnStatus(*sub, read).ok()) << read;

    const CheckpointIndex& idx = (*reader)->index();
    uint64_t needed = 0, model_payload = 0;
    for (const auto& [key, t] : idx.tensors) {
      if (key.rfind("model/", 0) != 0) continue;
      for (const StoredBox& b : t.boxes) model_payload += b.nbytes;
    }
    for (const StateTensor& t : weights.tensors()) {
      EXPECT_EQ(t.key.rfind("model/", 0), 0u) << t.key;
      const std::vector<StoredBox>& boxes = idx.tensors.at(t.key).boxes;
      for (const StoredBox& b : boxes) {
        bool meets = false;
        for (const StatePiece& piece : t.loads) meets = meets || Meets(b.box, piece.box);
        if (meets) needed += b.nbytes;
      }
    }
    EXPECT_EQ((*reader)->bytes_read(), needed) << "rank " << sub->rank();
    // tp=2 x pp=2: a rank holds about a quarter of the weights (replicated norms and biases,
    // and the embedding's rows on both ends of the pipeline, make it more).
    EXPECT_LT((*reader)->bytes_read(), model_payload * 6 / 10)
        << "rank " << sub->rank() << " read " << (*reader)->bytes_read() << " of "
        << model_payload << " weight bytes";
    const NamedTensors loaded = Gathered(engine->GatherParameters());
    if (sub->rank() == 0) {
      EXPECT_EQ(FirstDifference(loaded, saved), "") << "the loaded weights differ from the saved";
    }
  }
}

}  // namespace
}  // namespace lattice

LATTICE_MPI_TEST_MAIN(checkpoint_mpi_test)
