// The layout planner behind `lattice plan`: for a model, a cluster and a global batch, every
// valid (dp, tp, pp, vpp, micro-batch, ZeRO-1, recompute) layout with its predicted memory per
// GPU and step time, ranked (docs/planner.md has the model, its assumptions and the check
// against Megatron-LM's published H100 table).
//
// Memory per GPU, on the most loaded pipeline stage (the first or the last), as a bf16
// mixed-precision GPU implementation holds it (Megatron-LM's distributed-optimizer layout):
//   parameters   2 bytes (bf16) per parameter this rank holds; the count is lattice's own
//                (Decoder::PlanMemory of the rank's ModelShard, ParallelEngine::ShardFor)
//   gradients    4 bytes (fp32 accumulation)
//   optimizer    12 bytes (fp32 master copy, Adam m and v), divided by dp with ZeRO-1
//   activations  per layer and micro-batch, the tensors backward needs (Korthikanti et al.
//                2022's accounting, generalised to GQA, SwiGLU and no dropout), times the
//                micro-batch sets the schedule keeps in flight on that stage (lattice's own
//                pipeline simulator, parallel/pipeline_schedule.h); recompute `selective` drops
//                the attention scores, `full` keeps only each layer's input plus one layer
//   classifier   the last stage's logits (bf16), their fp32 softmax and its gradient
//   reserved     the cluster's per-GPU overhead (CUDA context, workspaces, NCCL buffers)
// Step time: GEMM and attention FLOPs at the device's peak times an efficiency, element-wise
// traffic at HBM bandwidth times an efficiency, tensor-parallel collectives and pipeline sends
// from an alpha-beta model (ring: (n-1) alpha + (n-1)/n bytes / bandwidth per all-gather or
// reduce-scatter; an all-reduce is the cheaper of a ring, twice that, and a tree,
// 2 log2(n) alpha + bytes / bandwidth), over NVLink inside a node and the network between
// nodes, the data-parallel gradient reduce-scatter and parameter all-gather partly hidden
// behind compute, each schedule's pipeline bubble (from the simulator's ticks), and the
// optimizer's memory-bound update. MFU follows ../shared/REFERENCE.md section 4: model FLOPs
// per token 6 * N_matmul + 6 * L * C * T over the device's dense bf16 peak.
#ifndef LATTICE_PARALLEL_PLANNER_H_
#define LATTICE_PARALLEL_PLANNER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/config.h"

namespace lattice {

// One node type and its network (configs/clusters/*.yaml; every number there has its source).
struct ClusterSpec {
  std::string name;
  std::string device;
  int64_t gpus_per_node = 8;
  double peak_flops = 0;            // dense bf16 FLOP/s of one GPU
  double hbm_bytes = 0;             // memory of one GPU
  double hbm_bandwidth = 0;         // bytes/s
  double nvlink_bandwidth = 0;      // effective bus bandwidth per GPU inside a node, bytes/s
  double nvlink_latency = 0;        // seconds per ring step inside a node
  double network_bandwidth = 0;     // per GPU (one NIC each) between nodes, bytes/s
  double network_latency = 0;       // seconds per ring step between nodes
  double reserved_bytes = 0;        // per GPU, not available to the model
  // Efficiencies (fractions of the peaks above) and overlaps (fractions of a transfer hidden
  // behind compute); one set for the whole cluster.
  double gemm_efficiency = 0;
  double attention_efficiency = 0;
  double memory_efficiency = 0;
  // Fixed cost of one kernel (launch and ramp-up: Hockney's n_1/2 term), seconds. What makes
  // small models' many small kernels slower than their FLOPs say.
  double kernel_overhead = 0;
  double tp_overlap = 0;
  double dp_overlap = 0;
  double pp_overlap = 0;
  bool flash_attention = true;      // attention scores never stored (fused attention kernels)

