#include "parallel/planner.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/decoder.h"
#include "parallel/engine.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/process_grid.h"
#include "runtime/io/yaml_limits.h"
#include "runtime/status.h"
#include "yaml-cpp/yaml.h"

namespace lattice {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Bytes per element of the mixed-precision layout (planner.h).
constexpr double kBf16 = 2;
constexpr double kGradBytes = 4;       // fp32 gradient accumulation
constexpr double kOptimizerBytes = 12; // fp32 master weights + Adam m + Adam v
// The Adam update reads the fp32 gradient (4), reads and writes the master weight, m and v
// (3 * 8) and writes the bf16 weight (2): 30 bytes per parameter it owns.
constexpr double kAdamTrafficBytes = 30;
// Element-wise traffic per layer, in units of the layer's stored activation bytes: the forward
// writes each stored tensor and the next op reads it (2); the backward reads it and writes and
// reads its gradient (4). A count of passes over the data, not a measured figure.
constexpr double kForwardTrafficPasses = 2;
constexpr double kBackwardTrafficPasses = 4;
// The pipeline simulator steps every rank each tick; beyond this many actions the closed forms
// of parallel/pipeline_schedule.h (which its tests check against the simulation) are used.
constexpr int64_t kMaxSimulatedActions = 1 << 16;
// Kernels of one layer and one micro-batch: the forward's 4 GEMMs (QKV, attention projection,
// the MLP's two), the attention kernel and 6 element-wise ones (2 norms, the activation, 2
// residual adds, the bias/rotary step); the backward launches about two per forward kernel
// (data and weight gradients).
constexpr double kForwardKernels = 11;
constexpr double kBackwardKernels = 22;

// Keys of a cluster description: name -> where it goes and its unit's scale.
struct ClusterKey {
  const char* key;
  double ClusterSpec::*field;
  double scale;
};
constexpr ClusterKey kClusterKeys[] = {
    {"peak_tflops", &ClusterSpec::peak_flops, 1e12},
    {"hbm_gb", &ClusterSpec::hbm_bytes, 1e9},
    {"hbm_tb_per_s", &ClusterSpec::hbm_bandwidth, 1e12},
    {"nvlink_gb_per_s", &ClusterSpec::nvlink_bandwidth, 1e9},
    {"nvlink_latency_us", &ClusterSpec::nvlink_latency, 1e-6},
    {"network_gb_per_s", &ClusterSpec::network_bandwidth, 1e9},
    {"network_latency_us", &ClusterSpec::network_latency, 1e-6},
    {"reserved_gb", &ClusterSpec::reserved_bytes, 1e9},
    {"gemm_efficiency", &ClusterSpec::gemm_efficiency, 1},
    {"attention_efficiency", &ClusterSpec::attention_efficiency, 1},
    {"memory_efficiency", &ClusterSpec::memory_efficiency, 1},
    {"kernel_overhead_us", &ClusterSpec::kernel_overhead, 1e-6},
    {"tp_overlap", &ClusterSpec::tp_overlap, 1},
    {"dp_overlap", &ClusterSpec::dp_overlap, 1},
    {"pp_overlap", &ClusterSpec::pp_overlap, 1},
};

// Ring all-gather or reduce-scatter of a `bytes` tensor (the whole, not one rank's part).
double RingTime(int64_t n, double bytes, double bandwidth, double latency) {
  if (n <= 1) return 0;
  const double nd = static_cast<double>(n);
  return (nd - 1) * latency + (nd - 1) / nd * bytes / bandwidth;
}
// All-reduce: a reduce-scatter and an all-gather; the latency term is the cheaper of a ring's
// 2 (n-1) steps and a tree's 2 log2(n) (NCCL picks by size).
double AllReduceTime(int64_t n, double bytes, double bandwidth, double latency) {
  if (n <= 1) return 0;
  const double nd = static_cast<double>(n);
  const double steps = std::min(2 * (nd - 1), 2 * std::ceil(std::log2(nd)));
  return steps * latency + 2 * (nd - 1) / nd * bytes / bandwidth;
}

std::vector<int64_t> Divisors(int64_t n) {
  std::vector<int64_t> d;
  for (int64_t i = 1; i * i <= n; ++i) {
    if (n % i != 0) continue;
    d.push_back(i);
    if (i != n / i) d.push_back(n / i);
  }
  std::sort(d.begin(), d.end());
  return d;
}

// Parameters of one rank of the layout (tp rank 0, dp rank 0, pipeline stage `stage`), counted
// by lattice's own decoder for that rank's shard.
absl::StatusOr<ProcessGrid> StageGrid(const Config& cfg, int64_t world, int64_t stage) {
  const ParallelConfig& p = cfg.parallel;
  LATTICE_ASSIGN_OR_RETURN(ProcessGrid g0, ProcessGrid::Create(static_cast<int>(world), 0,
                                                               static_cast<int>(p.tp),
                                                               static_cast<int>(p.pp),
                                                               static_cast<int>(p.dp)));
  const int rank = g0.RankOf(0, 0, static_cast<int>(stage));
  return ProcessGrid::Create(static_cast<int>(world), rank, static_cast<int>(p.tp),
                             static_cast<int>(p.pp), static_cast<int>(p.dp));
}

absl::StatusOr<double> StageParameters(const Config& cfg, int64_t world, int64_t stage) {
  LATTICE_ASSIGN_OR_RETURN(ProcessGrid g, StageGrid(cfg, world, stage));
  const ModelShard shard = ParallelEngine::ShardFor(cfg, g);
  LATTICE_ASSIGN_OR_RETURN(DecoderMemory mem, Decoder::PlanMemory(cfg.model, 1, shard));
  return static_cast<double>(mem.params) / sizeof(float);
}

// Matmul parameters of one layer (the whole layer, all tp ranks).
double LayerMatmulParams(const ModelConfig& m) {
  const double c = static_cast<double>(m.d_model);
  const double hd = static_cast<double>(m.head_dim());
  const double qkv = c * hd * static_cast<double>(m.n_head + 2 * m.kv_heads());
  const double proj = c * c;
  const double ff = static_cast<double>(m.ff_dim());
  const double mlp = (m.arch == Arch::kLlama ? 3 : 2) * c * ff;
  return qkv + proj + mlp;
}

struct Peaks {
  std::vector<int> in_flight;  // per stage, in model chunks
  double ticks_per_chunk_pass = 0;  // total ticks / (2 vpp): M + (pp - 1) / vpp
};

absl::StatusOr<Peaks> PipelinePeaks(PipelineSchedule kind, int64_t pp, int64_t vpp, int64_t m) {
  Peaks out;
  if (pp == 1) {
    out.in_flight = {kind == PipelineSchedule::kGpipe ? static_cast<int>(m) : 1};
    out.ticks_per_chunk_pass = static_cast<double>(m);
    return out;
  }
  if (m * vpp * pp <= kMaxSimulatedActions) {
    LATTICE_ASSIGN_OR_RETURN(PipelineSimulation sim,
                             SimulatePipeline(kind, static_cast<int>(pp), static_cast<int>(vpp),
                                              static_cast<int>(m)));
    out.in_flight = sim.peak_in_flight;
    out.ticks_per_chunk_pass = sim.total_ticks / (2.0 * static_cast<double>(vpp));
    return out;
  }
  // The closed forms of parallel/pipeline_schedule.h.
  if (kind == PipelineSchedule::kInterleaved && m % pp != 0) {
    return absl::InvalidArgumentError(absl::StrCat("the interleaved schedule needs micro-batches (",
                                                   m, ") divisible by pp=", pp));
  }
  for (int64_t s = 0; s < pp; ++s) {
    int64_t peak = 0;
    switch (kind) {
      case PipelineSchedule::kGpipe: peak = m; break;
      case PipelineSchedule::kOneFOneB: peak = std::min(pp - s, m); break;
      case PipelineSchedule::kInterleaved:
        peak = std::min((pp - s - 1) * 2 + (vpp - 1) * pp + 1, m * vpp);
        break;
    }
    out.in_flight.push_back(static_cast<int>(peak));
  }
  out.ticks_per_chunk_pass =
      static_cast<double>(m) + static_cast<double>(pp - 1) / static_cast<double>(vpp);
  return out;
}


// Bytes of the fp32 tensors one layer stores for its backward, per micro-batch (the GPU
// count's tensors at 4 bytes: norm and GEMM inputs, Q, K, V, attention output, the MLP's).
double CpuLayerActivationBytes(const ModelConfig& m, double b, double t, bool sp) {
  const double sbh = static_cast<double>(m.seq_len) * b * static_cast<double>(m.d_model);
  const double kv_ratio = static_cast<double>(m.kv_heads()) / static_cast<double>(m.n_head);
  const double mlp_units =
      (m.arch == Arch::kLlama ? 3.0 : 2.0) * static_cast<double>(m.ff_dim()) / static_cast<double>(m.d_model);
  return 4 * (4 * sbh / (sp ? t : 1) + sbh * (2 + 2 * kv_ratio + mlp_units) / t);
}

// The classifier's element-wise bytes per micro-batch: the fp32 logits written and read by the
// loss, its softmax written in place and read by the backward (2 passes of 8 bytes).
double CpuClassifierBytes(const ModelConfig& m, double b, double t) {
  return kForwardTrafficPasses * 8 * static_cast<double>(m.seq_len) * b *
         static_cast<double>(m.padded_vocab()) / t;
}

// The "cpu" model (planner.h, PredictLayout).
absl::StatusOr<PlanEntry> PredictCpu(const Config& cfg, const ClusterSpec& cl,
                                     const PlanLayout& lay, int64_t micro_batches,
                                     const Peaks& peaks) {
  const ModelConfig& m = cfg.model;
  const int64_t world = lay.dp * lay.tp * lay.pp;
  const bool sp = cfg.parallel.sequence_parallel;
  const double t = static_cast<double>(lay.tp);
  const double s = static_cast<double>(m.seq_len);
  const double b = static_cast<double>(lay.micro_batch);
  const double c = static_cast<double>(m.d_model);
  const double vp = static_cast<double>(m.padded_vocab());
  const double sbh = s * b * c;
  const double mbs_d = static_cast<double>(micro_batches);
  const double rows_bytes = 4 * sbh / (sp ? t : 1);  // one pipeline message (HiddenRows x C)

  PlanEntry e;
  e.layout = lay;
  e.layout.sequence_parallel = sp;
  e.micro_batches = micro_batches;
  double head_params = 0;
  for (int64_t stage : {int64_t{0}, lay.pp - 1}) {
    LATTICE_ASSIGN_OR_RETURN(ProcessGrid g, StageGrid(cfg, world, stage));
    const ModelShard shard = ParallelEngine::ShardFor(cfg, g);
    LATTICE_ASSIGN_OR_RETURN(EngineMemory em,
                             ParallelEngine::PlanMemory(cfg, g, shard,
                                                        static_cast<int>(micro_batches),
                                                        kDefaultBucketBytes));
    if (stage == lay.pp - 1) head_params = static_cast<double>(em.params) / sizeof(float);
    MemoryPrediction mem;
    mem.stage = stage;
    mem.in_flight = peaks.in_flight[static_cast<size_t>(stage)];
    mem.params = static_cast<double>(em.params);
    mem.grads = static_cast<double>(em.grads);
    mem.optimizer = static_cast<double>(em.optimizer_state);
    mem.activations = static_cast<double>(em.activations_peak + em.scratch);
    // The pipeline's buffers (parallel/engine.cc RunSchedule): one receive buffer, and up to 9
    // sends alive (it waits for the oldest once more than 8 are queued) out of this stage's
    // sends of a step; plus the step's token batches (inputs and targets, int32).
    double pipe = 0, pipe_mpi = 0;
    if (lay.pp > 1) {
      const double sends = 2 * mbs_d * static_cast<double>(lay.vpp) -
                           (stage == 0 ? mbs_d : 0) - (stage == lay.pp - 1 ? mbs_d : 0);
      pipe = (std::min(9.0, sends) + 1) * rows_bytes;
      // What MPI's point-to-point path adds for those sends in flight (measured per byte).
      pipe_mpi = cl.reserved_mpi_p2p_per_byte * std::min(9.0, sends) * rows_bytes;
    }
    mem.comm_buffers = static_cast<double>(em.comm_buffers) + pipe + 8 * mbs_d * s * b;
    // MPI's share: fixed, and its temporary buffers for the largest collective message: the
    // data-parallel bucket (ZeRO-1 or not, the whole bucket goes in), a tensor-parallel
    // all-gather's output (sbh fp32), the tied embedding's gradient.
    double largest = 0;
    if (lay.dp > 1) {
      largest = std::min(static_cast<double>(em.params), static_cast<double>(kDefaultBucketBytes));
    }
    if (lay.tp > 1) largest = std::max(largest, 4 * sbh);
    // Tied embeddings: the first and the last stage (the two this loop predicts) all-reduce the
    // embedding's gradient, a vocab-parallel shard (ParallelEngine::SyncEmbeddingGrads), every
    // step; MPI's temporary for it is the size of the message (3 MiB on the demo's pp=2 ranks,
    // heaptrack: Open MPI's libnbc iallreduce).
    if (lay.pp > 1 && m.tied()) largest = std::max(largest, 4 * vp / t * c);
    mem.reserved = cl.reserved_bytes + pipe_mpi +
                   (world > 1 ? cl.reserved_mpi_bytes + cl.reserved_mpi_per_byte * largest : 0);
    if (mem.total() > e.memory.total()) e.memory = mem;
  }
  // All ranks on one machine (a cpu description is one node): its memory holds them all.
  e.fits = e.memory.total() * static_cast<double>(world) <= cl.hbm_bytes;

  // Oversubscription: the rates were measured at threads_per_rank threads on otherwise idle
  // cores; ranks x threads beyond the cores share them.
  const double demand = static_cast<double>(world * cl.threads_per_rank);
  const double share = std::min(1.0, cl.cores_per_node / demand);
  const double gemm_rate = cl.peak_flops * cl.gemm_efficiency * share;
  const double attn_rate = cl.peak_flops * cl.attention_efficiency * share;
  const double mem_rate = cl.hbm_bandwidth * cl.memory_efficiency * share;
  const double opt_rate = cl.optimizer_bandwidth * share;
  const double act = CpuLayerActivationBytes(m, b, t, sp);
  const double gemm_fwd = 2 * s * b * LayerMatmulParams(m) / t / gemm_rate;
  const double attn_fwd = 2 * s * s * b * c / t / attn_rate;
  const double elem_fwd = kForwardTrafficPasses * act / mem_rate;
  const double elem_bwd = kBackwardTrafficPasses * act / mem_rate;
  double layer_time = 3 * gemm_fwd + 3 * attn_fwd + elem_fwd + elem_bwd;
  if (lay.recompute == Recompute::kSelective) layer_time += attn_fwd;
  if (lay.recompute == Recompute::kFull) layer_time += gemm_fwd + attn_fwd + elem_fwd;
  // Tensor-parallel collectives of one layer over MPI's shared memory (the GPU count, fp32),
  // blocking: nothing hidden.
  const double bw = cl.nvlink_bandwidth, lat = cl.nvlink_latency;
  double tp_layer = 0;
  if (lay.tp > 1) {
    const double full = 4 * sbh;
    const double fwd = sp ? 4 * RingTime(lay.tp, full, bw, lat) : 2 * AllReduceTime(lay.tp, full, bw, lat);
    const double bwd = sp ? 6 * RingTime(lay.tp, full, bw, lat) : 2 * AllReduceTime(lay.tp, full, bw, lat);
    tp_layer = fwd + bwd + (lay.recompute == Recompute::kFull ? fwd : 0);
  }
  const double classifier = 3 * 2 * s * b * c * vp / t / gemm_rate + CpuClassifierBytes(m, b, t) / mem_rate;
  const double layers_per_stage = static_cast<double>(m.n_layer / lay.pp);
  const double stage_compute_mb = layers_per_stage * layer_time + classifier;
  const double stage_tp_mb = layers_per_stage * tp_layer;
  e.time.compute = mbs_d * stage_compute_mb;
  // The last stage waits, at the fill and the drain, for the other stages' passes: layers
  // without the classifier (at the demo's vocabulary the classifier is ~2 layers' work, so
  // counting it there would overstate the bubble).
  e.time.bubble = (peaks.ticks_per_chunk_pass - mbs_d) *
                  (lay.pp > 1 ? layers_per_stage * layer_time + stage_tp_mb
                              : stage_compute_mb + stage_tp_mb);
  e.time.tp_comm = (1 - cl.tp_overlap) * mbs_d * stage_tp_mb;
  if (lay.pp > 1) {
    e.time.pp_comm = (1 - cl.pp_overlap) * mbs_d * 2 * static_cast<double>(lay.vpp) *
                     (lat + rows_bytes / bw);
  }
  // Data parallel: fp32 gradients all-reduced, or reduce-scattered and the fp32 parameters
  // all-gathered (ZeRO-1); plus every step's small agreements (the token count over dp, the loss
  // and norm over the world), one latency-bound gather each.
  const double dp = static_cast<double>(lay.dp);
  double dp_comm = 0;
  if (lay.dp > 1) {
    const double grads = 4 * head_params;
    dp_comm = lay.zero1 ? 2 * RingTime(lay.dp, grads, bw, lat) : AllReduceTime(lay.dp, grads, bw, lat);
    dp_comm = std::max(dp_comm * (1 - cl.dp_overlap), dp_comm - e.time.compute);
  }
  dp_comm += RingTime(lay.dp, 16 * dp, bw, lat) + RingTime(world, 16 * static_cast<double>(world), bw, lat);
  e.time.dp_comm = dp_comm;
  const double updated = lay.zero1 ? head_params / dp : head_params;
  e.time.optimizer =
      (kCpuNormBytesPerParam * head_params / dp + kCpuAdamBytesPerParam * updated) / opt_rate;

  const double step = e.time.step();
  e.tokens_per_s = static_cast<double>(cfg.train.global_batch_size) * s / step;
  e.tflops_per_gpu = e.tokens_per_s * ModelFlopsPerToken(m) / static_cast<double>(world) / 1e12;
  e.mfu = e.tflops_per_gpu * 1e12 / cl.peak_flops;
  e.megatron_tflops_per_gpu =
      e.tokens_per_s * MegatronFlopsPerToken(m) / static_cast<double>(world) / 1e12;
  return e;
}

}  // namespace

