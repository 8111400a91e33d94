#include "launcher/trainer.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/grad_norm.h"
#include "kernels/matmul.h"
#include "launcher/preemption.h"
#include "launcher/preflight.h"
#include "launcher/sft_prepare.h"
#include "nlohmann/json.hpp"
#include "parallel/data_parallel.h"
#include "parallel/launch_env.h"
#include "parallel/planner.h"
#include "runtime/data/dataset.h"
#include "runtime/status.h"
#include "runtime/system.h"
#include "runtime/text/tokenizer.h"
#include "runtime/io/checkpoint_format.h"
#include "runtime/io/fault_injection.h"
#include "runtime/io/json_limits.h"
#include "runtime/io/output_file.h"
#include "runtime/io/tensorboard.h"

namespace lattice {

namespace {

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const Config& cfg, Communicator& world) {
  std::unique_ptr<Trainer> tr(new Trainer(cfg, world));
  Config& c = tr->cfg_;
  {
    // Communicator timeouts (docs/hangs.md), before any collective; every group split from the
    // world below inherits them. LATTICE_COMM_TIMEOUT_S overrides parallel.timeout_seconds.
    static_assert(ParallelConfig{}.timeout_seconds == kDefaultCommTimeoutSeconds);
    static_assert(ParallelConfig{}.abort_watchdog_seconds == kDefaultAbortWatchdogSeconds);
    CommTimeout timeout = world.timeout();
    timeout.seconds = c.parallel.timeout_seconds;
    timeout.abort_watchdog_seconds = c.parallel.abort_watchdog_seconds;
    LATTICE_ASSIGN_OR_RETURN(timeout, ApplyCommTimeoutEnv(timeout));
    world.set_timeout(timeout);
  }
  LATTICE_RETURN_IF_ERROR(c.ValidateLayout(world.size()));
  // Every output can be written, and none is an input, before any work (launcher/preflight.h);
  // checked where the files are written (rank 0), agreed by all.
  LATTICE_RETURN_IF_ERROR(
      AgreeOnStatus(world, tr->is_logger() ? CheckTrainOutputs(c) : absl::OkStatus()));
  tr->dp_ = c.parallel.dp;
  {
    // Threads per rank: train.threads, else the cores this rank really has (its affinity mask,
    // or its share of an unbound node): oversubscribed OpenMP threads spin against each other.
    auto env = ReadLaunchEnv();
    const int local = env.ok() && env->local_size > 0 ? env->local_size : world.size();
    const int affinity = AffinityCores();
    const int threads =
        c.train.threads > 0
            ? c.train.threads
            : kernels::cpu::DefaultThreadsPerRank(
                  affinity, static_cast<int>(std::thread::hardware_concurrency()), local);
    kernels::cpu::SetNumThreads(threads);
    if (tr->is_logger()) {
      std::printf("lattice train: %d CPU threads per rank (%s; affinity mask %d cores, local "
                  "ranks %d), GEMMs %s, OpenBLAS %s, kernels %s\n",
                  threads, c.train.threads > 0 ? "train.threads" : "default", affinity, local,
                  kernels::cpu::GemmLibraryName().c_str(), kernels::cpu::BlasThreading().c_str(),
                  kernels::cpu::KernelIsa());
    }
  }
  {
    // The device of every local rank (parallel/launch_env.h), printed once per node by its first
    // rank. The CPU backend has none ("cpu"); a device backend passes its device count.
    LATTICE_ASSIGN_OR_RETURN(LaunchEnv launch, DiscoverLaunchEnv(world));
    LATTICE_ASSIGN_OR_RETURN(std::string devices,
                             DescribeNodeDevices(launch, /*visible_devices=*/0, ProcessEnv()));
    if (launch.local_rank == 0) std::printf("lattice train: devices: %s\n", devices.c_str());
  }
  const int64_t mbs = c.train.micro_batch_size;
  tr->micro_batches_ = c.train.global_batch_size / (mbs * tr->dp_);

  // The tokenizer the data was prepared with must load (a wrong path is an error before any
  // work, not a surprise at generation time); its end-of-text id separates the documents of
  // llm.c / nanoGPT files. A tokenizer larger than the model's vocabulary is allowed (the data
  // may use only part of it: every token is checked against model.vocab_size as it is read),
  // but worth a warning.
  std::optional<int32_t> eot;
  if (!c.data.tokenizer.empty()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(c.data.tokenizer);
    if (!tok.ok()) return Annotate(tok.status(), "data.tokenizer");
    if ((*tok)->vocab_size() > c.model.vocab_size && tr->is_logger()) {
      std::fprintf(stderr,
                   "lattice train: warning: data.tokenizer '%s' has %lld ids but "
                   "model.vocab_size=%lld; data with larger ids will be refused\n",
                   c.data.tokenizer.c_str(), static_cast<long long>((*tok)->vocab_size()),
                   static_cast<long long>(c.model.vocab_size));
    }
    eot = (*tok)->eot_id();
  }

  // The engine initialises from train.seed; every rank then copies its shards out of the
  // initial weights when there are some (each rank reads only its boxes: no broadcast).
  LATTICE_ASSIGN_OR_RETURN(tr->engine_, ParallelEngine::Create(c, world));
  tr->registry_ = std::make_unique<TrainStateRegistry>(TrainStateRegistry::ForEngine(*tr->engine_));
  LATTICE_RETURN_IF_ERROR(tr->LoadInitialWeights());

  std::shared_ptr<const SampleSource> train_rows;
  if (c.data.format == DataFormat::kSft) {
    // Instruction data: prepared once (rank 0 writes, every rank then reads), docs/finetune.md.
    LATTICE_ASSIGN_OR_RETURN(SftStreams sft, OpenSftStreams(c, world));
    train_rows = std::move(sft.train);
    tr->val_ = std::move(sft.val);
  } else {
    DatasetOptions data = DatasetOptions::FromConfig(c);
    if (eot.has_value()) data.source_options.eot = *eot;
    // Without data.val there is no evaluation (rather than silently training on less data).
    if (c.data.val.empty()) data.val_fraction = 0;
    LATTICE_ASSIGN_OR_RETURN(Datasets streams, OpenDatasets(data));
    if (tr->is_logger()) {
      // Which format each file was read as, and why (runtime/data/token_file.h).
      for (int i = 0; i < streams.train->num_sources(); ++i) {
        std::printf("lattice train: data: %s\n", streams.train->source(i).Describe().c_str());
      }
    }
    train_rows = streams.train;
    tr->val_ = streams.val;
  }
  const ProcessGrid& grid = tr->engine_->grid();
  tr->train_ = std::make_unique<SampleStream>(train_rows, grid.dp_rank(), grid.dp_size(), mbs);
  tr->batches_.resize(tr->micro_batches_);

  if (!c.checkpoint.dir.empty()) {
    // What failed saves of an earlier run left behind is never a checkpoint: remove it before
    // this run saves into the same directory.
    absl::Status cleaned;
    if (tr->is_logger()) {
      absl::StatusOr<std::vector<std::string>> removed = RemoveCheckpointLeftovers(c.checkpoint.dir);
      cleaned = removed.status();
      if (removed.ok() && !removed->empty()) {
        std::printf("lattice train: removed what failed saves left in %s: %s\n",
                    c.checkpoint.dir.c_str(), absl::StrJoin(*removed, ", ").c_str());
      }
    }
    LATTICE_RETURN_IF_ERROR(Annotate(AgreeOnStatus(world, cleaned), "checkpoint.dir"));
    CheckpointOptions o;
    o.root = c.checkpoint.dir;
    o.async = c.checkpoint.async;
    o.direct_io = c.checkpoint.direct_io;
    o.keep = c.checkpoint.keep;
    o.keep_every = c.checkpoint.keep_every;
    LATTICE_ASSIGN_OR_RETURN(tr->saver_, CheckpointSaver::Create(world, o));
    // The async copy's buffer now, not in the first save's pause (agreed: one rank may lack
    // the memory).
    LATTICE_RETURN_IF_ERROR(Annotate(AgreeOnStatus(world, tr->saver_->Prepare(*tr->registry_)),
                                     "checkpoint.async"));
  }
  tr->spike_ = SpikeDetector(c.train.spike);
  LATTICE_RETURN_IF_ERROR(tr->Resume());
  LATTICE_RETURN_IF_ERROR(tr->OpenMetrics());
  absl::Status tensorboard;
  if (!c.train.tensorboard_dir.empty() && tr->is_logger()) {
    // A new event file per run, a resumed one too: its steps continue the older file's, and
    // its SessionLog START makes TensorBoard drop an older file's steps that this run repeats
    // (those a crashed run wrote after its last checkpoint).
    absl::StatusOr<std::unique_ptr<TensorBoardWriter>> w =
        TensorBoardWriter::Open(c.train.tensorboard_dir);
    tensorboard = w.status();
    if (w.ok()) tr->tensorboard_ = *std::move(w);
    if (w.ok() && !tr->resumed_from_.empty()) {
      tensorboard = tr->tensorboard_->AddSessionStart(tr->engine_->iteration() + 1);
    }
  }
  // Opened on rank 0 only; every rank learns the outcome before the first collective step.
  LATTICE_RETURN_IF_ERROR(AgreeOnStatus(world, tensorboard));
  return tr;
}

absl::Status Trainer::LoadInitialWeights() {
  // train.init_from (fine-tuning) and train.init_weights load the same way; Validate allows one.
  const bool from = !cfg_.train.init_from.empty();
  const std::string& path = from ? cfg_.train.init_from : cfg_.train.init_weights;
  const char* key = from ? "train.init_from" : "train.init_weights";
  if (path.empty()) return absl::OkStatus();
  const TrainStateRegistry weights = TrainStateRegistry::ForEngine(*engine_, /*weights_only=*/true);
  absl::Status loaded;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    absl::StatusOr<std::string> dir = ResolveCheckpoint(path);
    absl::StatusOr<std::unique_ptr<CheckpointReader>> reader =
        dir.ok() ? CheckpointReader::Open(*dir) : dir.status();
    loaded = reader.status();
    if (loaded.ok()) loaded = CheckCompatible(**reader, cfg_.model, /*need_optimizer=*/false);
    if (loaded.ok()) loaded = ReadState(**reader, weights);
  } else {
    loaded = LoadWeightsFile(path, cfg_.model, weights);
  }
  // bf16/fp16: these weights are the new fp32 masters (rounded into the compute copy).
  if (loaded.ok()) engine_->WeightsLoaded(/*masters_loaded=*/false);
  if (loaded.ok() && from && is_logger()) {
    std::printf("lattice train: %s: starting from the weights of %s (fresh optimizer, iteration "
                "0)\n", key, path.c_str());
  }
  return Annotate(AgreeOnStatus(world_, loaded), key);
}

