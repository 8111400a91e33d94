// `lattice bench --calibrate --config F --out C.yaml [--threads N] [--steps N]`: measures this
// machine and writes a "cpu" cluster description that `lattice plan` reads
// (parallel/planner.h; docs/planner.md "The CPU backend"):
//   peak_tflops           the backend's sgemm on 1024^3 at the rank's threads (the CPU's "peak")
//   gemm_efficiency       the GEMMs of real training steps of the config's model (one process,
//                         the config's micro-batch), the planner's FLOP count for them over their
//                         profiled time, over the peak
//   attention_efficiency  the same for the attention kernels
//   hbm_tb_per_s          copy bandwidth (bytes read + written per second, 64 MiB buffers)
//   memory_efficiency     the planner's element-wise bytes of the step over the time the step
//                         spends outside GEMMs, attention and the optimizer, over the copy rate
//   optimizer_gb_per_s    the planner's optimizer bytes over the profiled norm and AdamW time
//   reserved_gb           VmHWM growth of those steps beyond the engine's own allocations
//                         (GEMM library buffers, thread stacks, touched code)
//   nvlink_*, network_*   MPI over shared memory between 2 ranks (mpirun -np 2 of this binary
//                         with --calibrate-mpi): alpha from an all-reduce of 4 bytes, beta from
//                         one of 16 MiB; reserved_mpi_gb the VmHWM those collectives add
//   cores_per_node        the machine's cores; threads_per_rank the threads measured at
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/backend.h"
#include "launcher/bench_modes.h"
#include "launcher/commands.h"
#include "nlohmann/json.hpp"
#include "parallel/engine.h"
#include "parallel/mpi_communicator.h"
#include "parallel/planner.h"
#include "runtime/profiler.h"
#include "runtime/rng.h"
#include "runtime/status.h"
#include "runtime/system.h"

