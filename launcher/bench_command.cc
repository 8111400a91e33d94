#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/backend.h"
#include "launcher/bench_modes.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "nlohmann/json.hpp"
#include "parallel/engine.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_communicator.h"
#include "parallel/planner.h"
#include "runtime/profiler.h"
#include "runtime/rng.h"
#include "runtime/system.h"

namespace lattice {

namespace po = boost::program_options;

namespace {

double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// The per-op profile of `steps` profiled steps: a table on stdout, and the same as JSON.
// Shares are of the mean step, since the op times are totals over all profiled steps.
nlohmann::json PrintProfile(int64_t steps, double mean_ms, double sgemm_gflops,
                            const std::string& gemm_library) {
  const std::vector<profiler::OpStats> ops = profiler::Snapshot();
  std::map<std::string, double> cat_ms, cat_flops;
  double tracked_ms = 0;
  // "cpu ms": the driving thread's CPU time, the op's cost at 1 thread even on a loaded machine.
  std::printf("%-20s %-12s %10s %9s %7s %9s %9s\n", "op", "category", "calls/step", "ms/step",
              "share", "GFLOP/s", "cpu ms");
  nlohmann::json rows = nlohmann::json::array();
  for (const profiler::OpStats& op : ops) {
    if (op.category == profiler::Category::kPhase) continue;  // the engine's, reported apart
    const double ms = 1e3 * op.seconds / static_cast<double>(steps);
    const double gflops = op.flops > 0 ? op.flops / op.seconds / 1e9 : 0.0;
    const char* cat = profiler::CategoryName(op.category);
    cat_ms[cat] += ms;
    cat_flops[cat] += op.flops / static_cast<double>(steps);
    tracked_ms += ms;
    const double cpu_ms = 1e3 * op.thread_cpu_seconds / static_cast<double>(steps);
    std::printf("%-20s %-12s %10.1f %9.2f %6.1f%% %9s %9.2f\n", op.name.c_str(), cat,
                static_cast<double>(op.calls) / static_cast<double>(steps), ms,
                100.0 * ms / mean_ms, gflops > 0 ? absl::StrFormat("%.1f", gflops).c_str() : "",
                cpu_ms);
    rows.push_back({{"op", op.name}, {"category", cat}, {"ms_per_step", ms},
                    {"calls_per_step", static_cast<double>(op.calls) / steps},
                    {"gflops", gflops}, {"thread_cpu_ms_per_step", cpu_ms}});
  }
  // Time in no kernel: zeroing buffers, copies between activation sets, the step's bookkeeping.
  cat_ms["other (untracked)"] += std::max(0.0, mean_ms - tracked_ms);
  std::printf("by category (of the %.2f ms mean step):", mean_ms);
  nlohmann::json cats = nlohmann::json::object();
  for (const auto& [cat, ms] : cat_ms) {
    std::printf("  %s %.1f%%", cat.c_str(), 100.0 * ms / mean_ms);
    cats[cat] = ms;
  }
  std::printf("\n");
  const double gemm_gflops = cat_ms["gemm"] > 0 ? cat_flops["gemm"] / (cat_ms["gemm"] / 1e3) / 1e9 : 0;
  std::printf("GEMMs in the step: %.1f GFLOP/s = %.0f%% of sgemm 1024^3 on this CPU "
              "(%s: %.1f GFLOP/s at the same threads)\n",
              gemm_gflops, 100.0 * gemm_gflops / sgemm_gflops, gemm_library.c_str(),
              sgemm_gflops);
  return {{"ops", rows}, {"category_ms_per_step", cats}, {"gemm_gflops", gemm_gflops},
          {"sgemm_1024_gflops", sgemm_gflops}};
}

// `lattice bench train-step`: the median wall time of one full training step (forward, backward,
// grad norm, AdamW) of one micro-batch of random tokens, over --repeats timed steps after
// --warmup untimed ones.
absl::Status BenchTrainStep(const CommandArgs& args) {
  po::options_description desc("lattice bench train-step");
  std::string config;
  std::vector<std::string> sets;
  int64_t warmup = 3, repeats = 10;
  bool profile = false;
  desc.add_options()("profile", po::bool_switch(&profile),
                     "print a per-op profile of the timed steps")("config", po::value(&config)->required(), "YAML config file")(
      "warmup", po::value(&warmup)->default_value(3), "untimed steps")(
      "repeats", po::value(&repeats)->default_value(10), "timed steps (median reported)")(
      "set", po::value(&sets)->composing(), "override a config key");
  po::variables_map vm;
  bool help;
  LATTICE_RETURN_IF_ERROR(ParseOptions("bench train-step", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();
  LATTICE_RETURN_IF_ERROR(CheckIntOption("warmup", warmup, 0, kNoLimit));
  LATTICE_RETURN_IF_ERROR(CheckIntOption("repeats", repeats, 1, kNoLimit));
  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(config, sets));
  kernels::Backend& be = kernels::DefaultBackend();
  be.SetNumThreads(cfg.train.threads > 0
                       ? cfg.train.threads
                       : be.DefaultThreads(AffinityCores(),
                                           static_cast<int>(std::thread::hardware_concurrency()),
                                           1));
  const int64_t b = cfg.train.micro_batch_size, t = cfg.model.seq_len;
  // train.recompute and train.classifier_chunk apply, as in training.
  LATTICE_ASSIGN_OR_RETURN(auto model, Decoder::Create(cfg.model, b, ModelShard(), nullptr,
                                                       DecoderOptions::From(cfg.train)));
  model->InitializeWeights(cfg.train.seed);
  AdamW opt(model->params(), cfg.train, model->backend());
  // The norm's accumulator, allocated once (a step allocates nothing).
  kernels::DeviceScalars norm_acc = model->backend().AllocateScalars(1);
  std::vector<int32_t> tokens(b * t), targets(b * t);
  CounterRng rng(cfg.train.seed, "bench.tokens");
  for (int64_t i = 0; i < b * t; ++i) {
    tokens[i] = static_cast<int32_t>(rng.Bits(i) % cfg.model.vocab_size);
    targets[i] = static_cast<int32_t>(rng.Bits(i + b * t) % cfg.model.vocab_size);
  }
  // Every target counts, so the loss gradient is known before the forward, and the head runs
  // the trainer's fused classifier (its gradients in the forward; model/decoder.h).
  model->set_head_loss_gradient(1.0f / static_cast<float>(b * t));
  std::vector<double> ms;
  double cpu_start = 0, wall_start_s = 0;
  for (int64_t s = 0; s < warmup + repeats; ++s) {
    if (s == warmup) {
      profiler::SetEnabled(profile);
      cpu_start = ProcessCpuSeconds();
      wall_start_s = std::chrono::duration<double>(
          std::chrono::steady_clock::now().time_since_epoch()).count();
    }
    const auto start = std::chrono::steady_clock::now();
    {
      profiler::Scope zero("zero_grads", profiler::Category::kOptimizer);
      model->params().ZeroGrads();
    }
    ForwardResult r = model->Forward(tokens.data(), targets.data(), nullptr, b, t);
    model->Backward(1.0f / static_cast<float>(r.num_tokens));
    const double norm = GlobalGradNorm(model->params(), norm_acc);
    opt.Step(model->params(), cfg.train.lr, kernels::ClipCoefficient(norm, cfg.train.grad_clip));
    const double elapsed =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (s >= warmup) ms.push_back(elapsed);
  }
  profiler::SetEnabled(false);
  const double wall_s = std::chrono::duration<double>(
      std::chrono::steady_clock::now().time_since_epoch()).count() - wall_start_s;
  // CPU-seconds burnt per second of the timed steps: about `threads` when every thread works,
  // and also when idle ones spin; well above the speed-up when threads contend.
  const double cpu_per_s = (ProcessCpuSeconds() - cpu_start) / wall_s;
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double tps = static_cast<double>(b * t) / (median / 1000.0);
  double load[3] = {-1, -1, -1};
  if (getloadavg(load, 3) < 1) load[0] = -1;
  nlohmann::json j = {{"bench", "train-step"},
                      {"backend", be.name()},
                      {"threads", be.NumThreads()},
                      {"cpu_s_per_s", cpu_per_s},
                      {"loadavg_1m", load[0]},
                      {"batch", b},
                      {"seq_len", t},
                      {"params", model->params().numel()},
                      {"median_step_ms", median},
                      {"min_step_ms", ms.front()},
                      {"tokens_per_s", tps},
                      {"model_tflops", model->FlopsPerToken(t) * tps / 1e12},
                      {"repeats", repeats}};
  std::string gemm_library;
  for (const auto& [key, value] : be.Properties()) {
    j[key] = value;
    if (key == "gemm") gemm_library = value;
  }
  if (profile) {
    const double sgemm = be.GemmRate(1024, 1024, 1024, 0.5);
    double mean = 0;
    for (double x : ms) mean += x / static_cast<double>(ms.size());
    j["profile"] = PrintProfile(repeats, mean, sgemm, gemm_library);
  }
  std::printf("%s\n", j.dump().c_str());
  return absl::OkStatus();
}


// ---- `lattice bench --config F`: timed steps of the parallel engine under any launcher ------

constexpr double kMiB = 1024.0 * 1024.0;

// Nearest-rank percentile of sorted values.
double Percentile(const std::vector<double>& sorted, double p) {
  const size_t n = sorted.size();
  const size_t i = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(n)));
  return sorted[std::min(n - 1, i == 0 ? 0 : i - 1)];
}

// The phases one rank reports, ms per step, from the engine's "phase.*" scopes (nested ones
// separated: optimizer excludes the ZeRO-1 gather wait, which is data-parallel communication).
// Order = the fixed layout every rank sends to rank 0.
constexpr const char* kPhaseNames[] = {"forward", "backward", "pipeline_bubble", "tp_comm",
                                       "grad_sync", "dp_comm_exposed", "loss_and_norm",
                                       "optimizer", "data_loading"};
constexpr int kNumPhases = sizeof(kPhaseNames) / sizeof(kPhaseNames[0]);

std::vector<double> PhaseMsPerStep(int64_t steps) {
  std::map<std::string, double> s;
  for (const profiler::OpStats& op : profiler::Snapshot()) {
    if (op.category == profiler::Category::kPhase) s[op.name] += op.seconds;
  }
  const double k = 1e3 / static_cast<double>(steps);
  return {k * s["phase.forward"],
          k * s["phase.backward"],
          k * s["phase.pipeline_wait"],
          k * s["phase.tp_comm"],
          k * s["phase.grad_sync"],
          k * (s["phase.dp_grad_reduce_exposed"] + s["phase.dp_param_gather_wait"]),
          k * s["phase.loss_and_norm"],
          k * (s["phase.optimizer"] - s["phase.dp_param_gather_wait"]),
          k * s["phase.data_loading"]};
}

// This data-parallel rank's micro-batches of step `step`: uniform random tokens (no file is
// read: data loading is the time to make them in memory).
std::vector<TokenBatch> SyntheticBatches(const Config& cfg, int dp_rank, int micro_batches,
                                         int64_t step, const CounterRng& rng) {
  const int64_t b = cfg.train.micro_batch_size, t = cfg.model.seq_len, n = b * t;
  std::vector<TokenBatch> out(static_cast<size_t>(micro_batches));
  for (int m = 0; m < micro_batches; ++m) {
    TokenBatch& tb = out[static_cast<size_t>(m)];
    tb.b = b;
    tb.t = t;
    tb.inputs.resize(static_cast<size_t>(n));
    tb.targets.resize(static_cast<size_t>(n));
    const uint64_t base = static_cast<uint64_t>(
        ((step * cfg.parallel.dp + dp_rank) * micro_batches + m) * 2 * n);
    for (int64_t i = 0; i < n; ++i) {
      tb.inputs[i] = static_cast<int32_t>(rng.Bits(base + i) % cfg.model.vocab_size);
      tb.targets[i] = static_cast<int32_t>(rng.Bits(base + n + i) % cfg.model.vocab_size);
    }
  }
  return out;
}

// Everything one rank sends rank 0, as doubles: the per-step wall times, the phases, memory.
enum RankField : int {
  kFieldThreads = 0,
  kFieldArena,          // EngineMemory::total(): what the engine's arenas and buffers hold
  kFieldParams,
  kFieldGrads,
  kFieldOptimizer,
  kFieldCommBuffers,
  kFieldActivationsPeak,
  kFieldScratch,
  kFieldHwm,            // VmHWM at the end
  kFieldBaseline,       // VmHWM before the engine was created
  kFieldHwmCreated,     // VmHWM right after (the steps' own peak is the rest)
  kFieldCommBytes,      // sent per step, all groups
  kFieldBuckets,
  kFieldOverlapped,
  kFieldCpuPerS,
  kFieldPhases,         // kNumPhases values, then the step times
};

absl::Status BenchSteps(const BenchOptions& o, Communicator& world) {
  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(o.config, o.sets));
  LATTICE_RETURN_IF_ERROR(cfg.ValidateLayout(world.size()));
  const bool logger = world.rank() == 0;
  kernels::Backend& be = kernels::DefaultBackend();
  {
    // As `lattice train` sizes the pool (launcher/trainer.cc): train.threads, else this rank's
    // cores (its affinity mask, or its share of an unbound node).
    auto env = ReadLaunchEnv();
    const int local = env.ok() && env->local_size > 0 ? env->local_size : world.size();
    be.SetNumThreads(cfg.train.threads > 0
                         ? cfg.train.threads
                         : be.DefaultThreads(AffinityCores(),
                                             static_cast<int>(std::thread::hardware_concurrency()),
                                             local));
  }
  double peak_tflops = cfg.train.peak_tflops;
  std::string peak_source = "train.peak_tflops";
  if (peak_tflops <= 0 && !o.cluster.empty()) {
    LATTICE_ASSIGN_OR_RETURN(ClusterSpec cl, LoadClusterSpec(o.cluster));
    peak_tflops = cl.peak_flops / 1e12;
    peak_source = absl::StrCat(o.cluster, " peak_tflops (", cl.device, ")");
  }
  // The process before the engine exists: the binary, MPI, the thread pool, the config.
  const int64_t baseline = PeakResidentBytes();
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<ParallelEngine> engine,
                           ParallelEngine::Create(cfg, world));
  const int64_t after_create = PeakResidentBytes();
  const int dp_rank = engine->grid().dp_rank();
  const int m_count = engine->micro_batches();
  CounterRng rng(cfg.train.seed, "bench.tokens");
  std::vector<double> ms;
  EngineStepResult last;
  double cpu_start = 0;
  const auto wall_start = std::chrono::steady_clock::now();
  auto timed_start = wall_start;
  for (int64_t s = 0; s < o.warmup + o.steps; ++s) {
    if (s == o.warmup) {
      profiler::Reset();
      profiler::SetEnabled(true);
      cpu_start = ProcessCpuSeconds();
      timed_start = std::chrono::steady_clock::now();
    }
    // Every rank starts the step together, so each rank's time is the step's, not its wait.
    LATTICE_RETURN_IF_ERROR(world.Barrier());
    const auto start = std::chrono::steady_clock::now();
    std::vector<TokenBatch> batches;
    {
      profiler::Scope phase("phase.data_loading", profiler::Category::kPhase);
      batches = SyntheticBatches(cfg, dp_rank, m_count, s, rng);
    }
    LATTICE_ASSIGN_OR_RETURN(last, engine->Step(batches, static_cast<float>(cfg.train.lr)));
    const double elapsed =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (s >= o.warmup) ms.push_back(elapsed);
  }
  profiler::SetEnabled(false);
  const double wall_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - timed_start).count();
  const EngineMemory mem = engine->memory();
  std::vector<double> mine(kFieldPhases + kNumPhases + o.steps, 0.0);
  mine[kFieldThreads] = be.NumThreads();
  mine[kFieldArena] = static_cast<double>(mem.total());
  mine[kFieldParams] = static_cast<double>(mem.params);
  mine[kFieldGrads] = static_cast<double>(mem.grads);
  mine[kFieldOptimizer] = static_cast<double>(mem.optimizer_state);
  mine[kFieldCommBuffers] = static_cast<double>(mem.comm_buffers);
  mine[kFieldActivationsPeak] = static_cast<double>(mem.activations_peak);
  mine[kFieldScratch] = static_cast<double>(mem.scratch);
  mine[kFieldHwm] = static_cast<double>(PeakResidentBytes());
  mine[kFieldBaseline] = static_cast<double>(baseline);
  mine[kFieldHwmCreated] = static_cast<double>(after_create);
  mine[kFieldCommBytes] = static_cast<double>(last.bytes.bytes());
  mine[kFieldBuckets] = last.buckets;
  mine[kFieldOverlapped] = last.overlapped_buckets;
  // CPU-seconds burnt per second of the timed steps (about the threads when all work).
  mine[kFieldCpuPerS] = (ProcessCpuSeconds() - cpu_start) / wall_s;
  const std::vector<double> phases = PhaseMsPerStep(o.steps);
  std::copy(phases.begin(), phases.end(), mine.begin() + kFieldPhases);
  std::copy(ms.begin(), ms.end(), mine.begin() + kFieldPhases + kNumPhases);
  const size_t row = mine.size();
  std::vector<double> all(row * static_cast<size_t>(world.size()));
  // As bytes: the communicator has no double type, and nothing is reduced.
  LATTICE_RETURN_IF_ERROR(world.AllGather(mine.data(), all.data(), row * sizeof(double),
                                          CommType::kU8));
  if (!logger) return absl::OkStatus();

  const int ranks = world.size();
  auto field = [&](int r, int f) { return all[static_cast<size_t>(r) * row + f]; };
  // A step takes as long as its slowest rank.
  std::vector<double> step_ms(static_cast<size_t>(o.steps), 0.0);
  for (int64_t s = 0; s < o.steps; ++s) {
    for (int r = 0; r < ranks; ++r) {
      step_ms[s] = std::max(step_ms[s], field(r, kFieldPhases + kNumPhases + static_cast<int>(s)));
    }
  }
  std::vector<double> sorted = step_ms;
  std::sort(sorted.begin(), sorted.end());
  double mean = 0;
  for (double x : sorted) mean += x / static_cast<double>(sorted.size());
  const double median = Percentile(sorted, 50);
  const int64_t tokens = cfg.train.global_batch_size * cfg.model.seq_len;
  const double tps = static_cast<double>(tokens) / (median / 1e3);
  const double flops_per_token = ModelFlopsPerToken(cfg.model);
  const double tflops_rank = tps * flops_per_token / ranks / 1e12;

  nlohmann::ordered_json j;
  j["bench"] = "steps";
  j["config"] = o.config;
  j["layout"] = engine->LayoutString();
  j["world"] = ranks;
  j["dp"] = cfg.parallel.dp;
  j["tp"] = cfg.parallel.tp;
  j["pp"] = cfg.parallel.pp;
  j["threads_per_rank"] = static_cast<int>(field(0, kFieldThreads));
  j["backend"] = be.name();
  for (const auto& [key, value] : be.Properties()) j[key] = value;
  j["global_batch"] = cfg.train.global_batch_size;
  j["micro_batch"] = cfg.train.micro_batch_size;
  j["micro_batches_per_rank"] = m_count;
  j["seq_len"] = cfg.model.seq_len;
  j["tokens_per_step"] = tokens;
  j["params_per_rank_rank0"] = engine->model().params().numel();
  j["warmup"] = o.warmup;
  j["steps"] = o.steps;
  j["step_ms"] = {{"median", median}, {"mean", mean}, {"min", sorted.front()},
                  {"max", sorted.back()}, {"p10", Percentile(sorted, 10)},
                  {"p90", Percentile(sorted, 90)}, {"all", step_ms},
                  {"definition", "wall time from a barrier to the end of Step, max over ranks"}};
  j["tokens_per_s"] = tps;
  j["tokens_per_s_per_rank"] = tps / ranks;
  j["flops_per_token"] = flops_per_token;
  j["model_tflops_per_rank"] = tflops_rank;
  j["mfu_convention"] =
      "model FLOPs per token 6*N_matmul + 6*n_layer*d_model*seq_len (attention's causal half, "
      "../shared/REFERENCE.md section 4) x tokens/s / ranks, over the peak per rank";
  if (peak_tflops > 0) {
    j["peak_tflops_per_rank"] = peak_tflops;
    j["peak_source"] = peak_source;
    j["mfu"] = tflops_rank / peak_tflops;
  } else {
    j["peak_tflops_per_rank"] = "unknown";
    j["peak_source"] = "unknown: set train.peak_tflops or --cluster";
    j["mfu"] = "unknown";
  }
  double load[3] = {-1, -1, -1};
  if (getloadavg(load, 3) < 1) load[0] = -1;
  j["loadavg_1m"] = load[0];

  nlohmann::ordered_json mem_rows = nlohmann::ordered_json::array();
  double max_arena = 0, max_hwm = 0, max_delta = 0;
  for (int r = 0; r < ranks; ++r) {
    const double delta = field(r, kFieldHwm) - field(r, kFieldBaseline);
    max_arena = std::max(max_arena, field(r, kFieldArena));
    max_hwm = std::max(max_hwm, field(r, kFieldHwm));
    max_delta = std::max(max_delta, delta);
    mem_rows.push_back({{"rank", r},
                        {"arena_bytes", field(r, kFieldArena)},
                        {"params", field(r, kFieldParams)},
                        {"grads", field(r, kFieldGrads)},
                        {"optimizer_state", field(r, kFieldOptimizer)},
                        {"comm_buffers", field(r, kFieldCommBuffers)},
                        {"activations_peak", field(r, kFieldActivationsPeak)},
                        {"scratch", field(r, kFieldScratch)},
                        {"vmhwm_bytes", field(r, kFieldHwm)},
                        {"vmhwm_baseline_bytes", field(r, kFieldBaseline)},
                        {"vmhwm_after_create_bytes", field(r, kFieldHwmCreated)},
                        {"vmhwm_minus_baseline_bytes", delta},
                        {"cpu_s_per_s", field(r, kFieldCpuPerS)}});
  }
  j["memory"] = {
      {"arena_bytes", "the engine's own allocations (EngineMemory: fp32 parameters, gradients, "
                      "AdamW state, ZeRO-1 staging, activation arena at its peak, scratch)"},
      {"vmhwm_bytes", "the process's peak resident set (/proc/self/status VmHWM)"},
      {"vmhwm_baseline_bytes", "VmHWM just before the engine was created (binary, MPI, threads)"},
      {"max_arena_bytes", max_arena},
      {"max_vmhwm_bytes", max_hwm},
      {"max_vmhwm_minus_baseline_bytes", max_delta},
      {"per_rank", mem_rows}};

  // Phases: mean over ranks, and the slowest rank's value.
  nlohmann::ordered_json ph;
  double accounted_mean = 0;
  for (int p = 0; p < kNumPhases; ++p) {
    double sum = 0, mx = 0;
    for (int r = 0; r < ranks; ++r) {
      sum += field(r, kFieldPhases + p);
      mx = std::max(mx, field(r, kFieldPhases + p));
    }
    ph[kPhaseNames[p]] = {{"mean_over_ranks", sum / ranks}, {"max_over_ranks", mx}};
    // tp_comm runs inside forward and backward: counted there.
    if (std::string(kPhaseNames[p]) != "tp_comm") accounted_mean += sum / ranks;
  }
  ph["other"] = {{"mean_over_ranks", std::max(0.0, mean - accounted_mean)},
                 {"note", "mean step minus the phases above (barrier exit, zeroing the "
                          "gradients, the token-count agreement, bookkeeping)"}};
  int buckets = 0, overlapped = 0;
  for (int r = 0; r < ranks; ++r) {
    buckets += static_cast<int>(field(r, kFieldBuckets));
    overlapped += static_cast<int>(field(r, kFieldOverlapped));
  }
  ph["dp_comm_overlapped"] = {
      {"ms", "not measured"},
      {"why", "the overlapped bucket reductions progress inside MPI calls made during the "
              "backward pass; no timer on this backend sees them apart from the backward"},
      {"buckets_overlapped", overlapped}, {"buckets", buckets}};
  ph["units"] = "ms per step";
  ph["nesting"] = "tp_comm is inside forward and backward (both include it); pipeline_bubble is "
                  "the time blocked on neighbour stages (fill, drain and the transfers); "
                  "dp_comm_exposed is the gradient reduction left after the backward plus the "
                  "ZeRO-1 parameter all-gather wait; optimizer excludes that wait";
  ph["timer_cost"] = "phase and kernel scopes are on during the timed steps (~1 us each)";
  j["phases"] = ph;
  double comm = 0;
  for (int r = 0; r < ranks; ++r) comm = std::max(comm, field(r, kFieldCommBytes));
  j["comm_bytes_per_step_max_rank"] = comm;

  // The human-readable summary.
  std::printf("lattice bench: %s, %s, %d rank(s) x %d thread(s), %lld tokens per step\n",
              o.config.c_str(), engine->LayoutString().c_str(), ranks,
              static_cast<int>(field(0, kFieldThreads)), static_cast<long long>(tokens));
  std::printf("step time: median %.2f ms [p10 %.2f, p90 %.2f; min %.2f, max %.2f] over %lld "
              "steps after %lld warm-up\n",
              median, Percentile(sorted, 10), Percentile(sorted, 90), sorted.front(),
              sorted.back(), static_cast<long long>(o.steps), static_cast<long long>(o.warmup));
  std::printf("throughput: %.0f tokens/s (%.0f per rank); %.4f model TFLOP/s per rank, MFU %s\n",
              tps, tps / ranks, tflops_rank,
              peak_tflops > 0 ? absl::StrFormat("%.1f%% of %.4f TFLOP/s (%s)",
                                                100 * tflops_rank / peak_tflops, peak_tflops,
                                                peak_source).c_str()
                              : "unknown (no peak: set train.peak_tflops or --cluster)");
  std::printf("  MFU convention: 6*N_matmul + 6*L*C*T FLOPs per token (REFERENCE.md section 4)\n");
  std::printf("memory, largest rank: arenas %.1f MiB; peak RSS (VmHWM) %.1f MiB, %.1f MiB above "
              "the process before the engine\n",
              max_arena / kMiB, max_hwm / kMiB, max_delta / kMiB);
  std::printf("phases (ms per step, mean over ranks):");
  for (int p = 0; p < kNumPhases; ++p) {
    std::printf(" %s %.2f", kPhaseNames[p],
                ph[kPhaseNames[p]]["mean_over_ranks"].get<double>());
  }
  std::printf(" other %.2f; dp_comm_overlapped not measured (%d of %d buckets overlapped)\n",
              ph["other"]["mean_over_ranks"].get<double>(), overlapped, buckets);
  if (o.profile) {
    PrintProfile(o.steps, mean, be.GemmRate(1024, 1024, 1024, 0.5),
                 be.Properties().empty() ? "" : j.value("gemm", ""));
  }
  const std::string text = j.dump(1) + "\n";
  std::printf("%s", text.c_str());
  if (!o.json.empty()) LATTICE_RETURN_IF_ERROR(WriteOutput(o.json, text));
  return absl::OkStatus();
}

}  // namespace