CheckpointContents Trainer::Contents() const {
  CheckpointContents c;
  c.iteration = engine_->iteration();
  c.optimizer_step = engine_->optimizer().step();
  // Skipped: every iteration without an update; NaN: those whose loss or norm was not finite
  // for another reason than an fp16 overflow (all of them without fp16).
  c.skipped_iterations = skipped_iterations_;
  c.nan_iterations = nan_iterations_;
  if (const DynamicLossScaler* scaler = engine_->loss_scaler()) {
    c.loss_scaler = scaler->StateJson().dump();
  }
  c.seed = cfg_.train.seed;
  c.data_state = train_->State().ToJson();
  c.config_yaml = cfg_.ToYaml();
  c.layout = LayoutOf(cfg_);
  return c;
}

absl::Status Trainer::ResumeFrom(const std::string& dir, bool announce) {
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(dir);
  absl::Status ok = reader.status();
  if (ok.ok()) (*reader)->set_direct_io(cfg_.checkpoint.direct_io);
  if (ok.ok()) ok = CheckCompatible(**reader, cfg_.model, /*need_optimizer=*/true);
  absl::StatusOr<DataLoaderState> data = absl::InvalidArgumentError("no data state");
  if (ok.ok()) {
    if ((*reader)->index().data_state.empty()) {
      ok = absl::InvalidArgumentError(
          absl::StrCat(dir, ": the checkpoint has no data loader state"));
    } else {
      data = DataLoaderState::FromJson((*reader)->index().data_state);
      ok = data.status();
      // The data must give the samples the checkpointed run would have read next.
      if (ok.ok()) ok = Annotate(train_->Restore(*data), absl::StrCat(dir, ": data.*"));
    }
  }
  // Everything is checked on every rank before any rank reads a box.
  LATTICE_RETURN_IF_ERROR(AgreeOnStatus(world_, ok));
  const auto start = std::chrono::steady_clock::now();
  bool masters_loaded = false;
  // How many ranks read each stored box: those only this rank reads go past the page cache.
  std::vector<int32_t> readers = BoxesRead(**reader, *registry_);
  LATTICE_RETURN_IF_ERROR(world_.AllReduce(absl::MakeSpan(readers), ReduceOp::kSum));
  LATTICE_RETURN_IF_ERROR(
      AgreeOnStatus(world_, ReadState(**reader, *registry_, &masters_loaded, &readers)));
  // bf16/fp16: the masters come from the checkpoint when it has them (a mixed-precision run's),
  // otherwise from its weights; the weights become their compute copy.
  engine_->WeightsLoaded(masters_loaded);
  absl::Status scaler_ok;
  if (DynamicLossScaler* scaler = engine_->loss_scaler();
      scaler != nullptr && !(*reader)->index().loss_scaler.empty()) {
    scaler_ok = Annotate(
        scaler->LoadStateJson(nlohmann::json::parse((*reader)->index().loss_scaler)),
        absl::StrCat(dir, ": loss_scaler"));
  }
  LATTICE_RETURN_IF_ERROR(AgreeOnStatus(world_, scaler_ok));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const CheckpointIndex& idx = (*reader)->index();
  engine_->set_iteration(idx.iteration);
  engine_->optimizer().set_step(idx.optimizer_step);
  nan_iterations_ = idx.nan_iterations;
  skipped_iterations_ = idx.skipped_iterations;
  resumed_from_ = dir;
  spike_.Anchor(idx.iteration);  // a rollback may go back to here
  // Bytes read by this rank, summed over the ranks for the report.
  int64_t bytes[2] = {static_cast<int64_t>((*reader)->bytes_read()),
                      static_cast<int64_t>((*reader)->run_bytes_read())};
  LATTICE_RETURN_IF_ERROR(SumInRankOrder(world_, absl::MakeSpan(bytes)));
  if (is_logger() && announce) {
    std::printf("lattice train: resumed from %s (saved at %s) at iteration %lld, consumed "
                "samples %lld, optimizer step %lld; read %.1f MiB in %.2f s (%.2f GB/s; "
                "%.1f MiB of it read by one rank alone, with direct I/O)\n",
                dir.c_str(), idx.layout.ToString().c_str(), static_cast<long long>(idx.iteration),
                static_cast<long long>(data->consumed_samples),
                static_cast<long long>(idx.optimizer_step), bytes[0] / 1048576.0, seconds,
                seconds > 0 ? bytes[0] / seconds / 1e9 : 0.0, bytes[1] / 1048576.0);
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

absl::Status Trainer::Resume() {
  const CheckpointConfig& k = cfg_.checkpoint;
  if (k.resume == "none") return absl::OkStatus();
  if (k.resume != "auto") {
    // An explicit checkpoint (or a checkpoint root: its newest): no fallback.
    absl::StatusOr<std::string> dir = ResolveCheckpoint(k.resume);
    LATTICE_RETURN_IF_ERROR(Annotate(AgreeOnStatus(world_, dir.status()), "checkpoint.resume"));
    return Annotate(ResumeFrom(*dir), "checkpoint.resume");
  }
  if (k.dir.empty()) return absl::OkStatus();
  absl::StatusOr<std::vector<CheckpointEntry>> all = ListCheckpoints(k.dir);
  LATTICE_RETURN_IF_ERROR(Annotate(AgreeOnStatus(world_, all.status()), "checkpoint.dir"));
  if (all->empty()) {
    if (is_logger()) {
      std::printf("lattice train: no checkpoint in %s yet: starting from iteration 0\n",
                  k.dir.c_str());
    }
    return absl::OkStatus();
  }
  std::vector<std::string> errors;
  for (auto it = all->rbegin(); it != all->rend(); ++it) {
    absl::Status s = ResumeFrom(it->path);
    if (s.ok()) {
      if (!errors.empty() && is_logger()) {
        std::printf("lattice train: fell back to %s, the newest usable checkpoint\n",
                    it->path.c_str());
      }
      return absl::OkStatus();
    }
    errors.push_back(std::string(s.message()));
    if (is_logger()) {
      std::fprintf(stderr, "lattice train: warning: checkpoint %s is unusable: %s\n",
                   it->path.c_str(), std::string(s.message()).c_str());
      std::fflush(stderr);
    }
  }
  return absl::DataLossError(absl::StrCat(
      "checkpoint.resume=auto: none of the ", all->size(), " committed checkpoints in ", k.dir,
      " is usable (", absl::StrJoin(errors, "; "),
      "); fix or remove them, or start afresh with checkpoint.resume=none"));
}

absl::Status Trainer::OpenMetrics() {
  if (cfg_.train.metrics_file.empty() || !is_logger()) return absl::OkStatus();
  const std::string& path = cfg_.train.metrics_file;
  // Never through a symbolic link (runtime/io/output_file.h).
  absl::StatusOr<OutputStream> metrics = OpenOutputStream(
      path, resumed_from_.empty() ? ExistingContent::kTruncate : ExistingContent::kAppend);
  if (!metrics.ok()) return Annotate(metrics.status(), "train.metrics_file");
  metrics_ = metrics->release();
  // The rows up to the checkpoint's iteration stay; the crashed run's rows after it (and a line
  // cut short by the crash) go, since this run computes those iterations again.
  if (!resumed_from_.empty()) return DropMetricsAfter(engine_->iteration());
  return absl::OkStatus();
}

absl::Status Trainer::DropMetricsAfter(int64_t iteration) {
  if (metrics_ == nullptr) return absl::OkStatus();
  const std::string& path = cfg_.train.metrics_file;
  if (std::fflush(metrics_) != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("train.metrics_file: write to '", path, "' failed"));
  }
  std::ifstream in(path, std::ios::binary);
  std::string line;
  int64_t keep = 0, dropped = 0;
  bool cut = false;
  while (std::getline(in, line)) {
    const bool complete = !in.eof();
    if (!cut) {
      absl::StatusOr<nlohmann::json> row = ParseJson(line);
      const bool before = complete && row.ok() && row->is_object() && row->contains("step") &&
                          (*row)["step"].is_number_integer() &&
                          (*row)["step"].get<int64_t>() <= iteration;
      if (before) {
        keep += static_cast<int64_t>(line.size()) + 1;
        continue;
      }
      cut = true;
    }
    ++dropped;
  }
  // A fresh run's stream is not O_APPEND: it must write on from the new end, not the old one.
  if (::ftruncate(::fileno(metrics_), keep) != 0 || std::fseek(metrics_, keep, SEEK_SET) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("train.metrics_file: cannot truncate '",
                                                    path, "': ", std::strerror(errno)));
  }
  if (dropped > 0) {
    std::printf("lattice train: %s: dropped %lld row(s) after iteration %lld (this run "
                "repeats them)\n",
                path.c_str(), static_cast<long long>(dropped), static_cast<long long>(iteration));
  }
  return absl::OkStatus();
}

