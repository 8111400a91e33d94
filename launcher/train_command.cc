#include <cstdio>
#include <exception>
#include <new>

#include "absl/strings/str_cat.h"

#include "launcher/commands.h"
#include "launcher/memory_plan.h"
#include "launcher/options.h"
#include "launcher/preemption.h"
#include "launcher/trainer.h"
#include "parallel/mpi_communicator.h"

namespace lattice {

namespace po = boost::program_options;

namespace {

absl::Status Train(const std::string& config, const std::vector<std::string>& sets,
                   Communicator& world) {
  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(config, sets));
  LATTICE_ASSIGN_OR_RETURN(auto trainer, Trainer::Create(cfg, world));
  return trainer->Run();
}

}  // namespace

absl::Status RunTrainCommand(const CommandArgs& args) {
  po::options_description desc("lattice train");
  std::string config;
  std::vector<std::string> sets;
  bool memory_only = false;
  desc.add_options()("config", po::value(&config)->required(), "YAML config file")(
      "set", po::value(&sets)->composing(), "override a config key: --set train.lr=1e-3")(
      "memory-only", po::bool_switch(&memory_only),
      "print the memory plan per rank (docs/memory.md) without allocating it, and exit");
  po::variables_map vm;
  bool help;
  LATTICE_RETURN_IF_ERROR(ParseOptions("train", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  if (memory_only) {
    LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(config, sets));
    LATTICE_ASSIGN_OR_RETURN(std::string plan, FormatMemoryPlan(cfg));
    std::fputs(plan.c_str(), stdout);
    return absl::OkStatus();
  }
  // SIGUSR1/SIGTERM stop the run at a step boundary with a checkpoint (launcher/preemption.h).
  // Before MPI starts its threads, which must inherit the signals blocked.
  LATTICE_RETURN_IF_ERROR(StartStopSignalWatcher());
  // MPI is initialised only when mpirun/srun launched this process; otherwise the world is
  // this one process (SelfCommunicator) and no MPI library call is made.
  LATTICE_ASSIGN_OR_RETURN(auto mpi, MpiRuntime::Initialize(nullptr, nullptr));
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> world, CreateWorldCommunicator());
  absl::Status status;
  try {
    status = Train(config, sets, *world);
  } catch (const std::bad_alloc&) {
    // Out of memory (an allocation too large for this machine) must not strand other ranks.
    status = absl::ResourceExhaustedError(
        "out of memory: the model, batch or layout needs more memory than this rank has");
  } catch (const std::exception& e) {
    status = absl::InternalError(absl::StrCat("unexpected exception: ", e.what()));
  }
  // A stop with a checkpoint (every rank returns it together) is not a failure to abort on.
  if (!status.ok() && world->size() > 1 && !IsStopped(status)) {
    // A rank that fails cannot leave the others waiting in a collective: this is the launcher's
    // top level (the only place allowed to end the process), and AbortWorld prints
    // "lattice: rank R: <message>" and takes every rank down with a non-zero exit.
    AbortWorld(*world, status);
  }
  return status;
}

}  // namespace lattice