absl::Status RunBenchSteps(const BenchOptions& o) {
  LATTICE_ASSIGN_OR_RETURN(auto mpi, MpiRuntime::Initialize(nullptr, nullptr));
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> world, CreateWorldCommunicator());
  absl::Status status;
  try {
    status = BenchSteps(o, *world);
  } catch (const std::bad_alloc&) {
    status = absl::ResourceExhaustedError(
        "out of memory: the model, batch or layout needs more memory than this rank has");
  } catch (const std::exception& e) {
    status = absl::InternalError(absl::StrCat("unexpected exception: ", e.what()));
  }
  // As `lattice train`: a failing rank must not leave the others waiting in a collective.
  if (!status.ok() && world->size() > 1) AbortWorld(*world, status);
  return status;
}

absl::Status RunBenchCommand(const CommandArgs& args) {
  // `lattice bench train-step ...`: the single-process step benchmark (kept for
  // tests/bench/cpu_train_step_vs_torch.py and the per-op profile of docs/performance.md).
  if (!args.empty() && args[0] == "train-step") {
    return BenchTrainStep(CommandArgs(args.begin() + 1, args.end()));
  }
  BenchOptions o;
  po::options_description desc(
      "lattice bench: timed training steps under any launcher (--config), a scaling sweep "
      "(--sweep), or this machine's calibration for `lattice plan` (--calibrate).\n"
      "  lattice bench --config F [--set k=v ...] [--warmup N] [--steps N] [--json OUT]\n"
      "  lattice bench --sweep ranks=1,2,4 [--weak|--strong] --config F [--out-dir D]\n"
      "  lattice bench --calibrate --config F --out configs/clusters/cpu-local.yaml\n"
      "  lattice bench train-step --config F [--profile]   (one process, one micro-batch)\n"
      "MFU: model FLOPs 6*N_matmul + 6*L*C*T per token over the peak per rank");
  desc.add_options()("config", po::value(&o.config), "YAML config file")(
      "set", po::value(&o.sets)->composing(), "override a config key")(
      "warmup", po::value(&o.warmup)->default_value(3), "untimed steps")(
      "steps", po::value(&o.steps)->default_value(10), "timed steps")(
      "json", po::value(&o.json), "also write the JSON here")(
      "profile", po::bool_switch(&o.profile), "print rank 0's per-op profile")(
      "cluster", po::value(&o.cluster), "device description giving the peak for MFU")(
      "sweep", po::value(&o.sweep), "ranks=1,2,4: one run per rank count")(
      "weak", po::bool_switch(&o.weak), "sweep: global batch grows with the ranks")(
      "strong", po::bool_switch(&o.strong), "sweep: global batch fixed (the default)")(
      "out-dir", po::value(&o.out_dir)->default_value("bench-sweep"), "sweep: output folder")(
      "calibrate", po::bool_switch(&o.calibrate), "measure this machine for `lattice plan`")(
      "calibrate-mpi", po::bool_switch(&o.calibrate_mpi), "internal: the MPI part")(
      "threads", po::value(&o.threads)->default_value(0),
      "calibrate: threads per rank measured (0: the default)")(
      "out", po::value(&o.out), "calibrate: the cluster description written");
  po::variables_map vm;
  bool help = false;
  LATTICE_RETURN_IF_ERROR(ParseOptions("bench", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();
  LATTICE_RETURN_IF_ERROR(CheckIntOption("warmup", o.warmup, 0, kNoLimit));
  LATTICE_RETURN_IF_ERROR(CheckIntOption("steps", o.steps, 1, kNoLimit));
  LATTICE_RETURN_IF_ERROR(CheckIntOption("threads", o.threads, 0, kMaxThreads));
  if (o.weak && o.strong) return absl::InvalidArgumentError("--weak and --strong exclude each other");
  if ((o.weak || o.strong) && o.sweep.empty()) {
    return absl::InvalidArgumentError("--weak/--strong need --sweep ranks=...");
  }
  if (o.calibrate_mpi) return RunBenchCalibrate(o);
  if (o.config.empty()) {
    return absl::InvalidArgumentError("lattice bench: --config is required (see --help)");
  }
  if (o.calibrate) {
    if (!o.sweep.empty()) return absl::InvalidArgumentError("--calibrate and --sweep exclude each other");
    if (o.out.empty()) return absl::InvalidArgumentError("--calibrate needs --out FILE.yaml");
    return RunBenchCalibrate(o);
  }
  if (!o.sweep.empty()) return RunBenchSweep(o);
  return RunBenchSteps(o);
}

}  // namespace lattice