CpuWork CpuMicroBatchWork(const ModelConfig& m, int64_t micro_batch) {
  const double b = static_cast<double>(micro_batch);
  const double s = static_cast<double>(m.seq_len);
  const double c = static_cast<double>(m.d_model);
  const double l = static_cast<double>(m.n_layer);
  CpuWork w;
  w.gemm_flops = l * 3 * 2 * s * b * LayerMatmulParams(m) +
                 3 * 2 * s * b * c * static_cast<double>(m.padded_vocab());
  w.attention_flops = l * 3 * 2 * s * s * b * c;
  w.elementwise_bytes =
      l * (kForwardTrafficPasses + kBackwardTrafficPasses) * CpuLayerActivationBytes(m, b, 1, false) +
      CpuClassifierBytes(m, b, 1);
  return w;
}

absl::string_view RecomputeName(Recompute r) {
  switch (r) {
    case Recompute::kNone: return "none";
    case Recompute::kSelective: return "selective";
    case Recompute::kFull: return "full";
  }
  return "?";
}

std::string PlanLayout::ToString() const {
  return absl::StrFormat("dp=%d tp=%d pp=%d vpp=%d mbs=%d %s%s recompute=%s schedule=%s", dp, tp,
                         pp, vpp, micro_batch, zero1 ? "zero1" : "no-zero1",
                         tp > 1 && sequence_parallel ? " sp" : "", RecomputeName(recompute),
                         PipelineScheduleName(schedule));
}

