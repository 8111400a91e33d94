// The last resort when ending the job hangs: a thread that ends this process if it is still
// alive some seconds after an abort began.
//
// MPI_Abort asks mpirun (or srun) to kill every rank; if the launcher itself is wedged, or the
// abort blocks on a transport to a dead node, the rank would hang in MPI_Abort forever and the
// job would never free its allocation. So the abort arms a Watchdog first: unless the process
// is gone within the deadline, the watchdog thread prints why and calls _exit with
// kWatchdogExitCode. A thread with a timed wait, not a signal handler or alarm(): oneDNN's JIT
// GEMMs corrupt the heap when an asynchronous signal handler runs on a computing thread
// (launcher/preemption.h), and the thread needs nothing from the hung code path.
#ifndef LATTICE_PARALLEL_WATCHDOG_H_
#define LATTICE_PARALLEL_WATCHDOG_H_

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace lattice {

// Exit status of a process the watchdog ended: 125, as timeout(1) exits when it could not run
// its own job (here: the abort that should have ended the process did not).
inline constexpr int kWatchdogExitCode = 125;

class Watchdog {
 public:
  // Starts the thread: after `seconds` (unless Disarm() or the destructor came first) it prints
  // "lattice: watchdog: <what>: the process did not end within S s; exiting with code 125" to
  // stderr and calls _exit(kWatchdogExitCode).
  Watchdog(double seconds, std::string what);
  // Disarms and joins.
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Stops the countdown; the process lives on.
  void Disarm();

 private:
  void Run(double seconds);

  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool disarmed_ = false;
  std::thread thread_;
};

// Arms a process-wide watchdog that is never disarmed (the process is ending): called by every
// abort path (MpiCommunicator::Abort, the communicator timeout) right before MPI_Abort. The first
// call wins; later calls (a second rank's report racing the first) do not extend the deadline.
void ArmAbortWatchdog(double seconds, const std::string& what);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_WATCHDOG_H_
