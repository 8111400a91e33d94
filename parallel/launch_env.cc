#include "parallel/launch_env.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "parallel/communicator.h"
#include "runtime/status.h"

namespace lattice {

absl::string_view LauncherName(Launcher l) {
  switch (l) {
    case Launcher::kNone: return "none";
    case Launcher::kMpirun: return "mpirun";
    case Launcher::kSrun: return "srun";
    case Launcher::kPmi: return "pmi";
  }
  return "?";
}

std::string LaunchEnv::ToString() const {
  auto of = [](int a, int b) {
    return absl::StrCat(a < 0 ? std::string("?") : absl::StrCat(a), "/",
                        b < 0 ? std::string("?") : absl::StrCat(b));
  };
  std::string s = absl::StrCat("launcher=", LauncherName(launcher), " rank=", of(rank, size),
                               " local=", of(local_rank, local_size));
  if (!local_source.empty()) absl::StrAppend(&s, " (", local_source, ")");
  absl::StrAppend(&s, " host=", hostname.empty() ? "?" : hostname);
  if (in_slurm_job()) {
    absl::StrAppend(&s, " slurm_job=", slurm_job_id, " nodes=", slurm_nnodes, " tasks=",
                    slurm_ntasks, " node_id=", slurm_node_id, " nodelist=", slurm_job_nodelist);
  } else {
    absl::StrAppend(&s, " slurm_job=-");
  }
  return s;
}

EnvLookup ProcessEnv() {
  return [](absl::string_view name) -> std::optional<std::string> {
    const char* v = std::getenv(std::string(name).c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

namespace {

// An integer variable: nullopt when unset, error when set to something else than an integer
// >= min_value.
absl::StatusOr<std::optional<int>> IntVar(const EnvLookup& env, absl::string_view name,
                                          int min_value) {
  std::optional<std::string> v = env(name);
  if (!v.has_value()) return std::optional<int>();
  int x = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*v), &x) || x < min_value) {
    return absl::InvalidArgumentError(absl::StrCat("environment variable ", name, "=\"", *v,
                                                   "\" is not an integer >= ", min_value));
  }
  return std::optional<int>(x);
}

// The first of `names` that is set.
absl::StatusOr<std::optional<int>> FirstIntVar(const EnvLookup& env,
                                               std::initializer_list<absl::string_view> names,
                                               int min_value) {
  for (absl::string_view name : names) {
    LATTICE_ASSIGN_OR_RETURN(std::optional<int> v, IntVar(env, name, min_value));
    if (v.has_value()) return v;
  }
  return std::optional<int>();
}

// Tasks on node `node_id` from Slurm's compressed per-node list, e.g. "2(x3),1": nodes 0-2 run
// 2 tasks, node 3 runs 1. nullopt when the list does not parse or is too short.
std::optional<int> TasksOnNode(absl::string_view list, int node_id) {
  int node = 0;
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    int tasks = 0;
    int repeat = 1;
    const size_t paren = item.find("(x");
    if (paren != absl::string_view::npos) {
      absl::string_view rep = item.substr(paren + 2);
      if (!absl::ConsumeSuffix(&rep, ")") || !absl::SimpleAtoi(rep, &repeat) || repeat < 1) {
        return std::nullopt;
      }
      item = item.substr(0, paren);
    }
    if (!absl::SimpleAtoi(item, &tasks) || tasks < 1) return std::nullopt;
    if (node_id < node + repeat) return tasks;
    node += repeat;
  }
  return std::nullopt;
}

std::string Hostname() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "";
  return buf;
}

}  // namespace

