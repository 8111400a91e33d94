// The training loop: micro-batches with gradient accumulation, warmup + decay schedule,
// global-norm clipping, AdamW (or ZeRO-1), periodic evaluation, a Megatron-style console line
// and a JSONL metrics file, for any (dp, tp, pp) layout of the world (parallel/engine.h; with
// one rank it is the plain single-process loop). Samples come from the dataset's own
// data-parallel cursor (runtime/data/dataset.h, SampleStream), whose DataLoaderState is what a
// checkpoint saves.
//
// Checkpoints (parallel/checkpoint.h, docs/checkpoints.md): with checkpoint.dir set, the whole
// training state is saved every checkpoint.interval iterations and at the end (sync or async),
// and checkpoint.resume (auto: the newest good checkpoint of checkpoint.dir, falling back to
// older ones when the newest is damaged; or a path) restores it onto this run's layout before
// the first step: the weights, AdamW's moments and step, the iteration, the NaN-iteration count
// and the data position. A resumed run appends to its metrics file (dropping the rows of
// iterations after the checkpoint, which the run repeats), so the step numbers continue.
//
// Loss spikes and NaNs (train.spike, launcher/spike.h, docs/recovery.md): on a spike or a run
// of non-finite steps every rank reloads the newest committed checkpoint, the loader skips the
// global samples read since it (saved in every later checkpoint), and training goes on.
#ifndef LATTICE_LAUNCHER_TRAINER_H_
#define LATTICE_LAUNCHER_TRAINER_H_

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "launcher/preemption.h"
#include "launcher/spike.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "model/weights_file.h"
#include "parallel/checkpoint.h"
#include "parallel/communicator.h"
#include "parallel/engine.h"
#include "runtime/config.h"
#include "runtime/data/dataset.h"
#include "runtime/io/tensorboard.h"

namespace lattice {

struct StepMetrics {
  int64_t step = 0;  // the iteration (1-based), skipped ones included
  double loss = 0;
  float lr = 0;
  double grad_norm = 0;
  double step_ms = 0;
  double tokens_per_s = 0;
  double tflops = 0;  // achieved model TFLOP/s (REFERENCE.md section 4 convention)
  int64_t consumed_samples = 0;
  bool skipped = false;
  bool overflow = false;    // fp16: skipped because the gradients overflowed (not a NaN loss)
  float loss_scale = 1.0f;  // fp16: the loss scale after this step; 1 otherwise
  int64_t comm_bytes = 0;   // bytes this rank sent in the step (all groups, bus-bytes convention)
  int peak_in_flight = 0;   // micro-batch activation sets alive at once on this rank
};

class Trainer {
 public:
  // `world` must outlive the trainer; every rank calls Create with the same config.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const Config& cfg, Communicator& world);

  // Runs cfg.train.steps optimizer steps (logging, evaluating and finally saving weights).
  absl::Status Run();
  // One iteration over the next global batch of the training stream.
  absl::StatusOr<StepMetrics> Step();
  // Mean loss over train.eval_iters global batches of the validation stream (from its start).
  absl::StatusOr<double> Evaluate();

  Decoder& model() { return engine_->model(); }
  const ParallelEngine& engine() const { return *engine_; }
  int64_t consumed_samples() const { return train_->consumed_samples(); }
  // Where the training data stream is: what a checkpoint saves and a resume restores.
  DataLoaderState data_state() const { return train_->State(); }
  // The checkpoint this run resumed from ("" for a fresh start).
  const std::string& resumed_from() const { return resumed_from_; }

 private:
  Trainer(const Config& cfg, Communicator& world) : cfg_(cfg), world_(world) {}
  absl::Status WriteMetrics(const StepMetrics& m, const double* val_loss, double checkpoint_ms,
                            bool save_in_flight);
  bool is_logger() const { return world_.rank() == 0; }
  // train.init_weights: a checkpoint directory or a safetensors file; each rank reads only the
  // boxes (rows and columns) it holds. Collective.
  absl::Status LoadInitialWeights();
  // checkpoint.resume. Collective.
  absl::Status Resume();
  // Restores the state of one checkpoint directory. Collective; on error nothing of the
  // checkpoint is kept (a later candidate overwrites all of it).
  // `announce`: print the "resumed from" line (rank 0).
  absl::Status ResumeFrom(const std::string& dir, bool announce = true);
  CheckpointContents Contents() const;
  // Prints a committed save (rank 0) and tells the spike detector (every rank).
  void Report(const std::optional<SaveStats>& stats);
  // train.spike (launcher/spike.h): feeds the step to the detector, agrees with every rank
  // whether any of them saw a spike, and if so rolls back (RollBack). Returns whether it did.
  // Collective.
  absl::StatusOr<bool> CheckSpike(const StepMetrics& m);
  // Reloads the newest committed checkpoint before iteration `step`, skips the samples read
  // since it, records that (log, metrics, the checkpoint re-saved with the skip), or returns
  // the error that stops the run. Collective.
  absl::Status RollBack(const std::string& reason, const SpikeVerdict& verdict, int64_t step);
  // Drops the rows of iterations after `iteration` from the open metrics file (rank 0).
  absl::Status DropMetricsAfter(int64_t iteration);
  // After every rank agreed to stop (launcher/preemption.h): commits a checkpoint of
  // `iteration` and returns StoppedStatus. Collective.
  absl::Status StopEarly(const StopDecision& stop, int64_t iteration);
  // Opens train.metrics_file: truncated for a fresh run; appended to after a resume, without
  // the rows of iterations after it.
  absl::Status OpenMetrics();

  Config cfg_;
  Communicator& world_;
  int64_t dp_ = 1;
  std::unique_ptr<ParallelEngine> engine_;
  // This data-parallel rank's cursor over the training samples.
  std::unique_ptr<SampleStream> train_;
  std::shared_ptr<const SampleSource> val_;  // null without validation data
  int64_t micro_batches_ = 1;  // local micro-batches per step: gbs / (mbs * dp)
  int64_t nan_iterations_ = 0;
  // Iterations without an update: the NaN ones and the fp16 overflows (Megatron's counters).
  int64_t skipped_iterations_ = 0;
  FILE* metrics_ = nullptr;
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // train.tensorboard_dir, rank 0 only
  std::vector<TokenBatch> batches_;
  // The engine's state as checkpoints see it (views into the engine's buffers).
  std::unique_ptr<TrainStateRegistry> registry_;
  std::unique_ptr<CheckpointSaver> saver_;
  std::string resumed_from_;
  SpikeDetector spike_{SpikeConfig{}};  // train.spike
};

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_TRAINER_H_