namespace lattice {

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Median of `reps` timings of f().
template <typename F>
double MedianSeconds(int reps, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto a = Clock::now();
    f();
    t.push_back(Seconds(a, Clock::now()));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Sizes of the MPI measurement: 4 bytes (latency-bound) and 16 MiB (bandwidth-bound; beyond
// Open MPI's eager and pipelining thresholds, about the demo model's 10 MB of gradients).
constexpr size_t kSmallFloats = 1;
constexpr size_t kMediumFloats = 256 * 1024;  // 1 MiB
// Point to point: 9 messages of 1 MiB in flight (the engine keeps up to 9 pipeline sends).
constexpr size_t kP2pFloats = 256 * 1024;
constexpr size_t kP2pInFlight = 9;
constexpr size_t kLargeFloats = 4 * 1024 * 1024;
// Repetitions: the median of 51 small and 11 large all-reduces is stable to a few per cent on
// an idle machine (a loaded one is noisier either way).
constexpr int kSmallReps = 51;
constexpr int kLargeReps = 11;

// A fixed amount of GEMM work (4 products of the demo model's MLP shape, 1024 x 192 x 768, per
// iteration), with a barrier after each iteration when `world` is given: one process alone
// against 2 coupled ranks says how many cores a job of ranks really gets from this machine
// now (other processes, and ranks descheduled while their peers wait, included).
constexpr int kWorkIterations = 40;
double WorkSeconds(kernels::Backend& be, Communicator* world, absl::Status* error) {
  constexpr int64_t n = 1024, c = 192, oc = 768;
  std::vector<float> inp(n * c, 0.5f), w(oc * c, 0.25f), bias(oc, 0.0f), out(n * oc);
  auto iteration = [&] {
    for (int r = 0; r < 4; ++r) {
      be.MatmulForward(kernels::F32View(out.data(), n * oc), kernels::F32View(inp.data(), n * c),
                       kernels::F32View(w.data(), oc * c), kernels::F32View(bias.data(), oc), n,
                       c, oc);
    }
    if (world != nullptr && error->ok()) *error = world->Barrier();
  };
  for (int i = 0; i < 3; ++i) iteration();
  const auto a = Clock::now();
  for (int i = 0; i < kWorkIterations; ++i) iteration();
  return Seconds(a, Clock::now());
}

absl::Status CalibrateMpi(const BenchOptions& o, Communicator& world) {
  kernels::Backend& be = kernels::DefaultBackend();
  be.SetNumThreads(o.threads > 0 ? static_cast<int>(o.threads) : 1);
  if (world.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("--calibrate-mpi runs on 2 ranks (mpirun -np 2), not ", world.size()));
  }
  std::vector<float> small(kSmallFloats, 1.0f), medium(kMediumFloats, 1.0f),
      large(kLargeFloats, 1.0f);
  std::vector<float> p2p(kP2pFloats * kP2pInFlight, 1.0f);
  const int64_t before_p2p = PeakResidentBytes();
  absl::Status error;  // the first failure; later calls are skipped
  {
    // Point to point first (VmHWM only grows): the pipeline's pattern, up to 9 non-blocking sends
    // in flight (parallel/engine.cc RunSchedule) received one by one.
    const int peer = 1 - world.rank();
    for (int round = 0; round < 2 && error.ok(); ++round) {
      std::vector<std::unique_ptr<Work>> works;
      for (size_t i = 0; i < kP2pInFlight && error.ok(); ++i) {
        float* buf = p2p.data() + i * kP2pFloats;
        if (world.rank() == round) {
          absl::StatusOr<std::unique_ptr<Work>> w =
              world.ISend(buf, kP2pFloats, CommType::kF32, peer, static_cast<int>(i));
          if (w.ok()) works.push_back(*std::move(w)); else error = w.status();
        } else {
          error = world.Recv(buf, kP2pFloats, CommType::kF32, peer, static_cast<int>(i));
        }
      }
      for (auto& w : works) {
        if (error.ok()) error = w->Wait();
      }
    }
  }
  LATTICE_RETURN_IF_ERROR(error);
  const double p2p_per_byte =
      std::max(0.0, static_cast<double>(PeakResidentBytes() - before_p2p) /
                        static_cast<double>(kP2pFloats * kP2pInFlight * 4));
  const int64_t with_buffers = PeakResidentBytes();
  auto allreduce = [&](std::vector<float>& v) {
    if (error.ok()) error = world.AllReduce(v.data(), v.size(), CommType::kF32, ReduceOp::kSum);
  };
  // Warm-up: connections and the shared-memory segments set up. VmHWM after the medium and
  // after the large all-reduces: what MPI adds grows with the message (its algorithms' temporary
  // buffers), so the planner adds fixed + per_byte x the layout's largest collective.
  for (int i = 0; i < 3; ++i) {
    allreduce(small);
    allreduce(medium);
  }
  const double g_medium = static_cast<double>(PeakResidentBytes() - with_buffers);
  for (int i = 0; i < 3; ++i) allreduce(large);
  const double g_large = static_cast<double>(PeakResidentBytes() - with_buffers);
  const double per_byte = std::max(0.0, (g_large - g_medium) /
                                            static_cast<double>((kLargeFloats - kMediumFloats) * 4));
  const double fixed = std::max(0.0, g_medium - per_byte * static_cast<double>(kMediumFloats * 4));
  LATTICE_RETURN_IF_ERROR(world.Barrier());
  const double t_small = MedianSeconds(kSmallReps, [&] { allreduce(small); });
  const double t_large = MedianSeconds(kLargeReps, [&] { allreduce(large); });
  LATTICE_RETURN_IF_ERROR(error);
  const double coupled = WorkSeconds(be, &world, &error);
  LATTICE_RETURN_IF_ERROR(error);
  // Two ranks: an all-reduce is 2 steps (latency) and moves bytes * 2 (n-1)/n = bytes
  // (parallel/planner.cc AllReduceTime).
  const double alpha = t_small / 2;
  const double bytes = static_cast<double>(kLargeFloats * sizeof(float));
  const double beta = bytes / std::max(t_large - 2 * alpha, 1e-9);
  double mine[6] = {alpha, beta, fixed, per_byte, coupled, p2p_per_byte};
  double all[12];
  LATTICE_RETURN_IF_ERROR(world.AllGather(mine, all, sizeof(mine), CommType::kU8));
  if (world.rank() != 0) return absl::OkStatus();
  nlohmann::ordered_json j = {{"alpha_s", std::max(all[0], all[6])},
                              {"beta_bytes_per_s", std::min(all[1], all[7])},
                              {"mpi_reserved_bytes", std::max(all[2], all[8])},
                              {"mpi_reserved_per_byte", std::max(all[3], all[9])},
                              {"coupled_work_s", std::max(all[4], all[10])},
                              {"mpi_p2p_per_byte", std::max(all[5], all[11])},
                              {"t_small_s", t_small},
                              {"t_large_s", t_large},
                              {"large_bytes", bytes}};
  return WriteOutput(o.out, j.dump(1) + "\n");
}

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

// MemTotal of /proc/meminfo in bytes.
double MemTotalBytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemTotal:", 0) == 0) return 1024.0 * std::strtod(line.c_str() + 9, nullptr);
  }
  return 0;
}