absl::StatusOr<LaunchEnv> ReadLaunchEnv(const EnvLookup& env) {
  LaunchEnv out;
  out.hostname = Hostname();

  // Slurm job facts: present in every process of a job, whoever launched it.
  if (auto id = env("SLURM_JOB_ID"); id.has_value()) {
    out.slurm_job_id = *id;
  } else if (auto old_id = env("SLURM_JOBID"); old_id.has_value()) {
    out.slurm_job_id = *old_id;
  }
  LATTICE_ASSIGN_OR_RETURN(std::optional<int> nnodes,
                           FirstIntVar(env, {"SLURM_NNODES", "SLURM_JOB_NUM_NODES"}, 1));
  LATTICE_ASSIGN_OR_RETURN(std::optional<int> ntasks, IntVar(env, "SLURM_NTASKS", 1));
  LATTICE_ASSIGN_OR_RETURN(std::optional<int> node_id, IntVar(env, "SLURM_NODEID", 0));
  out.slurm_nnodes = nnodes.value_or(-1);
  out.slurm_ntasks = ntasks.value_or(-1);
  out.slurm_node_id = node_id.value_or(-1);
  if (auto list = env("SLURM_JOB_NODELIST"); list.has_value()) {
    out.slurm_job_nodelist = *list;
  } else if (auto old_list = env("SLURM_NODELIST"); old_list.has_value()) {
    out.slurm_job_nodelist = *old_list;
  }

  LATTICE_ASSIGN_OR_RETURN(std::optional<int> ompi_rank, IntVar(env, "OMPI_COMM_WORLD_RANK", 0));
  LATTICE_ASSIGN_OR_RETURN(std::optional<int> ompi_size, IntVar(env, "OMPI_COMM_WORLD_SIZE", 1));
  LATTICE_ASSIGN_OR_RETURN(std::optional<int> pmi_rank,
                           FirstIntVar(env, {"PMIX_RANK", "PMI_RANK"}, 0));
  if (ompi_rank.has_value() || ompi_size.has_value()) {
    // mpirun. SLURM_PROCID is inherited from the batch shell here (always 0): ignore it.
    out.launcher = Launcher::kMpirun;
    out.rank = ompi_rank.value_or(-1);
    out.size = ompi_size.value_or(-1);
    LATTICE_ASSIGN_OR_RETURN(std::optional<int> lr, IntVar(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0));
    LATTICE_ASSIGN_OR_RETURN(std::optional<int> ls, IntVar(env, "OMPI_COMM_WORLD_LOCAL_SIZE", 1));
    if (lr.has_value()) {
      out.local_rank = *lr;
      out.local_size = ls.value_or(-1);
      out.local_source = "OMPI_COMM_WORLD_LOCAL_RANK";
    }
    return out;
  }

  LATTICE_ASSIGN_OR_RETURN(std::optional<int> procid, IntVar(env, "SLURM_PROCID", 0));
  LATTICE_ASSIGN_OR_RETURN(std::optional<int> step_tasks,
                           FirstIntVar(env, {"SLURM_STEP_NUM_TASKS"}, 1));
  if (!pmi_rank.has_value()) {
    // No PMI: a process started by hand, or the batch shell of a job (SLURM_PROCID=0 there).
    // srun without an MPI plugin would start independent copies that each believe they are
    // the whole world and overwrite each other's output: refuse.
    if (step_tasks.has_value() && *step_tasks > 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          "srun started ", *step_tasks, " tasks (SLURM_STEP_NUM_TASKS) without an MPI plugin "
          "(no PMIX_RANK or PMI_RANK in the environment): launch with `srun --mpi=pmix`"));
    }
    return out;
  }

  if (procid.has_value()) {
    out.launcher = Launcher::kSrun;
    out.rank = *procid;
    out.size = step_tasks.has_value() ? *step_tasks : out.slurm_ntasks;
    LATTICE_ASSIGN_OR_RETURN(std::optional<int> localid, IntVar(env, "SLURM_LOCALID", 0));
    if (localid.has_value()) {
      out.local_rank = *localid;
      out.local_source = "SLURM_LOCALID";
      // Per-node task counts of this step, compressed ("2(x3),1"), indexed by node id.
      std::optional<std::string> per_node = env("SLURM_STEP_TASKS_PER_NODE");
      if (!per_node.has_value()) per_node = env("SLURM_TASKS_PER_NODE");
      if (per_node.has_value() && out.slurm_node_id >= 0) {
        out.local_size = TasksOnNode(*per_node, out.slurm_node_id).value_or(-1);
      }
    }
    return out;
  }

  out.launcher = Launcher::kPmi;
  out.rank = *pmi_rank;
  LATTICE_ASSIGN_OR_RETURN(std::optional<int> pmi_size, IntVar(env, "PMI_SIZE", 1));
  out.size = pmi_size.value_or(-1);
  return out;
}

absl::StatusOr<LaunchEnv> ReadLaunchEnv() { return ReadLaunchEnv(ProcessEnv()); }

absl::StatusOr<LaunchEnv> DiscoverLaunchEnv(Communicator& world, const EnvLookup& env) {
  LATTICE_ASSIGN_OR_RETURN(LaunchEnv out, ReadLaunchEnv(env));
  out.rank = world.rank();
  out.size = world.size();
  if (world.size() == 1) {
    out.local_rank = 0;
    out.local_size = 1;
    out.local_source = "single process";
    return out;
  }
  // The split is a collective: every rank must take the same branch, even if (in some odd job)
  // only some of them found their local rank in the environment.
  int32_t need_split = (out.local_rank < 0 || out.local_size < 0) ? 1 : 0;
  LATTICE_RETURN_IF_ERROR(
      Annotate(world.AllReduce(&need_split, 1, CommType::kI32, ReduceOp::kMax), "DiscoverLaunchEnv"));
  if (need_split != 0) {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> node, world.SplitByNode());
    out.local_rank = node->rank();
    out.local_size = node->size();
    out.local_source = "shared-memory split";
  }
  return out;
}