void Trainer::Report(const std::optional<SaveStats>& stats) {
  if (!stats.has_value()) return;
  spike_.Anchor(stats->iteration);  // the newest committed checkpoint: where a rollback goes
  if (!is_logger()) return;
  const SaveStats& s = *stats;
  std::printf(
      "lattice train: checkpoint %s committed: %.1f MiB from %d rank(s) in %.2f s (shard write "
      "%.2f s on the slowest rank, %.2f GB/s all ranks%s), commit %.3f s, host copy %.1f MiB "
      "(largest rank)%s%s\n",
      s.path.c_str(), s.bytes / 1048576.0, world_.size(), s.total_seconds, s.write_seconds,
      s.write_seconds > 0 ? s.bytes / s.write_seconds / 1e9 : 0.0,
      cfg_.checkpoint.async ? absl::StrFormat(", async copy %.3f s", s.copy_seconds).c_str() : "",
      s.commit_seconds, s.host_copy_bytes / 1048576.0, s.removed.empty() ? "" : "; removed ",
      absl::StrJoin(s.removed, ", ").c_str());
  std::fflush(stdout);
}

absl::StatusOr<StepMetrics> Trainer::Step() {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const int64_t mbs = cfg_.train.micro_batch_size;
  StepMetrics m;
  m.step = engine_->iteration() + 1;
  m.lr = LearningRate(cfg_.train, m.step);
  // The loss is the mean over every counted target of the global batch (not a mean of
  // micro-batch means), so the result does not depend on micro-batching or the number of ranks.
  for (int64_t i = 0; i < micro_batches_; ++i) {
    LATTICE_RETURN_IF_ERROR(train_->Next(batches_[i]));
  }
  LATTICE_ASSIGN_OR_RETURN(EngineStepResult r, engine_->Step(batches_, m.lr));
  m.loss = r.loss;
  // Test hook (runtime/io/fault_injection.h): a loss spike at one iteration, once per process.
  if (std::optional<double> factor = TakeFaultValue("scale_loss", world_.rank(), m.step)) {
    m.loss *= *factor;
  }
  m.grad_norm = r.grad_norm;
  // Megatron's behaviour for a non-finite loss or norm: skip the update, count it, go on.
  m.skipped = r.skipped;
  m.overflow = r.overflow;
  m.loss_scale = r.loss_scale;
  skipped_iterations_ += r.skipped ? 1 : 0;
  nan_iterations_ += r.skipped && !r.overflow ? 1 : 0;
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  const double tokens = static_cast<double>(micro_batches_ * mbs * dp_ * cfg_.model.seq_len);
  m.step_ms = ms;
  m.tokens_per_s = tokens / (ms / 1000.0);
  // Per device, as Megatron's "throughput per GPU": the model's FLOPs over all ranks.
  m.tflops = engine_->model().FlopsPerToken(cfg_.model.seq_len) * m.tokens_per_s /
             world_.size() / 1e12;
  m.consumed_samples = train_->consumed_samples();
  m.comm_bytes = r.bytes.bytes();
  m.peak_in_flight = r.peak_in_flight;
  return m;
}

