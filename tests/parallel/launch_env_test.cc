#include "parallel/launch_env.h"

#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/communicator.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

EnvLookup FakeEnv(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](absl::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(LaunchEnvTest, StartedByHand) {
  absl::StatusOr<LaunchEnv> e = ReadLaunchEnv(FakeEnv({}));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->launcher, Launcher::kNone);
  EXPECT_FALSE(e->launched());
  EXPECT_FALSE(e->in_slurm_job());
  EXPECT_EQ(e->rank, -1);
  EXPECT_EQ(e->local_rank, -1);
  EXPECT_THAT(e->ToString(), HasSubstr("launcher=none rank=?/? local=?/?"));
  EXPECT_THAT(e->ToString(), HasSubstr("slurm_job=-"));
}

// mpirun inside an sbatch job: the batch shell's SLURM_PROCID=0 / SLURM_LOCALID=0 are inherited
// by every rank and must be ignored.
TEST(LaunchEnvTest, MpirunInsideSbatchIgnoresSlurmRanks) {
  absl::StatusOr<LaunchEnv> e = ReadLaunchEnv(FakeEnv({
      {"OMPI_COMM_WORLD_RANK", "3"},
      {"OMPI_COMM_WORLD_SIZE", "8"},
      {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
      {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
      {"PMIX_RANK", "3"},
      {"SLURM_PROCID", "0"},
      {"SLURM_LOCALID", "0"},
      {"SLURM_JOB_ID", "4242"},
      {"SLURM_NNODES", "4"},
      {"SLURM_NTASKS", "8"},
      {"SLURM_NODEID", "1"},
      {"SLURM_JOB_NODELIST", "n[01-04]"},
  }));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->launcher, Launcher::kMpirun);
  EXPECT_EQ(e->rank, 3);
  EXPECT_EQ(e->size, 8);
  EXPECT_EQ(e->local_rank, 1);
  EXPECT_EQ(e->local_size, 2);
  EXPECT_EQ(e->local_source, "OMPI_COMM_WORLD_LOCAL_RANK");
  EXPECT_TRUE(e->in_slurm_job());
  EXPECT_EQ(e->slurm_job_id, "4242");
  EXPECT_EQ(e->slurm_nnodes, 4);
  EXPECT_EQ(e->slurm_ntasks, 8);
  EXPECT_EQ(e->slurm_node_id, 1);
  EXPECT_EQ(e->slurm_job_nodelist, "n[01-04]");
  EXPECT_THAT(e->ToString(),
              HasSubstr("launcher=mpirun rank=3/8 local=1/2 (OMPI_COMM_WORLD_LOCAL_RANK)"));
  EXPECT_THAT(e->ToString(), HasSubstr("slurm_job=4242 nodes=4"));
}

// srun --mpi=pmix sets no OMPI_* variables: rank from SLURM_PROCID, local rank from
// SLURM_LOCALID, local size from the compressed per-node task list.
TEST(LaunchEnvTest, SrunWithPmix) {
  absl::StatusOr<LaunchEnv> e = ReadLaunchEnv(FakeEnv({
      {"PMIX_RANK", "7"},
      {"SLURM_PROCID", "7"},
      {"SLURM_LOCALID", "1"},
      {"SLURM_STEP_NUM_TASKS", "8"},
      {"SLURM_NTASKS", "16"},
      {"SLURM_NODEID", "2"},
      {"SLURM_STEP_TASKS_PER_NODE", "3(x2),2"},
      {"SLURM_JOBID", "99"},
  }));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->launcher, Launcher::kSrun);
  EXPECT_EQ(e->rank, 7);
  EXPECT_EQ(e->size, 8);  // the step's tasks, not the allocation's
  EXPECT_EQ(e->local_rank, 1);
  EXPECT_EQ(e->local_size, 2);  // node 2 is past the "3(x2)" nodes 0 and 1
  EXPECT_EQ(e->local_source, "SLURM_LOCALID");
  EXPECT_EQ(e->slurm_job_id, "99");

  // On node 1 the same list gives 3; a list too short for the node gives "unknown".
  absl::StatusOr<LaunchEnv> n1 = ReadLaunchEnv(FakeEnv({{"PMIX_RANK", "3"},
                                                       {"SLURM_PROCID", "3"},
                                                       {"SLURM_LOCALID", "0"},
                                                       {"SLURM_NODEID", "1"},
                                                       {"SLURM_TASKS_PER_NODE", "3(x2),2"}}));
  ASSERT_TRUE(n1.ok());
  EXPECT_EQ(n1->local_size, 3);
  absl::StatusOr<LaunchEnv> n9 = ReadLaunchEnv(FakeEnv({{"PMIX_RANK", "3"},
                                                       {"SLURM_PROCID", "3"},
                                                       {"SLURM_LOCALID", "0"},
                                                       {"SLURM_NODEID", "9"},
                                                       {"SLURM_TASKS_PER_NODE", "3(x2),2"}}));
  ASSERT_TRUE(n9.ok());
  EXPECT_EQ(n9->local_size, -1);
}