struct StepProfile {
  double step_s = 0;                         // mean step
  std::map<std::string, double> category_s;  // per step
  double engine_bytes = 0, hwm_growth = 0, params = 0;
};

// Profiled steps of the config's model through the engine on one process (dp = tp = pp = 1,
// one micro-batch of the config's size): what `lattice bench --config` runs.
absl::StatusOr<StepProfile> ProfileSteps(Config cfg, int64_t warmup, int64_t steps) {
  cfg.parallel.dp = 1;
  cfg.parallel.tp = 1;
  cfg.parallel.pp = 1;
  cfg.parallel.vpp = 1;
  cfg.parallel.zero1 = false;
  cfg.parallel.sequence_parallel = false;
  cfg.train.global_batch_size = cfg.train.micro_batch_size;
  LATTICE_RETURN_IF_ERROR(cfg.ValidateLayout(1));
  SelfCommunicator world;
  const int64_t baseline = PeakResidentBytes();
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<ParallelEngine> engine,
                           ParallelEngine::Create(cfg, world));
  const int64_t b = cfg.train.micro_batch_size, t = cfg.model.seq_len;
  std::vector<TokenBatch> batches(1);
  batches[0].b = b;
  batches[0].t = t;
  CounterRng rng(cfg.train.seed, "bench.calibrate");
  for (int64_t i = 0; i < b * t; ++i) {
    batches[0].inputs.push_back(static_cast<int32_t>(rng.Bits(i) % cfg.model.vocab_size));
    batches[0].targets.push_back(static_cast<int32_t>(rng.Bits(b * t + i) % cfg.model.vocab_size));
  }
  double total = 0;
  for (int64_t s = 0; s < warmup + steps; ++s) {
    if (s == warmup) {
      profiler::Reset();
      profiler::SetEnabled(true);
    }
    const auto a = Clock::now();
    LATTICE_ASSIGN_OR_RETURN(EngineStepResult r,
                             engine->Step(batches, static_cast<float>(cfg.train.lr)));
    (void)r;
    if (s >= warmup) total += Seconds(a, Clock::now());
  }
  profiler::SetEnabled(false);
  StepProfile p;
  p.step_s = total / static_cast<double>(steps);
  for (const profiler::OpStats& op : profiler::Snapshot()) {
    if (op.category == profiler::Category::kPhase) continue;
    p.category_s[profiler::CategoryName(op.category)] += op.seconds / static_cast<double>(steps);
  }
  p.engine_bytes = static_cast<double>(engine->memory().total());
  p.hwm_growth = static_cast<double>(PeakResidentBytes() - baseline);
  p.params = static_cast<double>(engine->model().params().numel());
  return p;
}

