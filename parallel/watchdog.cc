#include "parallel/watchdog.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <utility>

namespace lattice {

Watchdog::Watchdog(double seconds, std::string what) : what_(std::move(what)) {
  thread_ = std::thread([this, seconds] { Run(seconds); });
}

Watchdog::~Watchdog() {
  Disarm();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::Disarm() {
  std::lock_guard<std::mutex> lock(mu_);
  disarmed_ = true;
  cv_.notify_all();
}

void Watchdog::Run(double seconds) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(seconds));
  std::unique_lock<std::mutex> lock(mu_);
  // A timed wait (spurious wake-ups loop back; only Disarm ends it early).
  if (cv_.wait_until(lock, deadline, [this] { return disarmed_; })) return;
  std::fprintf(stderr,
               "lattice: watchdog: %s: the process did not end within %g s; exiting with code "
               "%d\n",
               what_.c_str(), seconds, kWatchdogExitCode);
  std::fflush(stderr);
  // _exit, not exit: atexit handlers and static destructors may be what hangs (MPI's among them).
  ::_exit(kWatchdogExitCode);
}

void ArmAbortWatchdog(double seconds, const std::string& what) {
  static std::atomic<bool> armed{false};
  if (armed.exchange(true)) return;
  // Never destroyed: it must outlive every static destructor that runs while the process ends.
  static Watchdog* const dog = new Watchdog(seconds, what);
  (void)dog;
}

}  // namespace lattice