// The batch shell of a job (no srun) is one process even though SLURM_PROCID=0 is set.
TEST(LaunchEnvTest, SbatchShellIsNotALaunch) {
  absl::StatusOr<LaunchEnv> e = ReadLaunchEnv(
      FakeEnv({{"SLURM_PROCID", "0"}, {"SLURM_JOB_ID", "5"}, {"SLURM_NTASKS", "4"}}));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->launcher, Launcher::kNone);
  EXPECT_TRUE(e->in_slurm_job());
  EXPECT_EQ(e->slurm_ntasks, 4);
}

TEST(LaunchEnvTest, SrunWithoutMpiPluginIsRefused) {
  absl::StatusOr<LaunchEnv> e = ReadLaunchEnv(FakeEnv(
      {{"SLURM_PROCID", "2"}, {"SLURM_STEP_NUM_TASKS", "4"}, {"SLURM_JOB_ID", "5"}}));
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(e.status().message(), HasSubstr("srun --mpi=pmix"));
  EXPECT_THAT(e.status().message(), HasSubstr("4 tasks"));
}

TEST(LaunchEnvTest, OtherPmiLauncher) {
  absl::StatusOr<LaunchEnv> e = ReadLaunchEnv(FakeEnv({{"PMI_RANK", "2"}, {"PMI_SIZE", "3"}}));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->launcher, Launcher::kPmi);
  EXPECT_EQ(e->rank, 2);
  EXPECT_EQ(e->size, 3);
  EXPECT_EQ(e->local_rank, -1);
}

TEST(LaunchEnvTest, MalformedVariablesNameThemselves) {
  struct Case {
    const char* name;
    const char* value;
  };
  for (const Case& c : {Case{"OMPI_COMM_WORLD_RANK", "three"}, Case{"OMPI_COMM_WORLD_SIZE", "0"},
                        Case{"SLURM_NNODES", "-1"}, Case{"SLURM_NODEID", "1x"}}) {
    absl::StatusOr<LaunchEnv> e = ReadLaunchEnv(FakeEnv({{c.name, c.value}}));
    ASSERT_FALSE(e.ok()) << c.name;
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(e.status().message(), HasSubstr(absl::StrCat(c.name, "=\"", c.value, "\"")));
  }
  // Whitespace around a number is tolerated.
  absl::StatusOr<LaunchEnv> e =
      ReadLaunchEnv(FakeEnv({{"OMPI_COMM_WORLD_RANK", " 1 "}, {"OMPI_COMM_WORLD_SIZE", "2"}}));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->rank, 1);
}

TEST(LaunchEnvTest, DiscoverOnAWorldOfOne) {
  SelfCommunicator world;
  absl::StatusOr<LaunchEnv> e = DiscoverLaunchEnv(world, FakeEnv({{"SLURM_JOB_ID", "12"}}));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->rank, 0);
  EXPECT_EQ(e->size, 1);
  EXPECT_EQ(e->local_rank, 0);
  EXPECT_EQ(e->local_size, 1);
  EXPECT_EQ(e->local_source, "single process");
  EXPECT_EQ(e->slurm_job_id, "12");
  EXPECT_FALSE(e->hostname.empty());
}

// ---- Device selection by local rank ----

