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
  // action_ticks[s][i]: the tick in which rank s ran its action i (SimulatePipelineActions).
  std::vector<std::vector<int>> action_ticks;
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

// ---- Rendezvous communication: the NCCL engine's view of a schedule ------------------------
// NCCL's point-to-point operations are rendezvous: a send completes only once the peer has
// posted the matching receive, and a stream runs them in issue order. The MPI engine's
// non-blocking sends (the model SimulatePipelineActions checks) hide this. An NCCL engine that
// issued "send my output, then receive my next input" one operation at a time deadlocks in
// 1F1B's steady phase (two neighbours both sending, neither receiving), and pairing each send
// with the next receive (Megatron's send_forward_recv_backward) still deadlocks the interleaved
// schedule (two neighbours in a lone send: pp=2 vpp=2 M=4, found by SimulatePipelinePrograms).
//
// So the NCCL engine issues its operations in tick-synchronous groups derived from the
// non-blocking simulation: at the boundary after tick t, each rank posts one group
// (ncclGroupStart/End, Megatron's batch_isend_irecv) with the sends of what it computed in tick
// t and the receives of everything its peers computed in tick t for it. Every send then meets
// its receive in the peers' group of the same boundary, so no schedule can deadlock, and the
// steps take the ticks of the non-blocking model. A group holds up to one send and one receive
// per direction and neighbour (four in the interleaved steady phase, as Megatron's
// send_forward_backward_recv_forward_backward).
//
// A message: the output of forward (v, m), sent to virtual stage v + 1 (kind kForward), or the
// input gradient of backward (v, m), sent to virtual stage v - 1 (kind kBackward).
struct PipeMessage {
  PipeAction::Kind kind;
  int from_virtual_stage;
  int micro_batch;
  bool operator==(const PipeMessage&) const = default;
};
struct PipeCommOp {
  bool send;  // else a receive
  int peer;   // the other pipeline rank
  PipeMessage message;
  bool operator==(const PipeCommOp&) const = default;
};
// One step of a rank's program: a computation, or a group of operations posted together that
// finishes when each of them has met its peer's counterpart.
struct PipeStep {
  bool compute = false;
  PipeAction action{};           // when compute
  std::vector<PipeCommOp> group;  // when not
};
enum class PipeCommGrouping {
  kSequential,      // every operation alone: receive before its action, send after (blocking)
  kTickSynchronous, // the groups above
};
// Every rank's program (result[s] for rank s) for the schedule: its actions in
// BuildPipelineSchedule's order with the communication `grouping` says. Messages between two
// chunks of one rank (pp == 1) stay local: no operation.
absl::StatusOr<std::vector<std::vector<PipeStep>>> BuildPipelinePrograms(
    PipelineSchedule kind, int pp, int vpp, int micro_batches, PipeCommGrouping grouping);
// Runs the ranks' programs (programs[s] for rank s) with rendezvous semantics: in each tick
// every rank's posted group matches what it can (instantly), then every rank at a computation
// runs it (one tick). kInternal, naming each blocked rank's waiting operations, on a deadlock
// (also an operation that is never matched).
absl::StatusOr<PipelineSimulation> SimulatePipelinePrograms(
    const std::vector<std::vector<PipeStep>>& programs);
// "send F(v=2,m=1) to rank 3" for messages and test output.
std::string PipeCommOpDebugString(const PipeCommOp& op);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_PIPELINE_SCHEDULE_H_
