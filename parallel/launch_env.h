// What the launcher (mpirun, srun, or none) tells a process about its place in the job.
//
// Discovery order (REFERENCE.md section 1):
// - World rank and size: MPI_Comm_rank/size are the truth; the environment is only a hint,
//   read before MPI is up (to decide whether to initialise MPI at all).
// - Local rank: OMPI_COMM_WORLD_LOCAL_RANK/_LOCAL_SIZE (mpirun), else SLURM_LOCALID with
//   SLURM_NTASKS_PER_NODE-style sizes (srun --mpi=pmix sets no OMPI_* variables), else a
//   shared-memory split of the world (Communicator::SplitByNode).
// - Under mpirun inside an sbatch job every rank inherits SLURM_PROCID=0, so no SLURM_* rank
//   variable is read when OMPI_COMM_WORLD_RANK is set.
#ifndef LATTICE_PARALLEL_LAUNCH_ENV_H_
#define LATTICE_PARALLEL_LAUNCH_ENV_H_

#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lattice {

class Communicator;

enum class Launcher : uint8_t {
  kNone,    // started by hand: a world of one
  kMpirun,  // Open MPI's mpirun / mpiexec (OMPI_COMM_WORLD_* set)
  kSrun,    // Slurm's srun with a PMIx or PMI plugin (SLURM_PROCID + PMIX_RANK or PMI_RANK)
  kPmi,     // another PMI launcher (PMIX_RANK or PMI_RANK without Slurm)
};
absl::string_view LauncherName(Launcher l);  // "none", "mpirun", "srun", "pmi"

struct LaunchEnv {
  Launcher launcher = Launcher::kNone;

  // Rank and size of the world. From the environment (a hint) after ReadLaunchEnv; from the
  // world communicator (the truth) after DiscoverLaunchEnv. -1 when unknown.
  int rank = -1;
  int size = -1;
  // Rank among the processes of this node and their number; -1 when unknown. local_rank picks
  // the GPU. `local_source` names where they came from: the variable, "shared-memory split" or
  // "single process".
  int local_rank = -1;
  int local_size = -1;
  std::string local_source;

  // Slurm job facts, empty / -1 outside a Slurm job. The node list is kept compressed as Slurm
  // gives it (expand with `scontrol show hostnames`).
  std::string slurm_job_id;
  int slurm_nnodes = -1;
  int slurm_ntasks = -1;
  int slurm_node_id = -1;
  std::string slurm_job_nodelist;

  std::string hostname;

  bool in_slurm_job() const { return !slurm_job_id.empty(); }
  // True when a parallel launcher started this process, i.e. MPI must be initialised.
  bool launched() const { return launcher != Launcher::kNone; }
  // "launcher=mpirun rank=1/4 local=1/4 (OMPI_COMM_WORLD_LOCAL_RANK) host=n1 slurm_job=-"
  std::string ToString() const;
};

// Looks up one environment variable; nullopt when it is not set.
using EnvLookup = std::function<std::optional<std::string>(absl::string_view name)>;

// The process environment.
EnvLookup ProcessEnv();

// Reads the launch environment without talking to any other process. A variable that is set
// but is not an integer in range is kInvalidArgument naming it and its value.
absl::StatusOr<LaunchEnv> ReadLaunchEnv(const EnvLookup& env);
absl::StatusOr<LaunchEnv> ReadLaunchEnv();  // ReadLaunchEnv(ProcessEnv())

// ReadLaunchEnv completed with the world communicator: rank and size from it, and the local rank
// from a shared-memory split when no variable gives one. A collective over `world`.
absl::StatusOr<LaunchEnv> DiscoverLaunchEnv(Communicator& world, const EnvLookup& env);
absl::StatusOr<LaunchEnv> DiscoverLaunchEnv(Communicator& world);

// ---- Device selection (REFERENCE.md section 1: one rank per GPU, chosen by local rank) ----

// The device one rank drives.
struct DeviceAssignment {
  int device = -1;   // index among the devices visible to the rank; -1: none (CPU backend)
  int visible = 0;   // devices visible to the rank
  // Why this device: "local rank 5 mod 4 visible devices" or "LATTICE_DEVICE=1".
  std::string source;
  // The CUDA_VISIBLE_DEVICES entry of `device` when that variable is set (Slurm's gres sets it
  // per job or per task), else empty.
  std::string physical;

  // "cpu" without a device, else "device 1 (CUDA_VISIBLE_DEVICES entry 3; local rank 5 mod 4
  // visible devices)".
  std::string ToString() const;
};

// Picks the device of the rank at `local_rank`: LATTICE_DEVICE when set (an index among the
// visible devices, for a user who maps ranks by hand), else local_rank modulo the visible
// device count, so that the ranks of a node spread over its devices and wrap around when there
// are more ranks than devices. `visible_devices` is the count the backend sees (the CUDA
// runtime's count already honours CUDA_VISIBLE_DEVICES; 0 for the CPU backend, which gets no
// device: "cpu"). kInvalidArgument for a LATTICE_DEVICE that is not an integer in
// [0, visible_devices), or a CUDA_VISIBLE_DEVICES whose entry count disagrees with a non-zero
// visible_devices (a rank would drive another rank's GPU); kFailedPrecondition when local_rank
// is unknown (< 0: use DiscoverLaunchEnv).
absl::StatusOr<DeviceAssignment> AssignDevice(int local_rank, int visible_devices,
                                              const EnvLookup& env);

// The line the first rank of a node prints about the node's mapping, every local rank's device
// computed as AssignDevice does with this rank's environment (the same on every rank of a node
// under mpirun and srun):
//   "host n1: 4 local ranks, 2 visible devices: local rank 0 -> device 0, 1 -> device 1, ..."
//   "host n1: 4 local ranks, CPU backend (no devices): every local rank -> cpu"
absl::StatusOr<std::string> DescribeNodeDevices(const LaunchEnv& launch, int visible_devices,
                                                const EnvLookup& env);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_LAUNCH_ENV_H_