absl::Status Calibrate(const BenchOptions& o) {
  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(o.config, o.sets));
  kernels::Backend& be = kernels::DefaultBackend();
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  const int threads = o.threads > 0 ? static_cast<int>(o.threads)
                                    : be.DefaultThreads(AffinityCores(), cores, 1);
  be.SetNumThreads(threads);
  cfg.train.threads = threads;
  std::printf("lattice bench --calibrate: %s at %d thread(s) per rank on %d cores\n",
              o.config.c_str(), threads, cores);
  std::fflush(stdout);

  // The step first: the model's shapes warm the GEMM library before the square benchmark.
  LATTICE_ASSIGN_OR_RETURN(StepProfile prof, ProfileSteps(cfg, o.warmup, o.steps));
  // sgemm 1024^3 for half a second (docs/performance.md's reference figure).
  const double peak = 1e9 * be.GemmRate(1024, 1024, 1024, 0.5);

  // Copy bandwidth over buffers far beyond the caches (64 MiB each).
  const int64_t n = 16 * 1024 * 1024;
  Tensor src(be.AllocateStorage(n * 4), 0, {n}, DType::kF32);
  Tensor dst(be.AllocateStorage(n * 4), 0, {n}, DType::kF32);
  be.Copy(kernels::ViewOf(dst), kernels::ViewOf(src));
  // 9 copies: the median is stable once the pages are touched.
  const double t_copy = MedianSeconds(9, [&] { be.Copy(kernels::ViewOf(dst), kernels::ViewOf(src)); });
  const double copy_bw = 2.0 * static_cast<double>(n) * 4 / t_copy;

  const CpuWork work = CpuMicroBatchWork(cfg.model, cfg.train.micro_batch_size);
  const double gemm_s = prof.category_s["gemm"];
  const double attn_s = prof.category_s["attention"];
  const double opt_s = prof.category_s["optimizer"];
  const double elem_s = std::max(1e-9, prof.step_s - gemm_s - attn_s - opt_s);
  if (gemm_s <= 0 || attn_s <= 0 || opt_s <= 0) {
    return absl::InternalError("--calibrate: the profile has no GEMM, attention or optimizer time");
  }
  const double gemm_rate = work.gemm_flops / gemm_s;
  const double attn_rate = work.attention_flops / attn_s;
  const double elem_rate = work.elementwise_bytes / elem_s;
  const double opt_bw = (kCpuNormBytesPerParam + kCpuAdamBytesPerParam) * prof.params / opt_s;
  const double reserved = std::max(0.0, prof.hwm_growth - prof.engine_bytes);

  // MPI between two ranks of this binary.
  nlohmann::ordered_json mpi;
  {
    LATTICE_ASSIGN_OR_RETURN(const std::string self, SelfExecutable());
    const std::string tmp = absl::StrCat(std::filesystem::temp_directory_path().string(),
                                         "/lattice-calibrate-mpi.", getpid());
    const char* mpirun_env = std::getenv("MPIRUN");
    const std::string mpirun = mpirun_env != nullptr && *mpirun_env ? mpirun_env : "mpirun";
    const std::vector<std::string> argv = {mpirun, "-np", "2", "--bind-to", "none", self,
                                           "bench", "--calibrate-mpi", "--threads",
                                           std::to_string(threads), "--out", tmp + ".json"};
    LATTICE_ASSIGN_OR_RETURN(int rc, RunChild(argv, MpiChildEnv(), tmp + ".log"));
    absl::StatusOr<std::string> log = ReadWholeFile(tmp + ".log");
    absl::StatusOr<std::string> text = ReadWholeFile(tmp + ".json");
    std::error_code ec;
    std::filesystem::remove(tmp + ".log", ec);
    std::filesystem::remove(tmp + ".json", ec);
    if (rc != 0 || !text.ok()) {
      return absl::InternalError(absl::StrCat("--calibrate: the 2-rank MPI measurement failed (exit ",
                                              rc, "): ", log.ok() ? *log : ""));
    }
    mpi = nlohmann::ordered_json::parse(*text, nullptr, false);
    if (mpi.is_discarded()) return absl::InternalError("--calibrate: bad MPI measurement JSON");
  }
  const double alpha = mpi["alpha_s"].get<double>();
  const double beta = mpi["beta_bytes_per_s"].get<double>();
  const double mpi_reserved = std::max(0.0, mpi["mpi_reserved_bytes"].get<double>());
  const double mpi_per_byte = mpi["mpi_reserved_per_byte"].get<double>();
  // The same work on this one process, then the cores 2 coupled ranks effectively had:
  // 2 x threads x (alone / coupled), at most the machine's.
  absl::Status unused;
  const double alone = WorkSeconds(be, nullptr, &unused);
  const double coupled = mpi["coupled_work_s"].get<double>();
  const double effective_cores =
      std::min<double>(cores, 2.0 * threads * alone / std::max(coupled, 1e-9));

  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  utsname u{};
  uname(&u);
  std::string gemm_library = "?";
  for (const auto& [k, v] : be.Properties()) {
    if (k == "gemm") gemm_library = v;
  }
  double load[1] = {-1};
  getloadavg(load, 1);
  const std::string how = absl::StrFormat(
      "%s on %s (%s, %d cores), %d thread(s) per rank, GEMMs %s, model %s (micro-batch %d, "
      "seq %d), %d profiled steps after %d warm-up, load average %.1f",
      date, u.nodename, CpuModelName(), cores, threads, gemm_library, o.config,
      cfg.train.micro_batch_size, cfg.model.seq_len, o.steps, o.warmup, load[0]);
  const double gb = 1e9;
  std::string y = absl::StrCat(
      "# This machine as `lattice plan` sees it, measured by `lattice bench --calibrate`\n",
      "# (launcher/bench_calibrate.cc; docs/planner.md \"The CPU backend\"). Re-run it to refresh:\n",
      "#   lattice bench --calibrate --config ", o.config, " --threads ", threads, " --out ", o.out,
      "\n");
  absl::StrAppendFormat(&y, "name: cpu-local\ndevice: %s\nbackend: cpu\ncalibrated: \"%s\"\n",
                        CpuModelName(), how);
  absl::StrAppendFormat(&y,
      "# One machine: its %d cores are the \"GPUs\" of the node for the layout rules. The cores a\n"
      "# job of ranks really gets: a fixed GEMM loop took %.4g s on one process and %.4g s on 2\n"
      "# ranks of %d thread(s) with a barrier per iteration: 2 x %d x alone / coupled, at most %d\n"
      "# (less when other processes share the machine). Compute slows by cores_per_node /\n"
      "# (ranks x threads_per_rank) when a layout asks for more.\n"
      "gpus_per_node: %d\ncores_per_node: %.4g\nthreads_per_rank: %d\n", cores, alone, coupled,
      threads, threads, cores, cores, effective_cores, threads);
  absl::StrAppendFormat(&y,
      "# sgemm 1024^3 at %d thread(s) (kernels backend GemmRate, 0.5 s), the CPU's peak for MFU.\n"
      "peak_tflops: %.6g\n", threads, peak / 1e12);
  absl::StrAppendFormat(&y,
      "# The GEMMs of the profiled steps: the planner's FLOPs (%.4g per micro-batch) over %.4g ms:\n"
      "# %.2f GFLOP/s.\ngemm_efficiency: %.6g\n", work.gemm_flops, 1e3 * gemm_s, gemm_rate / 1e9,
      gemm_rate / peak);
  absl::StrAppendFormat(&y,
      "# Attention of the profiled steps: %.4g FLOPs over %.4g ms: %.2f GFLOP/s.\n"
      "attention_efficiency: %.6g\n", work.attention_flops, 1e3 * attn_s, attn_rate / 1e9,
      attn_rate / peak);
  absl::StrAppendFormat(&y,
      "# Memory: MemTotal; copy bandwidth (bytes read + written) over 64 MiB buffers.\n"
      "hbm_gb: %.6g\nhbm_tb_per_s: %.6g\n", MemTotalBytes() / gb, copy_bw / 1e12);
  absl::StrAppendFormat(&y,
      "# Element-wise: the planner's bytes (%.4g per micro-batch) over the step's time outside\n"
      "# GEMMs, attention and the optimizer (%.4g of %.4g ms): %.2f GB/s, over the copy rate.\n"
      "memory_efficiency: %.6g\n", work.elementwise_bytes, 1e3 * elem_s, 1e3 * prof.step_s,
      elem_rate / gb, elem_rate / copy_bw);
  absl::StrAppendFormat(&y,
      "# The gradient norm and AdamW: %.0f bytes per parameter x %.0f over %.4g ms.\n"
      "optimizer_gb_per_s: %.6g\n", kCpuNormBytesPerParam + kCpuAdamBytesPerParam, prof.params,
      1e3 * opt_s, opt_bw / gb);
  absl::StrAppendFormat(&y,
      "# Kernel overheads are inside the rates above (measured at the model's shapes).\n"
      "kernel_overhead_us: 0\n");
  absl::StrAppendFormat(&y,
      "# VmHWM growth of the profiled steps (%.1f MiB) beyond the engine's allocations (%.1f MiB).\n"
      "reserved_gb: %.6g\n", prof.hwm_growth / 1048576.0, prof.engine_bytes / 1048576.0,
      reserved / gb);
  absl::StrAppendFormat(&y,
      "# MPI between 2 ranks over shared memory: all-reduce of 4 bytes %.2f us (2 steps: alpha),\n"
      "# of 16 MiB %.3f ms (beta); VmHWM the collectives added to a rank: fixed, and per byte of\n"
      "# the largest message (from all-reduces of 1 and 16 MiB).\n"
      "nvlink_gb_per_s: %.6g\nnvlink_latency_us: %.6g\nnetwork_gb_per_s: %.6g\n"
      "network_latency_us: %.6g\nreserved_mpi_gb: %.6g\nreserved_mpi_per_byte: %.6g\n"
      "# VmHWM growth per byte of 9 non-blocking 1 MiB sends in flight (the pipeline's pattern).\n"
      "reserved_mpi_p2p_per_byte: %.6g\n",
      1e6 * mpi["t_small_s"].get<double>(), 1e3 * mpi["t_large_s"].get<double>(), beta / gb,
      alpha * 1e6, beta / gb, alpha * 1e6, mpi_reserved / gb, mpi_per_byte,
      mpi["mpi_p2p_per_byte"].get<double>());
  absl::StrAppendFormat(&y,
      "# lattice's CPU engine blocks in its tensor-parallel collectives and pipeline receives, and\n"
      "# its non-blocking data-parallel reductions progress only inside MPI calls: nothing hidden.\n"
      "tp_overlap: 0\ndp_overlap: 0\npp_overlap: 0\nflash_attention: true\n");
  // The description must be one lattice plan reads.
  LATTICE_RETURN_IF_ERROR(ParseClusterSpec(y, o.out).status());
  LATTICE_RETURN_IF_ERROR(WriteOutput(o.out, y));
  std::printf("%swrote %s\n", y.c_str(), o.out.c_str());
  return absl::OkStatus();
}

}  // namespace

absl::Status RunBenchCalibrate(const BenchOptions& o) {
  if (!o.calibrate_mpi) return Calibrate(o);
  if (o.out.empty()) return absl::InvalidArgumentError("--calibrate-mpi needs --out");
  LATTICE_ASSIGN_OR_RETURN(auto mpi, MpiRuntime::Initialize(nullptr, nullptr));
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> world, CreateWorldCommunicator());
  absl::Status status = CalibrateMpi(o, *world);
  if (!status.ok() && world->size() > 1) AbortWorld(*world, status);
  return status;
}

}  // namespace lattice
