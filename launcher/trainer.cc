#include "launcher/trainer.h"

#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/grad_norm.h"
#include "kernels/matmul.h"
#include "launcher/preflight.h"
#include "nlohmann/json.hpp"
#include "parallel/data_parallel.h"
#include "parallel/launch_env.h"
#include "runtime/data/dataset.h"
#include "runtime/status.h"
#include "runtime/system.h"
#include "runtime/text/tokenizer.h"
#include "runtime/io/output_file.h"

namespace lattice {

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const Config& cfg, Communicator& world) {
  std::unique_ptr<Trainer> tr(new Trainer(cfg, world));
  Config& c = tr->cfg_;
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
                  "ranks %d), OpenBLAS %s, kernels %s\n",
                  threads, c.train.threads > 0 ? "train.threads" : "default", affinity, local,
                  kernels::cpu::BlasThreading().c_str(), kernels::cpu::KernelIsa());
    }
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
  // initial weights when there are some (each rank reads the file: no broadcast of a model).
  LATTICE_ASSIGN_OR_RETURN(tr->engine_, ParallelEngine::Create(c, world));
  if (!c.train.init_weights.empty()) {
    absl::StatusOr<std::map<std::string, Tensor>> w = ReadWeights(c.model, c.train.init_weights);
    absl::Status loaded = w.status();
    if (loaded.ok()) {
      loaded = tr->engine_->LoadParameters([&w](const std::string& name) -> const Tensor* {
        auto it = w->find(name);
        return it == w->end() ? nullptr : &it->second;
      });
    }
    LATTICE_RETURN_IF_ERROR(AgreeOnStatus(world, loaded));
  }

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
  const ProcessGrid& grid = tr->engine_->grid();
  tr->train_ = std::make_unique<SampleStream>(streams.train, grid.dp_rank(), grid.dp_size(), mbs);
  tr->val_ = streams.val;
  tr->batches_.resize(tr->micro_batches_);

  if (!c.train.metrics_file.empty() && tr->is_logger()) {
    // A fresh run truncates the file; never through a symbolic link (runtime/io/output_file.h).
    absl::StatusOr<OutputStream> metrics =
        OpenOutputStream(c.train.metrics_file, ExistingContent::kTruncate);
    if (!metrics.ok()) return Annotate(metrics.status(), "train.metrics_file");
    tr->metrics_ = metrics->release();
  }
  return tr;
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
  m.grad_norm = r.grad_norm;
  // Megatron's behaviour for a non-finite loss or norm: skip the update, count it, go on.
  m.skipped = r.skipped;
  nan_iterations_ += r.skipped ? 1 : 0;
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

absl::Status Trainer::WriteMetrics(const StepMetrics& m, const double* val_loss) {
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
                      {"peak_in_flight_rank0", m.peak_in_flight}};
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
    std::printf(
        "lattice train: micro batch %lld x %lld micro-batches x dp %lld = global batch %lld, "
        "seq_len %lld\n",
        static_cast<long long>(cfg_.train.micro_batch_size), static_cast<long long>(micro_batches_),
        static_cast<long long>(dp_), static_cast<long long>(gbs), static_cast<long long>(mc.seq_len));
    std::printf(
        "lattice train: memory of rank 0: parameters %.2f MiB, gradients %.2f MiB, optimizer "
        "state %.2f MiB, activations %.2f MiB per micro-batch (+ %.2f MiB backward scratch)\n",
        mem.params / 1048576.0, mem.grads / 1048576.0, mem.optimizer_state / 1048576.0,
        model.activation_bytes() / 1048576.0, model.scratch_bytes() / 1048576.0);
    std::fflush(stdout);
  }
  const auto start = std::chrono::steady_clock::now();
  for (int64_t s = engine_->iteration(); s < cfg_.train.steps; ++s) {
    LATTICE_ASSIGN_OR_RETURN(StepMetrics m, Step());
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
          "rate: %.6E | global batch size: %5lld | lm loss: %.6E | loss scale: 1.0 | grad norm: "
          "%.3f | number of skipped iterations: %3lld | number of nan iterations: %3lld |\n",
          static_cast<long long>(m.step), static_cast<long long>(cfg_.train.steps),
          static_cast<long long>(m.consumed_samples), m.step_ms, m.tflops, m.tokens_per_s, m.lr,
          static_cast<long long>(gbs), m.loss, m.grad_norm, static_cast<long long>(m.skipped),
          static_cast<long long>(nan_iterations_));
    }
    if (have_val && is_logger()) {
      std::printf(" validation loss at iteration %lld | lm loss value: %.6E | lm loss PPL: %.6E |\n",
                  static_cast<long long>(m.step), val_loss, std::exp(val_loss));
    }
    std::fflush(stdout);
    LATTICE_RETURN_IF_ERROR(WriteMetrics(m, have_val ? &val_loss : nullptr));
  }
  const double minutes =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60.0;
  if (is_logger()) {
    std::printf("lattice train: %lld steps in %.2f minutes\n",
                static_cast<long long>(cfg_.train.steps), minutes);
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
  return absl::OkStatus();
}

}  // namespace lattice