absl::StatusOr<LaunchEnv> DiscoverLaunchEnv(Communicator& world) {
  return DiscoverLaunchEnv(world, ProcessEnv());
}

// ---- Device selection ---------------------------------------------------------------------

std::string DeviceAssignment::ToString() const {
  if (device < 0) return "cpu";
  std::string s = absl::StrCat("device ", device, " (");
  if (!physical.empty()) absl::StrAppend(&s, "CUDA_VISIBLE_DEVICES entry ", physical, "; ");
  absl::StrAppend(&s, source, ")");
  return s;
}

absl::StatusOr<DeviceAssignment> AssignDevice(int local_rank, int visible_devices,
                                              const EnvLookup& env) {
  if (local_rank < 0) {
    return absl::FailedPreconditionError(
        "the local rank is unknown (no OMPI_COMM_WORLD_LOCAL_RANK or SLURM_LOCALID): complete "
        "the launch environment with DiscoverLaunchEnv before choosing a device");
  }
  DeviceAssignment a;
  a.visible = std::max(visible_devices, 0);
  std::vector<std::string> cvd;
  const std::optional<std::string> cvd_text = env("CUDA_VISIBLE_DEVICES");
  if (cvd_text.has_value()) {
    for (absl::string_view item : absl::StrSplit(*cvd_text, ',', absl::SkipWhitespace())) {
      cvd.push_back(std::string(absl::StripAsciiWhitespace(item)));
    }
    if (a.visible > 0 && static_cast<int>(cvd.size()) != a.visible) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CUDA_VISIBLE_DEVICES=\"", *cvd_text, "\" lists ", cvd.size(),
          " devices but the backend sees ", a.visible));
    }
  }
  LATTICE_ASSIGN_OR_RETURN(std::optional<int> forced, IntVar(env, "LATTICE_DEVICE", 0));
  if (a.visible == 0) {
    // The CPU backend: no device to choose (LATTICE_DEVICE is checked, then has nothing to pick).
    a.source = forced.has_value() ? "LATTICE_DEVICE set, but the backend has no devices"
                                  : "no devices";
    return a;
  }
  if (forced.has_value()) {
    if (*forced >= a.visible) {
      return absl::InvalidArgumentError(absl::StrCat(
          "environment variable LATTICE_DEVICE=", *forced, " is not below the ", a.visible,
          " visible devices"));
    }
    a.device = *forced;
    a.source = absl::StrCat("LATTICE_DEVICE=", *forced);
  } else {
    a.device = local_rank % a.visible;
    a.source = absl::StrCat("local rank ", local_rank, " mod ", a.visible, " visible devices");
  }
  if (!cvd.empty()) a.physical = cvd[static_cast<size_t>(a.device)];
  return a;
}

absl::StatusOr<std::string> DescribeNodeDevices(const LaunchEnv& launch, int visible_devices,
                                                const EnvLookup& env) {
  const int local_size = launch.local_size > 0 ? launch.local_size : 1;
  std::string s = absl::StrCat("host ", launch.hostname.empty() ? "?" : launch.hostname, ": ",
                               local_size, " local rank", local_size == 1 ? "" : "s", ", ");
  if (visible_devices <= 0) {
    LATTICE_ASSIGN_OR_RETURN(DeviceAssignment a, AssignDevice(0, visible_devices, env));
    absl::StrAppend(&s, "CPU backend (no devices): every local rank -> ", a.ToString());
    return s;
  }
  absl::StrAppend(&s, visible_devices, " visible device", visible_devices == 1 ? "" : "s", ":");
  for (int r = 0; r < local_size; ++r) {
    LATTICE_ASSIGN_OR_RETURN(DeviceAssignment a, AssignDevice(r, visible_devices, env));
    absl::StrAppend(&s, r == 0 ? " local rank " : ", ", r, " -> device ", a.device);
    if (!a.physical.empty()) absl::StrAppend(&s, " (CUDA_VISIBLE_DEVICES entry ", a.physical, ")");
  }
  if (env("LATTICE_DEVICE").has_value()) absl::StrAppend(&s, " (LATTICE_DEVICE)");
  return s;
}

}  // namespace lattice