TEST(DeviceAssignmentTest, LocalRankModuloTheVisibleDevices) {
  // 8 ranks on a node of 4 GPUs: 0-3 get devices 0-3, 4-7 wrap around.
  for (int local = 0; local < 8; ++local) {
    absl::StatusOr<DeviceAssignment> a = AssignDevice(local, 4, FakeEnv({}));
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->device, local % 4);
    EXPECT_EQ(a->visible, 4);
    EXPECT_EQ(a->source, absl::StrCat("local rank ", local, " mod 4 visible devices"));
    EXPECT_EQ(a->physical, "");
  }
  absl::StatusOr<DeviceAssignment> a = AssignDevice(5, 4, FakeEnv({}));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->ToString(), "device 1 (local rank 5 mod 4 visible devices)");
}

TEST(DeviceAssignmentTest, TheCpuBackendHasNoDevice) {
  absl::StatusOr<DeviceAssignment> a = AssignDevice(3, 0, FakeEnv({}));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->device, -1);
  EXPECT_EQ(a->ToString(), "cpu");
  // LATTICE_DEVICE is still checked, then has nothing to pick.
  a = AssignDevice(3, 0, FakeEnv({{"LATTICE_DEVICE", "1"}}));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->ToString(), "cpu");
  EXPECT_FALSE(AssignDevice(3, 0, FakeEnv({{"LATTICE_DEVICE", "gpu1"}})).ok());
}

TEST(DeviceAssignmentTest, LatticeDeviceOverridesTheLocalRank) {
  absl::StatusOr<DeviceAssignment> a = AssignDevice(0, 4, FakeEnv({{"LATTICE_DEVICE", "3"}}));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->device, 3);
  EXPECT_EQ(a->source, "LATTICE_DEVICE=3");
  for (const char* bad : {"4", "-1", "one"}) {
    absl::StatusOr<DeviceAssignment> b = AssignDevice(0, 4, FakeEnv({{"LATTICE_DEVICE", bad}}));
    ASSERT_FALSE(b.ok()) << bad;
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(b.status().message(), HasSubstr("LATTICE_DEVICE"));
  }
}

// Slurm's gres sets CUDA_VISIBLE_DEVICES: per job ("0,1,2,3": every task sees the node's GPUs,
// and the local rank picks one) or per task ("2" with --gpus-per-task=1: each task sees one GPU,
// which is its device 0 whatever its local rank).
TEST(DeviceAssignmentTest, HonoursCudaVisibleDevices) {
  absl::StatusOr<DeviceAssignment> a =
      AssignDevice(6, 4, FakeEnv({{"CUDA_VISIBLE_DEVICES", "4,5,6,7"}}));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->device, 2);
  EXPECT_EQ(a->physical, "6");
  EXPECT_EQ(a->ToString(),
            "device 2 (CUDA_VISIBLE_DEVICES entry 6; local rank 6 mod 4 visible devices)");
  a = AssignDevice(3, 1, FakeEnv({{"CUDA_VISIBLE_DEVICES", "2"}}));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->device, 0);
  EXPECT_EQ(a->physical, "2");
  // A backend that sees another count than the variable lists is a broken environment.
  absl::StatusOr<DeviceAssignment> bad =
      AssignDevice(0, 2, FakeEnv({{"CUDA_VISIBLE_DEVICES", "0,1,2"}}));
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("lists 3 devices but the backend sees 2"));
}

TEST(DeviceAssignmentTest, UnknownLocalRankIsRefused) {
  absl::StatusOr<DeviceAssignment> a = AssignDevice(-1, 4, FakeEnv({}));
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(a.status().message(), HasSubstr("DiscoverLaunchEnv"));
}

TEST(DeviceAssignmentTest, NodeLine) {
  LaunchEnv launch;
  launch.hostname = "n1";
  launch.local_rank = 0;
  launch.local_size = 3;
  absl::StatusOr<std::string> line = DescribeNodeDevices(launch, 2, FakeEnv({}));
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(*line, "host n1: 3 local ranks, 2 visible devices: local rank 0 -> device 0, 1 -> "
                   "device 1, 2 -> device 0");
  line = DescribeNodeDevices(launch, 2, FakeEnv({{"CUDA_VISIBLE_DEVICES", "3,7"}}));
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_THAT(*line, HasSubstr("1 -> device 1 (CUDA_VISIBLE_DEVICES entry 7)"));
  line = DescribeNodeDevices(launch, 0, FakeEnv({}));
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(*line, "host n1: 3 local ranks, CPU backend (no devices): every local rank -> cpu");
}

}  // namespace
}  // namespace lattice