  // "gpu": the bf16 mixed-precision model above. "cpu": lattice's own fp32 CPU engine, with
  // rates measured on the machine by `lattice bench --calibrate` (PredictLayout's CPU model
  // below; docs/planner.md "The CPU backend"). For "cpu" descriptions peak_tflops is the
  // measured sgemm 1024^3 rate of one rank's threads, hbm_* the node's memory and copy
  // bandwidth, nvlink_* the MPI shared-memory transport's beta and alpha.
  std::string backend = "gpu";
  // cpu: the cores the ranks of a node effectively share (measured: fewer than the machine's
  // when other processes load it).
  double cores_per_node = 0;
  int64_t threads_per_rank = 0;     // cpu: the threads per rank the rates were measured at
  double optimizer_bandwidth = 0;   // cpu: bytes/s of the gradient norm and AdamW passes
  // cpu, world > 1: what MPI adds to a rank, fixed plus per byte of the layout's largest
  // collective message (its algorithms' temporary buffers grow with the message).
  double reserved_mpi_bytes = 0;
  double reserved_mpi_per_byte = 0;
  double reserved_mpi_p2p_per_byte = 0;  // per byte of the pipeline's sends in flight
  std::string calibrated;           // when, where and how the numbers were measured
};

// Parses a cluster description; errors name the file and the key.
absl::StatusOr<ClusterSpec> ParseClusterSpec(absl::string_view yaml, absl::string_view source);
absl::StatusOr<ClusterSpec> LoadClusterSpec(const std::string& path);

// Recompute (none | selective | full) is runtime/config.h's, the train.recompute key's.
absl::string_view RecomputeName(Recompute r);

struct PlanLayout {
  int64_t dp = 1, tp = 1, pp = 1, vpp = 1;
  int64_t micro_batch = 1;
  bool zero1 = true;
  bool sequence_parallel = true;  // with tp > 1
  Recompute recompute = Recompute::kNone;
  PipelineSchedule schedule = PipelineSchedule::kOneFOneB;
  std::string ToString() const;
};

struct MemoryPrediction {  // bytes per GPU, on the most loaded stage
  double params = 0, grads = 0, optimizer = 0, activations = 0, classifier = 0, reserved = 0;
  double comm_buffers = 0;        // cpu: ZeRO-1 staging and the pipeline's send/receive buffers
  int64_t in_flight = 0;          // micro-batch chunk sets alive at once on that stage
  int64_t stage = 0;              // which stage
  double total() const {
    return params + grads + optimizer + activations + classifier + reserved + comm_buffers;
  }
};

struct TimePrediction {  // seconds per optimizer step
  double compute = 0;        // forward + backward (+ recompute) of every micro-batch, no bubble
  double bubble = 0;         // pipeline fill and drain
  double tp_comm = 0;        // exposed tensor-parallel collectives
  double pp_comm = 0;        // exposed pipeline sends
  double dp_comm = 0;        // exposed data-parallel gradient and parameter collectives
  double optimizer = 0;      // the Adam update
  double step() const { return compute + bubble + tp_comm + pp_comm + dp_comm + optimizer; }
};

struct PlanEntry {
  PlanLayout layout;
  int64_t micro_batches = 0;   // per data-parallel rank per step
  MemoryPrediction memory;
  TimePrediction time;
  bool fits = false;           // memory.total() <= the GPU's memory
  double tokens_per_s = 0;     // whole cluster
  double tflops_per_gpu = 0;   // model FLOPs (REFERENCE.md section 4) per GPU
  double mfu = 0;              // tflops_per_gpu over the peak
  double megatron_tflops_per_gpu = 0;  // the same throughput in Megatron-LM's FLOP formula
};

struct PlanRequest {
  ModelConfig model;           // model.seq_len is the sequence length
  int64_t gpus = 0;
  int64_t global_batch = 0;    // sequences per step
  // Restrict the enumeration (unset = every valid value).
  std::optional<int64_t> tp, pp, vpp, dp, micro_batch;
  std::optional<bool> zero1;
  std::optional<Recompute> recompute;
};

// Model FLOPs per token under REFERENCE.md section 4 (6 * N_matmul + 6 * L * C * T), and under
// Megatron-LM's formula (training.py num_floating_point_operations: 72 L C^2 (1 + ...) with the
// attention's full T^2, not half), to compare with figures Megatron publishes.
double ModelFlopsPerToken(const ModelConfig& m);
double MegatronFlopsPerToken(const ModelConfig& m);

// The prediction for one layout; InvalidArgument when the layout is not valid for the model
// (Config::ValidateLayout's checks, and the schedule's).
//
// A "cpu" cluster predicts lattice's fp32 CPU engine as `lattice bench` measures it:
//   memory per rank  ParallelEngine::PlanMemory of the rank (fp32 parameters, gradients, AdamW
//                    m and v or their ZeRO-1 shard and staging, the activation arena at the
//                    schedule's peak, scratch) + the pipeline's send and receive buffers + the
//                    runtime's measured overhead (reserved_gb: GEMM library buffers, thread
//                    stacks, touched code) + MPI's (reserved_mpi_gb, world > 1); compared with
//                    VmHWM minus its value before the engine was created;
//   step time        GEMM and attention FLOPs at the measured rates (peak x efficiency, both
//                    measured at the model's shapes), element-wise passes over the fp32
//                    activations at the copy bandwidth x the measured efficiency, the optimizer
//                    passes at optimizer_gb_per_s, MPI collectives and pipeline transfers from
//                    the measured alpha-beta (shared memory), nothing overlapped, the
//                    pipeline bubble from the simulator; compute slowed by cores_per_node /
//                    (ranks x threads_per_rank) when the ranks oversubscribe the cores.
absl::StatusOr<PlanEntry> PredictLayout(const ModelConfig& model, const ClusterSpec& cluster,
                                        const PlanLayout& layout, int64_t global_batch);

// The work of one micro-batch of `micro_batch` sequences through the whole model on one rank,
// as the "cpu" model counts it: GEMM FLOPs forward and backward (the layers' and the
// classifier's), attention FLOPs (the causal half, forward and backward), and the bytes of
// the element-wise passes (forward 2 and backward 4 passes over each layer's fp32 stored
// activations, 2 over the classifier's logits and softmax). `lattice bench --calibrate` divides
// these by the measured times, so its rates and the predictions count the same work.
struct CpuWork {
  double gemm_flops = 0, attention_flops = 0, elementwise_bytes = 0;
};
CpuWork CpuMicroBatchWork(const ModelConfig& m, int64_t micro_batch);
// Bytes the optimizer passes stream per parameter on the CPU: the gradient norm's read (4, of
// the rank's part of the reduction) and AdamW's read of the gradient and read and write of the
// weight, m and v (28, of the parameters it updates). The gradient zeroing is not a profiled
// op: the calibration's element-wise remainder holds it.
inline constexpr double kCpuNormBytesPerParam = 4;
inline constexpr double kCpuAdamBytesPerParam = 28;

// Every valid layout of the request, fitting ones first, each group by predicted step time.
// InvalidArgument when none is valid.
absl::StatusOr<std::vector<PlanEntry>> EnumeratePlans(const PlanRequest& request,
                                                      const ClusterSpec& cluster);

// Why the first entry wins: what limits it and how it beats the runner-up.
std::string ExplainWinner(const std::vector<PlanEntry>& ranked, const ClusterSpec& cluster);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_PLANNER_H_
