// The training loop: micro-batches with gradient accumulation, warmup + decay schedule,
// global-norm clipping, AdamW (or ZeRO-1), periodic evaluation, a Megatron-style console line
// and a JSONL metrics file. Data parallel over the world communicator (parallel/dp_step.h):
// with one rank it is the plain single-process loop. Tensor and pipeline parallelism are not
// wired in yet (parallel.tp/pp > 1 is rejected up front).
#ifndef LATTICE_LAUNCHER_TRAINER_H_
#define LATTICE_LAUNCHER_TRAINER_H_

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "model/weights_file.h"
#include "parallel/communicator.h"
#include "parallel/dp_step.h"
#include "parallel/engine.h"
#include "runtime/config.h"

namespace lattice {

class TrainingSamples;

// One micro-batch of token ids: inputs (B, T) and targets (B, T) = inputs shifted by one.
using MicroBatch = TokenBatch;

// Reads micro-batches of consecutive global samples from a sample stream.
class BatchReader {
 public:
  BatchReader(std::shared_ptr<const TrainingSamples> samples, int64_t seq_len)
      : samples_(std::move(samples)), seq_len_(seq_len) {}
  // Samples [first, first + b) of the global order.
  absl::Status Read(int64_t first, int64_t b, MicroBatch& out) const;

 private:
  std::shared_ptr<const TrainingSamples> samples_;
  int64_t seq_len_;
};

struct StepMetrics {
  int64_t step = 0;
  double loss = 0;
  float lr = 0;
  double grad_norm = 0;
  double step_ms = 0;
  double tokens_per_s = 0;
  double tflops = 0;  // achieved model TFLOP/s (REFERENCE.md section 4 convention)
  int64_t consumed_samples = 0;
  bool skipped = false;
  int64_t comm_bytes = 0;   // bytes this rank sent in the step (all groups, bus-bytes convention)
  int peak_in_flight = 0;   // micro-batch activation sets alive at once on this rank
};

class Trainer {
 public:
  // `world` must outlive the trainer; every rank calls Create with the same config.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const Config& cfg, Communicator& world);

  // Runs cfg.train.steps optimizer steps (logging, evaluating and finally saving weights).
  absl::Status Run();
  // One optimizer step over the global batch starting at consumed_samples().
  absl::StatusOr<StepMetrics> Step();
  // Mean loss over train.eval_iters micro-batches of the validation stream.
  absl::StatusOr<double> Evaluate();

  Decoder& model() { return engine_->model(); }
  const ParallelEngine& engine() const { return *engine_; }
  int64_t consumed_samples() const { return consumed_samples_; }

 private:
  Trainer(const Config& cfg, Communicator& world) : cfg_(cfg), world_(world) {}
  absl::Status WriteMetrics(const StepMetrics& m, const double* val_loss);
  // Global index of this rank's first sample of local micro-batch i, at `consumed` samples
  // (Megatron's sampler, runtime/dataset.h).
  int64_t FirstSample(int64_t consumed, int64_t i) const;
  bool is_logger() const { return world_.rank() == 0; }

  Config cfg_;
  Communicator& world_;
  int64_t dp_ = 1;
  std::unique_ptr<ParallelEngine> engine_;
  std::unique_ptr<BatchReader> train_;
  std::unique_ptr<BatchReader> val_;
  int64_t micro_batches_ = 1;  // local micro-batches per step: gbs / (mbs * dp)
  int64_t consumed_samples_ = 0;
  int64_t nan_iterations_ = 0;
  FILE* metrics_ = nullptr;
  std::vector<MicroBatch> batches_;
};

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_TRAINER_H_
