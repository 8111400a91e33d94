#include "launcher/preemption.h"

#include <pthread.h>
#include <signal.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <mutex>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/status.h"

namespace lattice {

namespace {

// Written by the watcher thread, read by the training loop.
std::atomic<int> g_signal{0};
std::atomic<int> g_count{0};
std::atomic<int> g_during_save{0};
std::atomic<int> g_in_save{0};

// Taken when the library is loaded, i.e. at process start.
const std::chrono::steady_clock::time_point g_process_start = std::chrono::steady_clock::now();

constexpr char kStoppedPayloadUrl[] = "type.lattice/stopped-with-checkpoint";

sigset_t StopSignalSet() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGTERM);
  return set;
}

// The watcher: takes each stop signal sent to the process (they are blocked everywhere, so
// the kernel queues them for sigwait) and records it. Runs until the process exits.
void* WatchStopSignals(void*) {
  const sigset_t set = StopSignalSet();
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;  // only EINVAL is possible, and the set is valid
    g_signal.store(sig);
    g_count.fetch_add(1);
    if (g_in_save.load() != 0) g_during_save.store(1);
  }
  return nullptr;
}

std::string SignalName(int sig) {
  switch (sig) {
    case SIGUSR1:
      return "SIGUSR1";
    case SIGTERM:
      return "SIGTERM";
    default:
      return absl::StrCat("signal ", sig);
  }
}

}  // namespace

absl::Status StartStopSignalWatcher() {
  const sigset_t set = StopSignalSet();
  if (const int rc = ::pthread_sigmask(SIG_BLOCK, &set, nullptr); rc != 0) {
    return absl::InternalError(
        absl::StrCat("cannot block SIGUSR1/SIGTERM for the stop-signal watcher: ", std::strerror(rc)));
  }
  static std::mutex mu;
  static bool started = false;
  std::lock_guard<std::mutex> lock(mu);
  if (started) return absl::OkStatus();
  pthread_t thread;
  // Created after the block above, so it starts with both signals blocked, as sigwait needs.
  if (const int rc = ::pthread_create(&thread, nullptr, WatchStopSignals, nullptr); rc != 0) {
    return absl::InternalError(
        absl::StrCat("cannot start the stop-signal watcher thread: ", std::strerror(rc)));
  }
  ::pthread_detach(thread);
  started = true;
  return absl::OkStatus();
}

StopSignals ReceivedStopSignals() {
  StopSignals s;
  s.signal = g_signal.load(std::memory_order_relaxed);
  s.count = g_count.load(std::memory_order_relaxed);
  s.during_save = g_during_save.load(std::memory_order_relaxed) != 0;
  return s;
}

void ResetStopSignals() {
  g_signal.store(0);
  g_count.store(0);
  g_during_save.store(0);
}

void SetCheckpointInProgress(bool in_progress) { g_in_save.store(in_progress ? 1 : 0); }

double MinutesSinceProcessStart() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - g_process_start)
             .count() /
         60.0;
}

std::string StopDecision::Describe() const {
  switch (reason) {
    case StopReason::kNone:
      return "no stop";
    case StopReason::kSignal: {
      std::string s = SignalName(signal);
      if (signal_count > 1 || during_save) {
        absl::StrAppend(&s, " (");
        if (signal_count > 1) absl::StrAppend(&s, signal_count, " signals");
        if (signal_count > 1 && during_save) absl::StrAppend(&s, ", ");
        if (during_save) absl::StrAppend(&s, "received during a checkpoint save");
        absl::StrAppend(&s, ")");
      }
      return s;
    }
    case StopReason::kTimeLimit:
      return absl::StrFormat("train.exit_after_minutes=%g reached (%.2f minutes since start)",
                             limit_minutes, minutes);
  }
  return "unknown stop reason";
}

absl::StatusOr<StopDecision> AgreeToStop(Communicator& world, double exit_after_minutes) {
  return AgreeToStop(world, ReceivedStopSignals(), exit_after_minutes, MinutesSinceProcessStart());
}

absl::StatusOr<StopDecision> AgreeToStop(Communicator& world, const StopSignals& local,
                                         double exit_after_minutes, double minutes) {
  const bool time_up = exit_after_minutes > 0 && minutes >= exit_after_minutes;
  std::array<int32_t, 4> flags = {local.signal, local.count, local.during_save ? 1 : 0,
                                  time_up ? 1 : 0};
  LATTICE_RETURN_IF_ERROR(
      world.AllReduce(flags.data(), flags.size(), CommType::kI32, ReduceOp::kMax));
  StopDecision d;
  d.signal = flags[0];
  d.signal_count = flags[1];
  d.during_save = flags[2] != 0;
  d.minutes = minutes;
  d.limit_minutes = exit_after_minutes;
  if (d.signal != 0) {
    d.reason = StopReason::kSignal;
  } else if (flags[3] != 0) {
    d.reason = StopReason::kTimeLimit;
  }
  return d;
}

absl::Status StoppedStatus(const StopDecision& decision, int64_t iteration, int64_t steps,
                           const std::string& checkpoint) {
  absl::Status s = absl::UnavailableError(absl::StrCat(
      "stopped after iteration ", iteration, " of ", steps, " on ", decision.Describe(),
      "; checkpoint ", checkpoint, " committed: run the same command again to resume (exit "
      "status ", kStoppedExitCode, ")"));
  s.SetPayload(kStoppedPayloadUrl, absl::Cord(absl::StrCat(iteration)));
  return s;
}

bool IsStopped(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kStoppedPayloadUrl).has_value();
}

}  // namespace lattice