absl::StatusOr<ClusterSpec> ParseClusterSpec(absl::string_view yaml, absl::string_view source) {
  LATTICE_RETURN_IF_ERROR(Annotate(CheckYamlLimits(yaml), source));
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not YAML: ", e.what()));
  }
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat(source, ": not a mapping"));
  ClusterSpec c;
  std::map<std::string, bool> seen;
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    try {
      if (key == "name") {
        c.name = v.as<std::string>();
      } else if (key == "device") {
        c.device = v.as<std::string>();
      } else if (key == "gpus_per_node") {
        c.gpus_per_node = v.as<int64_t>();
      } else if (key == "flash_attention") {
        c.flash_attention = v.as<bool>();
      } else if (key == "backend") {
        c.backend = v.as<std::string>();
      } else if (key == "calibrated") {
        c.calibrated = v.as<std::string>();
      } else if (key == "cores_per_node") {
        c.cores_per_node = v.as<double>();
      } else if (key == "threads_per_rank") {
        c.threads_per_rank = v.as<int64_t>();
      } else if (key == "optimizer_gb_per_s" || key == "reserved_mpi_gb" ||
                 key == "reserved_mpi_per_byte" || key == "reserved_mpi_p2p_per_byte") {
        const double x = v.as<double>();
        if (!(x >= 0) || !std::isfinite(x)) {
          return absl::InvalidArgumentError(
              absl::StrCat(source, ": ", key, "=", x, " must be a finite number >= 0"));
        }
        if (key == "optimizer_gb_per_s") c.optimizer_bandwidth = x * 1e9;
        if (key == "reserved_mpi_gb") c.reserved_mpi_bytes = x * 1e9;
        if (key == "reserved_mpi_per_byte") c.reserved_mpi_per_byte = x;
        if (key == "reserved_mpi_p2p_per_byte") c.reserved_mpi_p2p_per_byte = x;
      } else {
        const ClusterKey* k = nullptr;
        for (const ClusterKey& ck : kClusterKeys) {
          if (key == ck.key) k = &ck;
        }
        if (k == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(source, ": unknown key '", key, "'"));
        }
        const double x = v.as<double>();
        if (!(x >= 0) || !std::isfinite(x)) {
          return absl::InvalidArgumentError(
              absl::StrCat(source, ": ", key, "=", x, " must be a finite number >= 0"));
        }
        c.*(k->field) = x * k->scale;
      }
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": key '", key, "' has the wrong type: ", e.what()));
    }
    seen[key] = true;
  }
  for (const ClusterKey& ck : kClusterKeys) {
    if (!seen.count(ck.key)) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": missing key '", ck.key, "'"));
    }
  }
  if (c.backend != "gpu" && c.backend != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": backend='", c.backend, "' must be gpu or cpu"));
  }
  if (c.backend == "cpu") {
    const std::pair<const char*, double> cpu_keys[] = {
        {"cores_per_node", c.cores_per_node},
        {"threads_per_rank", static_cast<double>(c.threads_per_rank)},
        {"optimizer_gb_per_s", c.optimizer_bandwidth}};
    for (const auto& [key, x] : cpu_keys) {
      if (!(x > 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": backend cpu needs ", key, " > 0 (lattice bench --calibrate "
                         "writes it)"));
      }
    }
  }
  if (c.gpus_per_node < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": gpus_per_node=", c.gpus_per_node, " must be >= 1"));
  }
  const std::pair<const char*, double> positive[] = {
      {"peak_tflops", c.peak_flops},       {"hbm_gb", c.hbm_bytes},
      {"hbm_tb_per_s", c.hbm_bandwidth},   {"nvlink_gb_per_s", c.nvlink_bandwidth},
      {"network_gb_per_s", c.network_bandwidth}, {"gemm_efficiency", c.gemm_efficiency},
      {"attention_efficiency", c.attention_efficiency},
      {"memory_efficiency", c.memory_efficiency}};
  for (const auto& [key, x] : positive) {
    if (!(x > 0)) return absl::InvalidArgumentError(absl::StrCat(source, ": ", key, " must be > 0"));
  }
  const std::pair<const char*, double> fractions[] = {
      {"gemm_efficiency", c.gemm_efficiency}, {"attention_efficiency", c.attention_efficiency},
      {"memory_efficiency", c.memory_efficiency}, {"tp_overlap", c.tp_overlap},
      {"dp_overlap", c.dp_overlap}, {"pp_overlap", c.pp_overlap}};
  for (const auto& [key, x] : fractions) {
    // A CPU's element-wise passes partly hit its caches, so they may beat the copy bandwidth
    // measured over buffers far larger than the caches.
    if (c.backend == "cpu" && std::string(key) == "memory_efficiency") continue;
    if (x > 1) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": ", key, "=", x, " must be <= 1"));
    }
  }
  return c;
}

