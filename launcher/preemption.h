// Preemption and wall-clock limits for `lattice train`: stop at a step boundary with a committed
// checkpoint, so that a requeued job (or the same command run again) resumes exactly there.
//
// How a stop happens:
// 1. SIGUSR1 or SIGTERM reaches one or more ranks (Slurm's `--signal=B:USR1@120` forwarded by
//    the batch script, `scancel --signal=USR1`, a preemption's SIGTERM, mpirun forwarding a
//    signal, or `kill` of one rank). Both signals are blocked in every thread and taken by one
//    watcher thread with sigwait(), which records them in atomics: no signal handler ever runs
//    on a compute thread, and no system call (a checkpoint's write or fsync) is interrupted.
//    Why not a handler: oneDNN 2.6's JIT sgemm kernels point rsp into the heap, so the frame
//    the kernel pushes for a handler lands in heap memory and corrupts it (oneDNN issue #4845,
//    fixed upstream in 2026, not in Debian 12's 2.6.3). With a SIGUSR1 handler, 3 of 15 tiny
//    runs signalled mid-step here died of "corrupted size vs. prev_size" or SIGSEGV inside
//    dnnl_sgemm; with the watcher thread, none of 40.
// 2. At the end of every iteration each rank contributes its flags to one MAX all-reduce over
//    the world communicator (AgreeToStop): a signal seen by any rank, or any rank's clock past
//    train.exit_after_minutes, stops every rank at the same iteration.
// 3. The trainer saves a checkpoint of that iteration (or commits the save of it already in
//    flight), and `lattice train` exits with kStoppedExitCode on every rank.
// More signals after the first change nothing: the run is already stopping, and stops once.
//
// The elapsed time of train.exit_after_minutes counts from the process start (the load of this
// library), as Megatron's --exit-duration-in-mins counts from its start, so it includes the
// setup and the resume before the first step.
#ifndef LATTICE_LAUNCHER_PREEMPTION_H_
#define LATTICE_LAUNCHER_PREEMPTION_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace lattice {

// Exit status of `lattice train` (every rank, hence mpirun's and srun's) when it stopped early
// on a signal or train.exit_after_minutes with a committed checkpoint: "run me again to
// continue". 75 is EX_TEMPFAIL of sysexits.h (a temporary failure; retry later), which no other
// lattice error uses (they exit 1; MPI_Abort also gives 1). cluster/slurm/*.sbatch requeue the
// job on it.
inline constexpr int kStoppedExitCode = 75;

// Blocks SIGUSR1 and SIGTERM in the calling thread and starts the watcher thread (once).
// Threads inherit the mask of the thread that creates them, so call it from main() before any
// other thread exists (before MPI_Init, OpenMP or an async checkpoint writer start their
// threads): a thread created earlier would still take these signals and die of them. The mask
// is also inherited across exec, so lattice starts no child processes after this. Idempotent.
absl::Status StartStopSignalWatcher();

// What this rank's watcher recorded.
struct StopSignals {
  int signal = 0;            // the last stop signal received (0: none)
  int count = 0;             // how many were received
  bool during_save = false;  // one arrived while a checkpoint was being saved
};
StopSignals ReceivedStopSignals();
// Forgets what was received (tests run several stops in one process).
void ResetStopSignals();

// Marks whether this rank is saving a checkpoint now (from the start of a save to its commit,
// an async writer's time included), so that a signal inside that window is reported as such.
void SetCheckpointInProgress(bool in_progress);

// Minutes since this process started (see above).
double MinutesSinceProcessStart();

enum class StopReason : uint8_t { kNone, kSignal, kTimeLimit };

// What every rank agreed on at one step boundary.
struct StopDecision {
  StopReason reason = StopReason::kNone;
  int signal = 0;            // the largest signal number any rank received (SIGTERM > SIGUSR1)
  int signal_count = 0;      // the most signals any one rank received
  bool during_save = false;  // some rank received one during a checkpoint save
  double minutes = 0;        // this rank's minutes since start
  double limit_minutes = 0;  // train.exit_after_minutes

  bool stop() const { return reason != StopReason::kNone; }
  // "SIGUSR1 (2 signals, one during a checkpoint save)" or
  // "train.exit_after_minutes=5 reached (5.01 minutes since start)".
  std::string Describe() const;
};

// Collective over `world`: one MAX all-reduce of 4 int32 flags (this rank's signals and whether
// its clock passed `exit_after_minutes`; 0 = no limit), so every rank returns the same reason.
// A signal wins over the time limit when both happened.
absl::StatusOr<StopDecision> AgreeToStop(Communicator& world, double exit_after_minutes);
// The same with this rank's inputs given (tests).
absl::StatusOr<StopDecision> AgreeToStop(Communicator& world, const StopSignals& local,
                                         double exit_after_minutes, double minutes);

// The Status `lattice train` returns after such a stop: kUnavailable (retry later) with a payload
// that IsStopped recognises, naming the reason, the iteration and the checkpoint. main() turns it
// into kStoppedExitCode, and the launcher does not MPI_Abort on it.
absl::Status StoppedStatus(const StopDecision& decision, int64_t iteration, int64_t steps,
                           const std::string& checkpoint);
bool IsStopped(const absl::Status& status);

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_PREEMPTION_H_
