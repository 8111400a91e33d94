// `lattice plan --model M --cluster C --global-batch B [--seq S] [--gpus N]`: every valid
// layout of the model on the cluster with predicted memory per GPU and step time, ranked, and
// why the winner wins (parallel/planner.h; docs/planner.md).
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "nlohmann/json.hpp"
#include "parallel/pipeline_schedule.h"
#include "parallel/planner.h"
#include "runtime/config.h"
#include "runtime/status.h"

namespace lattice {

namespace po = boost::program_options;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// A file that exists, else the preset of that name under `dir` of the current directory.
std::string Resolve(const std::string& name, const std::string& dir) {
  std::error_code ec;
  if (std::filesystem::exists(name, ec) || name.find('/') != std::string::npos) return name;
  return (std::filesystem::path(dir) / (name + ".yaml")).string();
}

nlohmann::ordered_json ToJson(const PlanEntry& e) {
  const MemoryPrediction& m = e.memory;
  const TimePrediction& t = e.time;
  nlohmann::ordered_json j;
  j["layout"] = {{"dp", e.layout.dp},
                 {"tp", e.layout.tp},
                 {"pp", e.layout.pp},
                 {"vpp", e.layout.vpp},
                 {"micro_batch", e.layout.micro_batch},
                 {"zero1", e.layout.zero1},
                 {"sequence_parallel", e.layout.sequence_parallel},
                 {"recompute", std::string(RecomputeName(e.layout.recompute))},
                 {"schedule", std::string(PipelineScheduleName(e.layout.schedule))}};
  j["micro_batches"] = e.micro_batches;
  j["memory_bytes"] = {{"total", m.total()},       {"params", m.params},
                       {"grads", m.grads},         {"optimizer", m.optimizer},
                       {"activations", m.activations}, {"classifier", m.classifier},
                       {"reserved", m.reserved},   {"comm_buffers", m.comm_buffers},
                       {"stage", m.stage},
                       {"in_flight", m.in_flight}};
  j["fits"] = e.fits;
  j["time_s"] = {{"step", t.step()},       {"compute", t.compute}, {"bubble", t.bubble},
                 {"tp_comm", t.tp_comm},   {"pp_comm", t.pp_comm}, {"dp_comm", t.dp_comm},
                 {"optimizer", t.optimizer}};
  j["tokens_per_s"] = e.tokens_per_s;
  j["tflops_per_gpu"] = e.tflops_per_gpu;
  j["mfu"] = e.mfu;
  j["megatron_tflops_per_gpu"] = e.megatron_tflops_per_gpu;
  return j;
}

}  // namespace