absl::StatusOr<ClusterSpec> LoadClusterSpec(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cluster file '", path, "' cannot be read"));
  std::ostringstream s;
  s << in.rdbuf();
  return ParseClusterSpec(s.str(), path);
}

double ModelFlopsPerToken(const ModelConfig& m) {
  const double l = static_cast<double>(m.n_layer);
  const double c = static_cast<double>(m.d_model);
  const double n_matmul = LayerMatmulParams(m) * l + static_cast<double>(m.padded_vocab()) * c;
  return 6 * n_matmul + 6 * l * c * static_cast<double>(m.seq_len);
}

double MegatronFlopsPerToken(const ModelConfig& m) {
  const double l = static_cast<double>(m.n_layer);
  const double c = static_cast<double>(m.d_model);
  const double s = static_cast<double>(m.seq_len);
  const double groups = static_cast<double>(m.kv_heads()) / static_cast<double>(m.n_head);
  const double gated = m.arch == Arch::kLlama ? 1.5 : 1.0;
  const double ff = static_cast<double>(m.ff_dim()) / c;
  return 12 * l * c * c *
         ((1 + groups + s / c) + ff * gated + static_cast<double>(m.padded_vocab()) / (2 * l * c));
}

absl::StatusOr<PlanEntry> PredictLayout(const ModelConfig& model, const ClusterSpec& cl,
                                        const PlanLayout& lay, int64_t global_batch) {
  Config cfg;
  cfg.model = model;
  cfg.parallel.tp = lay.tp;
  cfg.parallel.pp = lay.pp;
  cfg.parallel.vpp = lay.vpp;
  cfg.parallel.dp = lay.dp;
  cfg.parallel.zero1 = lay.zero1;
  cfg.parallel.sequence_parallel = lay.tp > 1 && lay.sequence_parallel;
  cfg.parallel.schedule = lay.schedule;
  // The CPU model's memory is the engine's own plan, which counts the recompute mode.
  cfg.train.recompute = lay.recompute;
  cfg.train.micro_batch_size = lay.micro_batch;
  cfg.train.global_batch_size = global_batch;
  const int64_t world = lay.dp * lay.tp * lay.pp;
  // lattice's own layout rules (divisibility of heads, layers, vocabulary, batch).
  LATTICE_RETURN_IF_ERROR(cfg.ValidateLayout(world));
  const ModelConfig& m = cfg.model;
  const int64_t micro_batches = global_batch / (lay.micro_batch * lay.dp);
  LATTICE_ASSIGN_OR_RETURN(Peaks peaks, PipelinePeaks(lay.schedule, lay.pp, lay.vpp, micro_batches));
  if (cl.backend == "cpu") return PredictCpu(cfg, cl, lay, micro_batches, peaks);

  const double t = static_cast<double>(lay.tp);
  const bool sp = cfg.parallel.sequence_parallel;
  const double sp_div = sp ? t : 1;
  const double s = static_cast<double>(m.seq_len);
  const double b = static_cast<double>(lay.micro_batch);
  const double c = static_cast<double>(m.d_model);
  const double a = static_cast<double>(m.n_head);
  const double vp = static_cast<double>(m.padded_vocab());
  const double sbh = s * b * c;
  const double kv_ratio = static_cast<double>(m.kv_heads()) / a;
  const double mlp_units = (m.arch == Arch::kLlama ? 3.0 : 2.0) * static_cast<double>(m.ff_dim()) / c;

  // ---- Activations of one layer, one micro-batch (bytes). ----
  // Norm inputs and the two GEMM inputs after them: sequence-parallel shards (4 sbh); Q, K, V,
  // the attention output and the MLP's intermediates: tensor-parallel shards.
  const double act_tensors = kBf16 * (4 * sbh / sp_div + sbh * (2 + 2 * kv_ratio + mlp_units) / t);
  // Attention: fused kernels keep the fp32 log-sum-exp per head and row; unfused ones the
  // scores and their softmax (2 a s^2 b bf16 values).
  const double act_attention =
      cl.flash_attention ? 4 * a * s * b / t : kBf16 * 2 * a * s * s * b / t;
  double act_layer = act_tensors + act_attention;
  if (lay.recompute == Recompute::kSelective) act_layer = act_tensors + 4 * a * s * b / t;
  const double layer_input = kBf16 * sbh / sp_div;
  if (lay.recompute == Recompute::kFull) act_layer = layer_input;

  const int64_t layers_per_chunk = m.n_layer / (lay.pp * lay.vpp);
  const int64_t layers_per_stage = m.n_layer / lay.pp;

  // ---- Memory of the first and the last stage; the larger is the prediction. ----
  PlanEntry e;
  e.layout = lay;
  e.layout.sequence_parallel = sp;
  e.micro_batches = micro_batches;
  const double dp = static_cast<double>(lay.dp);
  double critical_params = 0;
  for (int64_t stage : {int64_t{0}, lay.pp - 1}) {
    LATTICE_ASSIGN_OR_RETURN(double n, StageParameters(cfg, world, stage));
    critical_params = std::max(critical_params, n);
    MemoryPrediction mem;
    mem.stage = stage;
    mem.params = kBf16 * n;
    mem.grads = kGradBytes * n;
    mem.optimizer = kOptimizerBytes * n / (lay.zero1 ? dp : 1.0);
    mem.in_flight = peaks.in_flight[static_cast<size_t>(stage)];
    mem.activations = static_cast<double>(mem.in_flight * layers_per_chunk) * act_layer;
    // Full recompute rebuilds one layer's activations at a time during the backward.
    if (lay.recompute == Recompute::kFull) mem.activations += act_tensors + act_attention;
    if (stage == lay.pp - 1) {
      // bf16 logits and the loss's fp32 softmax (its gradient in place), for every micro-batch
      // whose backward has not run; 1F1B runs the last stage's backward right away.
      const double in_flight_last = lay.schedule == PipelineSchedule::kGpipe
                                        ? static_cast<double>(micro_batches)
                                        : 1.0;
      mem.classifier = (kBf16 + 4) * s * b * vp / t * in_flight_last;
    }
    mem.reserved = cl.reserved_bytes;
    if (mem.total() > e.memory.total()) e.memory = mem;
  }
  e.fits = e.memory.total() <= cl.hbm_bytes;

  // ---- Time of one micro-batch's forward + backward on the slowest stage. ----
  const double gemm_rate = cl.peak_flops * cl.gemm_efficiency;
  const double attn_rate = cl.peak_flops * cl.attention_efficiency;
  const double mem_rate = cl.hbm_bandwidth * cl.memory_efficiency;
  const double gemm_fwd = 2 * s * b * LayerMatmulParams(m) / t / gemm_rate;
  const double attn_fwd = 2 * s * s * b * c / t / attn_rate;  // causal: half of 4 s^2 b c
  const double elem_fwd = kForwardTrafficPasses * act_tensors / mem_rate;
  const double elem_bwd = kBackwardTrafficPasses * act_tensors / mem_rate;
  const double k0 = cl.kernel_overhead;
  double layer_time =
      3 * gemm_fwd + 3 * attn_fwd + elem_fwd + elem_bwd + (kForwardKernels + kBackwardKernels) * k0;
  if (lay.recompute == Recompute::kSelective) layer_time += attn_fwd + k0;
  if (lay.recompute == Recompute::kFull) {
    layer_time += gemm_fwd + attn_fwd + elem_fwd + kForwardKernels * k0;
  }

  // Tensor-parallel collectives of one layer: with sequence parallelism 2 all-gathers and 2
  // reduce-scatters forward, their 4 duals backward plus 2 all-gathers that rebuild the GEMM
  // inputs for the weight gradients; without it 2 all-reduces each way. A full recompute
  // repeats the forward's.
  double tp_layer = 0;
  if (lay.tp > 1) {
    const bool intra = lay.tp <= cl.gpus_per_node;
    const double bw = intra ? cl.nvlink_bandwidth : cl.network_bandwidth;
    const double lat = intra ? cl.nvlink_latency : cl.network_latency;
    const double full = kBf16 * sbh;
    const double fwd = sp ? 4 * RingTime(lay.tp, full, bw, lat) : 2 * AllReduceTime(lay.tp, full, bw, lat);
    const double bwd = sp ? 6 * RingTime(lay.tp, full, bw, lat) : 2 * AllReduceTime(lay.tp, full, bw, lat);
    tp_layer = fwd + bwd + (lay.recompute == Recompute::kFull ? fwd : 0);
  }
  // The classifier (last stage): its GEMM forward and backward, and the loss over the logits.
  const double classifier = 3 * 2 * s * b * c * vp / t / gemm_rate +
                            kForwardTrafficPasses * (kBf16 + 4) * s * b * vp / t / mem_rate;
  // The last stage (its layers and the classifier) is the slowest: the others have the same
  // layers and at most the embedding lookup, which is negligible.
  const double stage_compute_mb = static_cast<double>(layers_per_stage) * layer_time + classifier;
  const double stage_tp_mb = static_cast<double>(layers_per_stage) * tp_layer;
  const double mbs_d = static_cast<double>(micro_batches);
  e.time.compute = mbs_d * stage_compute_mb;
  e.time.bubble = (peaks.ticks_per_chunk_pass - mbs_d) * (stage_compute_mb + stage_tp_mb);
  e.time.tp_comm = (1 - cl.tp_overlap) * mbs_d * stage_tp_mb;

  // Pipeline sends: each micro-batch crosses each chunk boundary forward and backward. Megatron's
  // rank order (tp fastest, then dp, then pp) puts pipeline neighbours tp*dp ranks apart.
  if (lay.pp > 1) {
    const bool intra = lay.tp * lay.dp < cl.gpus_per_node;
    const double bw = intra ? cl.nvlink_bandwidth : cl.network_bandwidth;
    const double lat = intra ? cl.nvlink_latency : cl.network_latency;
    const double msg = kBf16 * sbh / sp_div;
    e.time.pp_comm = (1 - cl.pp_overlap) * mbs_d * 2 * static_cast<double>(lay.vpp) *
                     (lat + msg / bw);
  }

  // Data parallel: the fp32 gradients reduce-scattered (ZeRO-1) or all-reduced, and with ZeRO-1
  // the bf16 parameters all-gathered, over dp ranks tp apart. Each node's GPUs of the group use
  // their own NICs (one ring per NIC), so the group's bandwidth is theirs together.
  if (lay.dp > 1) {
    const bool intra = lay.dp * lay.tp <= cl.gpus_per_node;
    const double per_node = std::max<double>(1, std::floor(static_cast<double>(cl.gpus_per_node) / t));
    const double bw = intra ? cl.nvlink_bandwidth
                            : std::min(cl.nvlink_bandwidth, std::min(per_node, dp) * cl.network_bandwidth);
    const double lat = intra ? cl.nvlink_latency : cl.network_latency;
    const double grads = kGradBytes * critical_params;
    const double comm = lay.zero1 ? RingTime(lay.dp, grads, bw, lat) +
                                        RingTime(lay.dp, kBf16 * critical_params, bw, lat)
                                  : AllReduceTime(lay.dp, grads, bw, lat);
    // Overlapped with the backward (gradients) and the next forward (parameters), never by more
    // than the compute there is.
    e.time.dp_comm = std::max(comm * (1 - cl.dp_overlap), comm - e.time.compute);
  }
  e.time.optimizer =
      kAdamTrafficBytes * critical_params / (lay.zero1 ? dp : 1.0) / mem_rate;

  const double step = e.time.step();
  const double gpus = static_cast<double>(world);
  e.tokens_per_s = static_cast<double>(global_batch) * s / step;
  e.tflops_per_gpu = e.tokens_per_s * ModelFlopsPerToken(m) / gpus / 1e12;
  e.mfu = e.tflops_per_gpu * 1e12 / cl.peak_flops;
  e.megatron_tflops_per_gpu = e.tokens_per_s * MegatronFlopsPerToken(m) / gpus / 1e12;
  return e;
}

