// Pipeline-parallel schedules: which forward and backward passes each pipeline rank runs, in
// which order, for one training step. Pure logic; the engine that moves activations and
// gradients between ranks executes these lists as they are.
//
// Terms. pp pipeline ranks (stages) 0..pp-1; every rank holds vpp model chunks 0..vpp-1. Chunk c
// on rank s is virtual stage v = c * pp + s (Megatron's interleaving), so the model's layers run
// through virtual stages 0..V-1, V = vpp * pp, and virtual stage v lives on rank v % pp. With
// vpp == 1 the chunk is always 0 and the virtual stage is the rank.
//
// Dependencies of one action (v, m) = virtual stage v, micro-batch m:
//   forward  (v, m): the forward of (v-1, m), received from rank (v-1) % pp (none for v = 0);
//   backward (v, m): the backward of (v+1, m), received from rank (v+1) % pp (none for
//                    v = V-1, whose backward starts from the loss), and always this rank's own
//                    forward of (v, m), which must come earlier in the same list.
// The engine sends without blocking and receives blocking, matching each message by
// (direction, virtual stage, micro-batch). The lists below also keep every channel
// (rank -> rank, direction) in FIFO order: a rank receives from a peer in the order that peer
// sent, so an engine that matches messages per peer by arrival order runs them too.
//
// Schedules (M = micro-batches):
//   kGpipe           all M forwards, then all M backwards (both in micro-batch order).
//   kOneFOneB            PipeDream-flush, Megatron's non-interleaved schedule:
//                    warmup = min(pp - stage - 1, M) forwards, then (M - warmup) pairs
//                    "forward m + warmup, backward m", then the remaining backwards.
//   kInterleaved Megatron's interleaved schedule (vpp >= 2, M % pp == 0): the M * vpp
//                    virtual micro-steps k run chunk (k % (pp*vpp)) / pp on micro-batch
//                    (k / (pp*vpp)) * pp + k % pp for forwards; backwards use the same micro-batch
//                    and chunk vpp-1 minus that. warmup = min((pp - stage - 1) * 2 +
//                    (vpp - 1) * pp, M * vpp) forwards, then 1F1B pairs, then the cooldown.
//
// Activations in flight per rank: (chunk, micro-batch) pairs whose forward has run and whose
// backward has not. Peaks, which bound activation memory (SimulatePipeline measures them):
//   kGpipe           M on every rank.
//   kOneFOneB            min(pp - stage, M) <= pp: warmup + 1 while a steady phase exists.
//   kInterleaved min(warmup + 1, M * vpp) with the warmup above, i.e. at most
//                    min((pp - stage - 1) * 2 + (vpp - 1) * pp + 1, M * vpp); counted in chunks,
//                    each 1/vpp of a rank's layers.
// Time, one tick per action (SimulatePipeline): 2 * (M * vpp + pp - 1) ticks for all three, i.e.
// a bubble of 2 * (pp - 1) ticks, which is 1/vpp of a stage's pass time when interleaved.
// Megatron's interleaved schedule special-cases M == pp to all-warmup; this one does not need
// to (the simulation runs it without deadlock) and keeps the smaller peak.
#ifndef LATTICE_PARALLEL_PIPELINE_SCHEDULE_H_
#define LATTICE_PARALLEL_PIPELINE_SCHEDULE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/config.h"

namespace lattice {

// PipelineSchedule (kOneFOneB, kGpipe, kInterleaved) is the config enum of runtime/config.h.

// The config key parallel.schedule: "gpipe", "1f1b", "interleaved". An unknown name is
// kInvalidArgument naming the value and the choices.
absl::StatusOr<PipelineSchedule> ParsePipelineSchedule(absl::string_view name);
absl::string_view PipelineScheduleName(PipelineSchedule s);

// One unit of work on one pipeline rank: the forward or backward of model chunk `chunk` on
// micro-batch `micro_batch`.
struct PipeAction {
  enum class Kind { kForward, kBackward };
  Kind kind;
  int micro_batch;
  int chunk;
  bool operator==(const PipeAction&) const = default;
};

// "F(m=3,c=1)" / "B(m=3,c=1)", for messages and test output.
std::string PipeActionDebugString(const PipeAction& a);

// The ordered actions of pipeline rank `stage` for one step of `micro_batches` micro-batches.
// kInvalidArgument (naming the numbers) unless pp >= 1, 0 <= stage < pp, micro_batches >= 1,
// and vpp == 1 for gpipe and 1f1b, or vpp >= 2 and micro_batches % pp == 0 for interleaved.
absl::StatusOr<std::vector<PipeAction>> BuildPipelineSchedule(PipelineSchedule kind, int pp,
                                                              int vpp, int stage,
                                                              int micro_batches);

// Result of running all ranks' lists. Time advances in ticks: in one tick every rank whose next
// action has its inputs (messages sent in earlier ticks) runs it, each action costing one tick.
struct PipelineSimulation {
  std::vector<int> peak_in_flight;  // per rank, see "Activations in flight" above
  int total_ticks = 0;              // ticks until the last action finished
};

// Builds every rank's schedule and simulates it (SimulatePipelineActions).
absl::StatusOr<PipelineSimulation> SimulatePipeline(PipelineSchedule kind, int pp, int vpp,
                                                    int micro_batches);

// Simulates arbitrary per-rank lists (rank_actions[s] for rank s; pp = its size) with
// non-blocking sends and blocking receives. kInternal, naming ranks and actions, when a list
// lacks or repeats an action or names one out of range, when a backward comes before its own
// forward on a rank, or when the ranks deadlock (every unfinished rank waits for a message that
// never comes). kInvalidArgument for bad sizes.
absl::StatusOr<PipelineSimulation> SimulatePipelineActions(
    int vpp, int micro_batches, const std::vector<std::vector<PipeAction>>& rank_actions);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_PIPELINE_SCHEDULE_H_
