// MPI behind the Communicator interface, the MPI lifetime, and the choice of world communicator.
//
// Everything here compiles without MPI (LATTICE_HAVE_MPI undefined): the factories then say so
// in their Status, and a world of one still runs on SelfCommunicator. mpi.h is not included by
// this header, so code above this floor never sees MPI types.
//
// main() owns the MPI lifetime:
//
//   int main(int argc, char** argv) {
//     auto mpi = lattice::MpiRuntime::Initialize(&argc, &argv);  // MPI_Init iff launched
//     if (!mpi.ok()) { print; return 1; }
//     auto world = lattice::CreateWorldCommunicator();           // MPI or Self
//     ...
//     absl::Status s = lattice::AgreeOnStatus(**world, Train(...));
//     if (!s.ok()) lattice::AbortWorld(**world, s);  // every rank exits non-zero
//   }                                                // ~MpiRuntime: MPI_Finalize
#ifndef LATTICE_PARALLEL_MPI_COMMUNICATOR_H_
#define LATTICE_PARALLEL_MPI_COMMUNICATOR_H_

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace lattice {

// Whether this build was compiled with MPI.
bool MpiCompiledIn();

// Initialises MPI (MPI_Init_thread, MPI_THREAD_FUNNELED or better: only the thread that
// initialised MPI calls it) once per process and finalises it when destroyed. Communicators
// and Works may outlive it: after MPI_Finalize they release nothing.
class MpiRuntime {
 public:
  enum class Mode {
    kIfLaunched,  // initialise only when mpirun/srun started this process (launch_env.h)
    kAlways,      // initialise in any case (a lone process becomes an MPI singleton)
  };

  // If MPI is already initialised (by someone else), the runtime adopts it and does not
  // finalise it. kFailedPrecondition if MPI was already finalised, was initialised with less
  // than MPI_THREAD_FUNNELED, or the process was launched by mpirun/srun but this build has no
  // MPI; kUnavailable if MPI_Init_thread fails.
  static absl::StatusOr<std::unique_ptr<MpiRuntime>> Initialize(int* argc, char*** argv,
                                                                Mode mode = Mode::kIfLaunched);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  // MPI is initialised (not necessarily by this object) and not yet finalised.
  bool active() const;
  // This object called MPI_Init_thread and will call MPI_Finalize.
  bool owns_mpi() const { return owns_; }

  // True between MPI_Init and MPI_Finalize, whoever called them.
  static bool MpiIsActive();

 private:
  explicit MpiRuntime(bool owns) : owns_(owns) {}
  bool owns_ = false;
};

// A communicator over all of MPI_COMM_WORLD (an MPI_Comm_dup of it, so lattice's traffic never
// matches anybody else's). kFailedPrecondition when MPI is not active, kUnimplemented when
// built without MPI. Errors of the MPI calls come back as kUnavailable with MPI's error text
// (the communicator uses MPI_ERRORS_RETURN); counts above INT_MAX elements are kOutOfRange.
// A blocking Send to self can deadlock for large messages (MPI may not buffer them): use ISend.
absl::StatusOr<std::unique_ptr<Communicator>> CreateMpiWorldCommunicator();

// The world this process belongs to: the MPI world when MPI is active, a SelfCommunicator when
// the process was started by hand. kFailedPrecondition when mpirun/srun launched the process
// but MPI is not active (main() forgot MpiRuntime), since every rank would otherwise believe
// it is alone and train a separate model.
absl::StatusOr<std::unique_ptr<Communicator>> CreateWorldCommunicator();

}  // namespace lattice

#endif  // LATTICE_PARALLEL_MPI_COMMUNICATOR_H_