absl::StatusOr<std::vector<PlanEntry>> EnumeratePlans(const PlanRequest& r, const ClusterSpec& cl) {
  if (r.gpus < 1 || r.global_batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("lattice plan: gpus=", r.gpus,
                                                   " and global batch=", r.global_batch,
                                                   " must both be >= 1"));
  }
  std::vector<PlanEntry> out;
  std::string last_error;
  int64_t tried = 0;
  for (int64_t tp : Divisors(r.gpus)) {
    if (r.tp ? tp != *r.tp : tp > cl.gpus_per_node) continue;  // tp beyond a node: only if asked
    for (int64_t pp : Divisors(r.gpus / tp)) {
      if ((r.pp && pp != *r.pp) || r.model.n_layer % pp != 0) continue;
      const int64_t dp = r.gpus / (tp * pp);
      if ((r.dp && dp != *r.dp) || r.global_batch % dp != 0) continue;
      for (int64_t mbs : Divisors(r.global_batch / dp)) {
        if (r.micro_batch ? mbs != *r.micro_batch : mbs > 16) continue;  // Megatron's usual range
        const int64_t m = r.global_batch / (dp * mbs);
        std::vector<std::pair<int64_t, PipelineSchedule>> schedules;
        if (pp == 1) {
          schedules.push_back({1, PipelineSchedule::kOneFOneB});
        } else {
          schedules.push_back({1, PipelineSchedule::kOneFOneB});
          schedules.push_back({1, PipelineSchedule::kGpipe});
          for (int64_t v = 2; v <= r.model.n_layer / pp; ++v) {
            if ((r.model.n_layer / pp) % v == 0 && m % pp == 0) {
              schedules.push_back({v, PipelineSchedule::kInterleaved});
            }
          }
        }
        for (const auto& [vpp, sched] : schedules) {
          if (r.vpp && vpp != *r.vpp) continue;
          for (bool zero1 : {true, false}) {
            if ((r.zero1 && zero1 != *r.zero1) || (zero1 && dp == 1 && !r.zero1)) continue;
            for (Recompute rc : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
              if (r.recompute && rc != *r.recompute) continue;
              PlanLayout lay;
              lay.dp = dp;
              lay.tp = tp;
              lay.pp = pp;
              lay.vpp = vpp;
              lay.micro_batch = mbs;
              lay.zero1 = zero1;
              lay.sequence_parallel = tp > 1;
              lay.recompute = rc;
              lay.schedule = sched;
              ++tried;
              absl::StatusOr<PlanEntry> e = PredictLayout(r.model, cl, lay, r.global_batch);
              if (e.ok()) {
                out.push_back(*std::move(e));
              } else {
                last_error = std::string(e.status().message());
              }
            }
          }
        }
      }
    }
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lattice plan: no valid layout of ", r.gpus, " GPUs for global batch ", r.global_batch,
        " (", tried, " tried", last_error.empty() ? "" : "; last reason: ", last_error, ")"));
  }
  std::stable_sort(out.begin(), out.end(), [](const PlanEntry& x, const PlanEntry& y) {
    return std::make_tuple(!x.fits, x.time.step()) < std::make_tuple(!y.fits, y.time.step());
  });
  return out;
}

