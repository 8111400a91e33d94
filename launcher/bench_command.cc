#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/grad_norm.h"
#include "kernels/matmul.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "nlohmann/json.hpp"
#include "runtime/rng.h"

namespace lattice {

namespace po = boost::program_options;

namespace {

// `lattice bench train-step`: the median wall time of one full training step (forward, backward,
// grad norm, AdamW) of one micro-batch of random tokens, over --repeats timed steps after
// --warmup untimed ones.
absl::Status BenchTrainStep(const CommandArgs& args) {
  po::options_description desc("lattice bench train-step");
  std::string config;
  std::vector<std::string> sets;
  int64_t warmup = 3, repeats = 10;
  desc.add_options()("config", po::value(&config)->required(), "YAML config file")(
      "warmup", po::value(&warmup)->default_value(3), "untimed steps")(
      "repeats", po::value(&repeats)->default_value(10), "timed steps (median reported)")(
      "set", po::value(&sets)->composing(), "override a config key");
  po::variables_map vm;
  bool help;
  LATTICE_RETURN_IF_ERROR(ParseOptions("bench train-step", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  if (repeats < 1) return absl::InvalidArgumentError("--repeats must be >= 1");
  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(config, sets));
  if (cfg.train.threads > 0) kernels::cpu::SetNumThreads(cfg.train.threads);
  const int64_t b = cfg.train.micro_batch_size, t = cfg.model.seq_len;
  LATTICE_ASSIGN_OR_RETURN(auto model, Decoder::Create(cfg.model, b));
  model->InitializeWeights(cfg.train.seed);
  AdamW opt(model->params(), cfg.train);
  std::vector<int32_t> tokens(b * t), targets(b * t);
  CounterRng rng(cfg.train.seed, "bench.tokens");
  for (int64_t i = 0; i < b * t; ++i) {
    tokens[i] = static_cast<int32_t>(rng.Bits(i) % cfg.model.vocab_size);
    targets[i] = static_cast<int32_t>(rng.Bits(i + b * t) % cfg.model.vocab_size);
  }
  std::vector<double> ms;
  for (int64_t s = 0; s < warmup + repeats; ++s) {
    const auto start = std::chrono::steady_clock::now();
    model->params().ZeroGrads();
    ForwardResult r = model->Forward(tokens.data(), targets.data(), nullptr, b, t);
    model->Backward(1.0f / static_cast<float>(r.num_tokens));
    const double norm = GlobalGradNorm(model->params());
    opt.Step(model->params(), cfg.train.lr, kernels::cpu::ClipCoefficient(norm, cfg.train.grad_clip));
    const double elapsed =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (s >= warmup) ms.push_back(elapsed);
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double tps = static_cast<double>(b * t) / (median / 1000.0);
  nlohmann::json j = {{"bench", "train-step"},
                      {"backend", "cpu"},
                      {"threads", kernels::cpu::NumThreads()},
                      {"batch", b},
                      {"seq_len", t},
                      {"params", model->params().numel()},
                      {"median_step_ms", median},
                      {"min_step_ms", ms.front()},
                      {"tokens_per_s", tps},
                      {"model_tflops", model->FlopsPerToken(t) * tps / 1e12},
                      {"repeats", repeats}};
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
