#include <sys/resource.h>

#include <algorithm>
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
#include "launcher/commands.h"
#include "launcher/options.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "nlohmann/json.hpp"
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
  LATTICE_ASSIGN_OR_RETURN(auto model, Decoder::Create(cfg.model, b));
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

}  // namespace

absl::Status RunBenchCommand(const CommandArgs& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::printf("usage: lattice bench <name> [options]\n\nbenchmarks:\n"
                "  train-step   median time of a CPU training step (forward+backward+AdamW)\n");
    return args.empty() ? absl::InvalidArgumentError("name a benchmark, e.g. `lattice bench train-step`")
                        : absl::OkStatus();
  }
  const CommandArgs rest(args.begin() + 1, args.end());
  if (args[0] == "train-step") return BenchTrainStep(rest);
  return absl::InvalidArgumentError(absl::StrCat("unknown benchmark '", args[0],
                                                 "' (known: train-step)"));
}

}  // namespace lattice