absl::StatusOr<double> Trainer::Evaluate() {
  if (!val_) return absl::FailedPreconditionError("no validation data (data.val)");
  const int64_t mbs = cfg_.train.micro_batch_size;
  // As Megatron: eval_iters global batches of the validation order (eval_iters *
  // global_batch_size samples), shared by the data-parallel ranks, so the value does not
  // depend on the layout.
  const ProcessGrid& grid = engine_->grid();
  SampleStream stream(val_, grid.dp_rank(), grid.dp_size(), mbs);
  std::vector<TokenBatch> batches(cfg_.train.eval_iters * micro_batches_);
  for (TokenBatch& b : batches) LATTICE_RETURN_IF_ERROR(stream.Next(b));
  LATTICE_ASSIGN_OR_RETURN(auto sums, engine_->Evaluate(batches));
  return sums.second > 0 ? sums.first / static_cast<double>(sums.second) : 0.0;
}

absl::Status Trainer::WriteMetrics(const StepMetrics& m, const double* val_loss,
                                   double checkpoint_ms, bool save_in_flight) {
  if (metrics_ == nullptr && tensorboard_ == nullptr) return absl::OkStatus();
  // The loss scale is 1 without fp16 (as the console line prints). Memory is rank 0's peak
  // resident set so far. MFU only where the device's peak is known.
  const double peak_rss_mib = PeakResidentBytes() / 1048576.0;
  const double peak = cfg_.train.peak_tflops;
  if (tensorboard_ != nullptr) {
    std::vector<tensorboard::Scalar> s = {
        {"train/loss", static_cast<float>(m.loss)},
        {"train/lr", m.lr},
        {"train/grad_norm", static_cast<float>(m.grad_norm)},
        {"train/tokens_per_s", static_cast<float>(m.tokens_per_s)},
        {"train/step_ms", static_cast<float>(m.step_ms)},
        {"train/tflops", static_cast<float>(m.tflops)},
        {"train/peak_rss_mib", static_cast<float>(peak_rss_mib)},
        {"train/loss_scale", m.loss_scale}};
    if (peak > 0) s.push_back({"train/mfu", static_cast<float>(m.tflops / peak)});
    if (val_loss != nullptr) s.push_back({"val/loss", static_cast<float>(*val_loss)});
    LATTICE_RETURN_IF_ERROR(tensorboard_->AddScalars(m.step, s));
    const int64_t every = cfg_.train.log_interval;
    if ((every > 0 && m.step % every == 0) || m.step == cfg_.train.steps) {
      LATTICE_RETURN_IF_ERROR(tensorboard_->Flush());
    }
  }
  if (metrics_ == nullptr) return absl::OkStatus();
  nlohmann::json j = {{"step", m.step},
                      {"loss", m.loss},
                      {"lr", m.lr},
                      {"grad_norm", m.grad_norm},
                      {"tokens_per_s", m.tokens_per_s},
                      {"step_ms", m.step_ms},
                      {"tflops", m.tflops},
                      {"consumed_samples", m.consumed_samples},
                      {"skipped", m.skipped},
                      {"layout", engine_->LayoutString()},
                      {"comm_bytes_rank0", m.comm_bytes},
                      {"peak_in_flight_rank0", m.peak_in_flight},
                      {"loss_scale", m.loss_scale},
                      {"overflow", m.overflow},
                      {"peak_rss_mib", peak_rss_mib}};
  if (peak > 0) j["mfu"] = m.tflops / peak;
  // The training loop's pause for checkpoints at this step boundary (a sync save, an async
  // save's copy, or committing one): what async saving is meant to make small.
  // And whether an async save was being written while this step ran.
  if (saver_ != nullptr) {
    j["checkpoint_ms"] = checkpoint_ms;
    j["checkpoint_in_flight"] = save_in_flight;
  }
  if (val_loss != nullptr) {
    j["val_loss"] = *val_loss;
    j["val_ppl"] = std::exp(*val_loss);
  }
  const std::string line = j.dump() + "\n";
  if (std::fputs(line.c_str(), metrics_) < 0 || std::fflush(metrics_) != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("train.metrics_file: write to '", cfg_.train.metrics_file, "' failed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Trainer::CheckSpike(const StepMetrics& m) {
  // An fp16 overflow is the loss scaler's business (it backs off), not a divergence.
  const SpikeVerdict verdict = spike_.Observe(m.step, m.loss, m.skipped && !m.overflow);
  // Every rank learns, at this step boundary, whether any rank's detector triggered (one MAX
  // all-reduce, as preemption agrees): all of them roll back together or none does. The value
  // names the highest rank that saw it, for the message of the ranks that did not.
  int32_t who = verdict.triggered() ? world_.rank() + 1 : 0;
  LATTICE_RETURN_IF_ERROR(world_.AllReduce(&who, 1, CommType::kI32, ReduceOp::kMax));
  if (who == 0) return false;
  const std::string reason =
      verdict.triggered()
          ? verdict.Describe()
          : absl::StrCat("rank ", who - 1, " saw a loss spike or non-finite steps at iteration ",
                         m.step, " (this rank's loss ", absl::StrFormat("%.6g", m.loss), ")");
  LATTICE_RETURN_IF_ERROR(RollBack(reason, verdict, m.step));
  return true;
}

absl::Status Trainer::RollBack(const std::string& reason, const SpikeVerdict& verdict,
                               int64_t step) {
  const SpikeConfig& sc = cfg_.train.spike;
  // A save in flight is of an iteration before the spike: commit it, it is the newest good one.
  if (saver_ != nullptr) {
    LATTICE_ASSIGN_OR_RETURN(std::optional<SaveStats> committed, saver_->Finish());
    Report(committed);
  }
  const std::string skipped_so_far = FormatSampleRanges(train_->skipped());
  if (!spike_.CanRollBack()) {
    return absl::AbortedError(absl::StrCat(
        "train.spike: ", reason, "; the run already rolled back ", spike_.rollbacks(),
        " time(s) and train.spike.max_rollbacks=", sc.max_rollbacks,
        ": stopping (samples skipped so far: ", skipped_so_far, ")",
        saver_ != nullptr ? "; the newest committed checkpoint is in checkpoint.dir" : ""));
  }
  // Validate() refuses rollbacks without checkpoint.dir; a Config built in code may not have
  // been through it.
  if (saver_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "train.spike: ", reason, ", but checkpoint.dir is empty: there is nothing to roll back to"));
  }
  const std::string& root = cfg_.checkpoint.dir;
  absl::StatusOr<std::vector<CheckpointEntry>> all = ListCheckpoints(root);
  LATTICE_RETURN_IF_ERROR(Annotate(AgreeOnStatus(world_, all.status()), "checkpoint.dir"));
  // Only checkpoints before the spike: a directory may hold newer ones of an older run when
  // checkpoint.resume named an older checkpoint.
  std::vector<CheckpointEntry> candidates;
  for (auto it = all->rbegin(); it != all->rend(); ++it) {
    if (it->iteration < step) candidates.push_back(*it);
  }
  if (candidates.empty()) {
    const int64_t every = cfg_.checkpoint.interval;
    return absl::FailedPreconditionError(absl::StrCat(
        "train.spike: ", reason, ", but ", root,
        " holds no committed checkpoint before iteration ", step, " to roll back to",
        every > 0 ? absl::StrCat(" (the first is saved at iteration ", every,
                                 ", checkpoint.interval=", every, ")")
                  : std::string(" (checkpoint.interval=0 saves only at the end)"),
        "; lower checkpoint.interval so that one exists before the detector can fire"));
  }
  const int64_t end = train_->consumed_samples();
  std::vector<SampleRange> skipped = train_->skipped();
  std::string dir;
  std::vector<std::string> errors;
  for (const CheckpointEntry& c : candidates) {
    absl::Status loaded = ResumeFrom(c.path, /*announce=*/false);
    if (loaded.ok()) {
      dir = c.path;
      break;
    }
    errors.push_back(std::string(loaded.message()));
    if (is_logger()) {
      std::fprintf(stderr, "lattice train: warning: rollback: checkpoint %s is unusable: %s\n",
                   c.path.c_str(), std::string(loaded.message()).c_str());
    }
  }
  if (dir.empty()) {
    return absl::DataLossError(absl::StrCat("train.spike: ", reason, ", but none of the ",
                                            candidates.size(), " checkpoints before it in ", root,
                                            " loads (", absl::StrJoin(errors, "; "), ")"));
  }
  // The window read since the checkpoint, in global sample coordinates, is never read again;
  // the ranges skipped by earlier rollbacks stay skipped (the checkpoint may predate them).
  const int64_t iteration = engine_->iteration();
  const SampleRange window{train_->consumed_samples(), end};
  skipped.push_back(window);
  for (const SampleRange& r : skipped) LATTICE_RETURN_IF_ERROR(train_->Skip(r));
  spike_.RollBack(iteration);

  absl::Status logged;
  if (is_logger()) {
    std::printf("lattice train: rollback: %s; reloading iteration %lld (%s), skipping samples "
                "[%lld, %lld) (rollback %lld of at most %lld; skipped in all: %s)\n",
                reason.c_str(), static_cast<long long>(iteration), dir.c_str(),
                static_cast<long long>(window.begin), static_cast<long long>(window.end),
                static_cast<long long>(spike_.rollbacks()),
                static_cast<long long>(sc.max_rollbacks),
                FormatSampleRanges(train_->skipped()).c_str());
    std::fflush(stdout);
    // The metrics keep every iteration once: the rolled-back rows go (the run repeats those
    // iterations), and a rollback record takes their place. Its "step" is the iteration
    // reloaded, so a later resume keeps it exactly when it keeps that iteration's row.
    logged = DropMetricsAfter(iteration);
    if (logged.ok() && metrics_ != nullptr) {
      nlohmann::json j = {{"event", "rollback"},
                          {"step", iteration},
                          {"spike_step", step},
                          {"reason", reason},
                          {"trigger", verdict.kind == SpikeVerdict::Kind::kNonFinite ? "nonfinite"
                                      : verdict.kind == SpikeVerdict::Kind::kSpike  ? "spike"
                                                                                   : "other rank"},
                          {"checkpoint", dir},
                          {"skipped_begin", window.begin},
                          {"skipped_end", window.end},
                          {"skipped", SampleRangesToJson(train_->skipped())},
                          {"rollbacks", spike_.rollbacks()}};
      // A NaN or Inf loss has no JSON number: it is written as null.
      j["loss"] = std::isfinite(verdict.loss) ? nlohmann::json(verdict.loss) : nlohmann::json();
      if (verdict.kind == SpikeVerdict::Kind::kSpike) {
        j["sigma"] = std::isfinite(verdict.sigma) ? nlohmann::json(verdict.sigma) : nlohmann::json();
        j["window_mean"] = verdict.mean;
        j["window_std"] = verdict.stddev;
        j["window"] = verdict.window;
      }
      const std::string line = j.dump() + "\n";
      if (std::fputs(line.c_str(), metrics_) < 0 || std::fflush(metrics_) != 0) {
        logged = absl::ResourceExhaustedError(
            absl::StrCat("train.metrics_file: write to '", cfg_.train.metrics_file, "' failed"));
      }
    }
    // TensorBoard drops the steps after the reloaded iteration, as after a resume.
    if (logged.ok() && tensorboard_ != nullptr) {
      logged = tensorboard_->AddSessionStart(iteration + 1);
    }
  }
  LATTICE_RETURN_IF_ERROR(AgreeOnStatus(world_, logged));
  // The skip is training state: save the reloaded iteration again at once, now with the skipped
  // range, so a crash before the next checkpoint cannot resume into the same window.
  SetCheckpointInProgress(true);
  LATTICE_ASSIGN_OR_RETURN(std::optional<SaveStats> committed,
                           saver_->Save(*registry_, Contents()));
  Report(committed);
  SetCheckpointInProgress(saver_->in_flight());
  return absl::OkStatus();
}