std::string ExplainWinner(const std::vector<PlanEntry>& ranked, const ClusterSpec& cl) {
  if (ranked.empty()) return "no layout";
  const PlanEntry& w = ranked[0];
  const TimePrediction& t = w.time;
  const double step = t.step();
  std::vector<std::pair<double, std::string>> parts = {
      {t.compute, "compute"},       {t.bubble, "pipeline bubble"},
      {t.tp_comm, "exposed tensor-parallel communication"},
      {t.pp_comm, "exposed pipeline sends"},
      {t.dp_comm, "exposed data-parallel communication"},
      {t.optimizer, "the optimizer update"}};
  std::sort(parts.begin(), parts.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
  std::string out = absl::StrFormat(
      "winner: %s: %.3f s per step, %.0f tokens/s, MFU %.1f%%; %s %.1f GiB of %.1f GiB per GPU "
      "(stage %d: parameters %.1f, gradients %.1f, optimizer %.1f, activations %.1f for %d "
      "chunk set(s) in flight, classifier %.1f, reserved %.1f). Time: %s %.0f%%",
      w.layout.ToString(), step, w.tokens_per_s, 100 * w.mfu, w.fits ? "fits:" : "does NOT fit:",
      w.memory.total() / kGiB, cl.hbm_bytes / kGiB, w.memory.stage, w.memory.params / kGiB,
      w.memory.grads / kGiB, w.memory.optimizer / kGiB, w.memory.activations / kGiB,
      w.memory.in_flight, w.memory.classifier / kGiB, w.memory.reserved / kGiB, parts[0].second,
      100 * parts[0].first / step);
  for (size_t i = 1; i < parts.size() && parts[i].first > 0.01 * step; ++i) {
    absl::StrAppendFormat(&out, ", %s %.0f%%", parts[i].second, 100 * parts[i].first / step);
  }
  out += ".";
  if (ranked.size() > 1) {
    const PlanEntry& r = ranked[1];
    const TimePrediction& u = r.time;
    absl::StrAppendFormat(&out, " Runner-up %s is %.1f%% slower", r.layout.ToString(),
                          100 * (u.step() / step - 1));
    // The component that differs most says why.
    const std::pair<double, const char*> diffs[] = {
        {u.compute - t.compute, "more compute (recompute, or more kernels for the same work)"},
        {u.bubble - t.bubble, "a larger pipeline bubble"},
        {u.tp_comm - t.tp_comm, "more exposed tensor-parallel communication"},
        {u.pp_comm - t.pp_comm, "more pipeline sends"},
        {u.dp_comm - t.dp_comm, "more exposed data-parallel communication"},
        {u.optimizer - t.optimizer, "a larger optimizer update (no ZeRO-1)"}};
    const auto* most = &diffs[0];
    for (const auto& d : diffs) {
      if (d.first > most->first) most = &d;
    }
    if (!r.fits) {
      out += " and does not fit";
    } else if (most->first > 0) {
      absl::StrAppendFormat(&out, ", mostly from %s (+%.3f s)", most->second, most->first);
    }
    out += ".";
  }
  return out;
}

}  // namespace lattice