absl::Status RunPlanCommand(const CommandArgs& args) {
  std::string model_path, cluster_path, recompute;
  int64_t global_batch = 0, seq = 0, gpus = 0, top = 0;
  int64_t tp = 0, pp = 0, vpp = 0, dp = 0, mbs = 0;
  std::string zero1;
  std::vector<std::string> sets;
  po::options_description desc(
      "lattice plan: predicted memory per GPU and step time of every valid layout, ranked\n"
      "(MFU: model FLOPs 6*N_matmul + 6*L*C*T per token over the dense bf16 peak)");
  desc.add_options()("model", po::value(&model_path)->required(),
                     "model config (YAML) or preset name (configs/<name>.yaml)")(
      "cluster", po::value(&cluster_path)->required(),
      "cluster description or name (configs/clusters/<name>.yaml)")(
      "global-batch", po::value(&global_batch)->required(), "sequences per optimizer step")(
      "seq", po::value(&seq)->default_value(0), "sequence length (0 = the model's seq_len)")(
      "gpus", po::value(&gpus)->default_value(0), "GPUs in all (0 = one node)")(
      "set", po::value(&sets)->composing(), "override a model key, e.g. model.n_layer=48")(
      "tp", po::value(&tp)->default_value(0), "only this tensor-parallel size (0 = any)")(
      "pp", po::value(&pp)->default_value(0), "only this pipeline size (0 = any)")(
      "vpp", po::value(&vpp)->default_value(0), "only this virtual pipeline size (0 = any)")(
      "dp", po::value(&dp)->default_value(0), "only this data-parallel size (0 = any)")(
      "micro-batch", po::value(&mbs)->default_value(0), "only this micro-batch size (0 = any)")(
      "zero1", po::value(&zero1)->default_value(""), "only with (true) or without (false) ZeRO-1")(
      "recompute", po::value(&recompute)->default_value(""), "only none | selective | full")(
      "top", po::value(&top)->default_value(15), "table rows (0 = all)")(
      "json", "print every layout as JSON instead of the table");
  po::variables_map vm;
  bool help = false;
  LATTICE_RETURN_IF_ERROR(ParseOptions("plan", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  LATTICE_RETURN_IF_ERROR(CheckIntOption("--global-batch", global_batch, 1, int64_t{1} << 40));
  LATTICE_RETURN_IF_ERROR(CheckIntOption("--seq", seq, 0, int64_t{1} << 30));
  LATTICE_RETURN_IF_ERROR(CheckIntOption("--gpus", gpus, 0, int64_t{1} << 20));
  LATTICE_RETURN_IF_ERROR(CheckIntOption("--top", top, 0, int64_t{1} << 20));
  for (const auto& [name, v] : {std::pair<const char*, int64_t>{"--tp", tp}, {"--pp", pp},
                                {"--vpp", vpp}, {"--dp", dp}, {"--micro-batch", mbs}}) {
    LATTICE_RETURN_IF_ERROR(CheckIntOption(name, v, 0, int64_t{1} << 20));
  }

  std::vector<std::string> overrides = sets;
  if (seq > 0) overrides.push_back(absl::StrCat("model.seq_len=", seq));
  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(Resolve(model_path, "configs"), overrides));
  LATTICE_ASSIGN_OR_RETURN(ClusterSpec cluster,
                           LoadClusterSpec(Resolve(cluster_path, "configs/clusters")));

  PlanRequest req;
  req.model = cfg.model;
  req.gpus = gpus > 0 ? gpus : cluster.gpus_per_node;
  req.global_batch = global_batch;
  if (tp > 0) req.tp = tp;
  if (pp > 0) req.pp = pp;
  if (vpp > 0) req.vpp = vpp;
  if (dp > 0) req.dp = dp;
  if (mbs > 0) req.micro_batch = mbs;
  if (zero1 == "true") {
    req.zero1 = true;
  } else if (zero1 == "false") {
    req.zero1 = false;
  } else if (!zero1.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--zero1='", zero1, "' must be true or false"));
  }
  if (recompute == "none") {
    req.recompute = Recompute::kNone;
  } else if (recompute == "selective") {
    req.recompute = Recompute::kSelective;
  } else if (recompute == "full") {
    req.recompute = Recompute::kFull;
  } else if (!recompute.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--recompute='", recompute, "' must be none, selective or full"));
  }
  LATTICE_ASSIGN_OR_RETURN(std::vector<PlanEntry> plans, EnumeratePlans(req, cluster));

  if (vm.count("json")) {
    nlohmann::ordered_json j;
    j["cluster"] = cluster.name;
    j["device"] = cluster.device;
    j["gpus"] = req.gpus;
    j["global_batch"] = global_batch;
    j["seq_len"] = cfg.model.seq_len;
    j["mfu_convention"] =
        "model FLOPs per token 6*N_matmul + 6*n_layer*d_model*seq_len (causal half of attention) "
        "over the dense bf16 peak; megatron_tflops_per_gpu uses Megatron-LM's formula";
    j["flops_per_token"] = ModelFlopsPerToken(cfg.model);
    j["megatron_flops_per_token"] = MegatronFlopsPerToken(cfg.model);
    j["explanation"] = ExplainWinner(plans, cluster);
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();
    for (const PlanEntry& e : plans) rows.push_back(ToJson(e));
    j["layouts"] = std::move(rows);
    std::printf("%s\n", j.dump(1).c_str());
    return absl::OkStatus();
  }
  std::printf("lattice plan: %s on %lld x %s (%s), global batch %lld x seq %lld: %zu valid "
              "layouts\n",
              model_path.c_str(), static_cast<long long>(req.gpus), cluster.device.c_str(),
              cluster.name.c_str(), static_cast<long long>(global_batch),
              static_cast<long long>(cfg.model.seq_len), plans.size());
  std::printf("MFU: model FLOPs 6*N_matmul + 6*L*C*T per token over %.4g TFLOP/s %s\n\n",
              cluster.peak_flops / 1e12,
              cluster.backend == "cpu" ? "(the calibration's fp32 sgemm 1024^3 per rank)"
                                       : "dense bf16");
  std::printf("%4s %-78s %4s %8s %9s %8s %7s %6s %6s %6s %6s\n", "rank", "layout", "fits",
              "mem GiB", "step s", "tok/s/GPU", "MFU %", "bub %", "tp %", "dp %", "pp %");
  const size_t n = top > 0 ? std::min<size_t>(plans.size(), static_cast<size_t>(top)) : plans.size();
  for (size_t i = 0; i < n; ++i) {
    const PlanEntry& e = plans[i];
    const double step = e.time.step();
    std::printf("%4zu %-78s %4s %8.1f %9.3f %8.0f %7.1f %6.1f %6.1f %6.1f %6.1f\n", i + 1,
                e.layout.ToString().c_str(), e.fits ? "yes" : "no", e.memory.total() / kGiB, step,
                e.tokens_per_s / static_cast<double>(req.gpus), 100 * e.mfu,
                100 * e.time.bubble / step, 100 * e.time.tp_comm / step,
                100 * e.time.dp_comm / step, 100 * e.time.pp_comm / step);
  }
  std::printf("\n%s\n", ExplainWinner(plans, cluster).c_str());
  return absl::OkStatus();
}

}  // namespace lattice