absl::Status Trainer::StopEarly(const StopDecision& stop, int64_t iteration) {
  if (is_logger()) {
    std::printf("lattice train: stopping after iteration %lld on %s: saving a checkpoint\n",
                static_cast<long long>(iteration), stop.Describe().c_str());
    std::fflush(stdout);
  }
  if (saver_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stopped after iteration ", iteration, " on ", stop.Describe(),
        " without a checkpoint: checkpoint.dir is empty, so a restart begins at iteration 0"));
  }
  SetCheckpointInProgress(true);
  // The loop saved this iteration already when it was a checkpoint.interval one (a sync save
  // is committed; an async one is still in flight and Finish commits it). Otherwise Save first
  // commits any older save in flight, then saves this iteration.
  const int64_t every = cfg_.checkpoint.interval;
  if (!(every > 0 && iteration % every == 0)) {
    LATTICE_ASSIGN_OR_RETURN(std::optional<SaveStats> committed,
                             saver_->Save(*registry_, Contents()));
    Report(committed);
  }
  LATTICE_ASSIGN_OR_RETURN(std::optional<SaveStats> committed, saver_->Finish());
  Report(committed);
  SetCheckpointInProgress(false);
  if (metrics_ != nullptr) std::fclose(metrics_);
  metrics_ = nullptr;
  if (tensorboard_ != nullptr) LATTICE_RETURN_IF_ERROR(tensorboard_->Close());
  tensorboard_ = nullptr;
  return StoppedStatus(stop, iteration, cfg_.train.steps,
                       (std::filesystem::path(cfg_.checkpoint.dir) / CheckpointDirName(iteration))
                           .string());
}

absl::Status Trainer::Run() {
  const ModelConfig& mc = cfg_.model;
  const int64_t gbs = micro_batches_ * cfg_.train.micro_batch_size * dp_;
  const EngineMemory mem = engine_->memory();
  const Decoder& model = engine_->model();
  if (is_logger()) {
    std::printf("lattice train: %s model, %lld parameters (%lld in matmuls), layout %s\n",
                mc.arch == Arch::kGpt2 ? "gpt2" : "llama",
                static_cast<long long>(Decoder::CountParameters(mc)),
                static_cast<long long>(model.num_matmul_params()),
                engine_->LayoutString().c_str());
    if (cfg_.train.precision != DType::kF32) {
      const char* p = cfg_.train.precision == DType::kBF16 ? "bf16" : "fp16";
      std::printf("lattice train: precision %s: %s weights, activations and activation gradients "
                  "(stored rounded on the %s backend), fp32 master weights, moments and "
                  "gradients%s\n",
                  p, p, model.backend().name().c_str(),
                  cfg_.train.precision == DType::kF16 ? absl::StrFormat(
                      ", dynamic loss scale from %g", cfg_.train.initial_loss_scale).c_str()
                                                      : "");
    }
    std::printf(
        "lattice train: micro batch %lld x %lld micro-batches x dp %lld = global batch %lld, "
        "seq_len %lld\n",
        static_cast<long long>(cfg_.train.micro_batch_size), static_cast<long long>(micro_batches_),
        static_cast<long long>(dp_), static_cast<long long>(gbs), static_cast<long long>(mc.seq_len));
    std::printf(
        "lattice train: memory of rank 0: parameters %.2f MiB, gradients %.2f MiB, optimizer "
        "state %.2f MiB, activations %.2f MiB per micro-batch with recompute=%s (+ %.2f MiB "
        "backward scratch, %.2f MiB of it the recompute layer set; docs/memory.md)\n",
        mem.params / 1048576.0, mem.grads / 1048576.0, mem.optimizer_state / 1048576.0,
        model.activation_bytes() / 1048576.0, RecomputeName(model.recompute()).data(),
        model.scratch_bytes() / 1048576.0, model.recompute_scratch_bytes() / 1048576.0);
    std::fflush(stdout);
  }
  const auto start = std::chrono::steady_clock::now();
  const int64_t first_iteration = engine_->iteration();  // > 0 after a resume
  for (int64_t s = engine_->iteration(); s < cfg_.train.steps; ++s) {
    MaybeInjectFault("train_step", world_.rank(), s + 1);
    SetFaultInjectionStep(s + 1);  // for the communicator's collective_stop point
    const bool save_in_flight = saver_ != nullptr && saver_->in_flight();
    LATTICE_ASSIGN_OR_RETURN(StepMetrics m, Step());
    if (spike_.enabled()) {
      LATTICE_ASSIGN_OR_RETURN(const bool rolled_back, CheckSpike(m));
      if (rolled_back) {
        // Continue after the checkpoint's iteration (the loop's ++s makes s that iteration);
        // nothing of the rolled-back step is evaluated, logged or saved.
        s = engine_->iteration() - 1;
        continue;
      }
    }
    double val_loss = 0;
    bool have_val = false;
    if (val_ && cfg_.train.eval_interval > 0 &&
        (m.step % cfg_.train.eval_interval == 0 || m.step == cfg_.train.steps)) {
      LATTICE_ASSIGN_OR_RETURN(val_loss, Evaluate());
      have_val = true;
    }
    if (is_logger() && cfg_.train.log_interval > 0 &&
        (m.step % cfg_.train.log_interval == 0 || m.step == cfg_.train.steps || m.step == 1)) {
      std::printf(
          " iteration %8lld/%8lld | consumed samples: %12lld | elapsed time per iteration (ms): "
          "%.1f | throughput per GPU (TFLOP/s/GPU): %.3f | tokens per second: %.0f | learning "
          "rate: %.6E | global batch size: %5lld | lm loss: %.6E | loss scale: %.1f | grad norm: "
          "%.3f | number of skipped iterations: %3lld | number of nan iterations: %3lld |\n",
          static_cast<long long>(m.step), static_cast<long long>(cfg_.train.steps),
          static_cast<long long>(m.consumed_samples), m.step_ms, m.tflops, m.tokens_per_s, m.lr,
          static_cast<long long>(gbs), m.loss, static_cast<double>(m.loss_scale), m.grad_norm,
          static_cast<long long>(m.skipped),
          static_cast<long long>(nan_iterations_));
    }
    if (have_val && is_logger()) {
      std::printf(" validation loss at iteration %lld | lm loss value: %.6E | lm loss PPL: %.6E |\n",
                  static_cast<long long>(m.step), val_loss, std::exp(val_loss));
    }
    std::fflush(stdout);
    double checkpoint_ms = 0;
    if (saver_ != nullptr) {
      const auto pause = std::chrono::steady_clock::now();
      LATTICE_ASSIGN_OR_RETURN(std::optional<SaveStats> committed, saver_->Poll());
      Report(committed);
      const int64_t every = cfg_.checkpoint.interval;
      if ((every > 0 && m.step % every == 0) || m.step == cfg_.train.steps) {
        SetCheckpointInProgress(true);  // a stop signal from here on lands "during a save"
        LATTICE_ASSIGN_OR_RETURN(committed, saver_->Save(*registry_, Contents()));
        Report(committed);
      }
      SetCheckpointInProgress(saver_->in_flight());
      checkpoint_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - pause)
              .count();
    }
    LATTICE_RETURN_IF_ERROR(
        WriteMetrics(m, have_val ? &val_loss : nullptr, checkpoint_ms, save_in_flight));
    // Preemption and train.exit_after_minutes (launcher/preemption.h): every rank learns here,
    // at the same iteration, whether any rank got SIGUSR1/SIGTERM or ran out of time.
    LATTICE_ASSIGN_OR_RETURN(const StopDecision stop,
                             AgreeToStop(world_, cfg_.train.exit_after_minutes));
    if (stop.stop() && m.step < cfg_.train.steps) return StopEarly(stop, m.step);
  }
  if (saver_ != nullptr) {
    // An async save still writing: wait for it, commit it, surface its error.
    LATTICE_ASSIGN_OR_RETURN(std::optional<SaveStats> committed, saver_->Finish());
    Report(committed);
  }
  const double minutes =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60.0;
  // The largest rank's peak resident memory over the whole run (what a checkpoint's host copy
  // adds shows up here: tests/bench/checkpoint_bench.py compares runs).
  int32_t peak_mib = static_cast<int32_t>(PeakResidentBytes() >> 20);
  LATTICE_RETURN_IF_ERROR(world_.AllReduce(&peak_mib, 1, CommType::kI32, ReduceOp::kMax));
  if (is_logger()) {
    std::printf("lattice train: peak resident memory %d MiB (largest rank)\n", peak_mib);
    std::printf("lattice train: %lld steps in %.2f minutes\n",
                static_cast<long long>(std::max<int64_t>(cfg_.train.steps - first_iteration, 0)),
                minutes);
  }
  if (!cfg_.train.save_weights.empty()) {
    // The shards are gathered (collective); rank 0 writes, and every rank learns the outcome.
    LATTICE_ASSIGN_OR_RETURN(auto tensors, engine_->GatherParameters());
    absl::Status saved =
        is_logger() ? SaveWeights(mc, tensors, cfg_.train.save_weights) : absl::OkStatus();
    LATTICE_RETURN_IF_ERROR(AgreeOnStatus(world_, saved));
    if (is_logger()) std::printf("lattice train: saved weights to %s\n", cfg_.train.save_weights.c_str());
  }
  if (metrics_ != nullptr) std::fclose(metrics_);
  metrics_ = nullptr;
  if (tensorboard_ != nullptr) LATTICE_RETURN_IF_ERROR(tensorboard_->Close());
  tensorboard_ = nullptr;
  return absl::OkStatus();
}

}  // namespace lattice
