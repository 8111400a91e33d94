#include "launcher/memory_plan.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/decoder.h"
#include "parallel/data_parallel.h"
#include "parallel/engine.h"
#include "parallel/planner.h"
#include "parallel/process_grid.h"
#include "runtime/system.h"

namespace lattice {

namespace {

std::string Line(const char* key, int64_t bytes, const std::string& note = "") {
  return absl::StrFormat("  %-28s %16d  (%s)%s\n", key, bytes, FormatGiB(bytes),
                         note.empty() ? "" : absl::StrCat("  ", note));
}

}  // namespace

absl::StatusOr<std::string> FormatMemoryPlan(const Config& cfg) {
  const ParallelConfig& p = cfg.parallel;
  const int64_t dp = p.dp > 0 ? p.dp : 1;
  const int world = static_cast<int>(p.tp * p.pp * dp);
  Config c = cfg;
  c.parallel.dp = dp;
  LATTICE_RETURN_IF_ERROR(c.ValidateLayout(world));
  const int64_t per_step = c.train.micro_batch_size * dp;
  const int64_t global = c.train.global_batch_size > 0 ? c.train.global_batch_size : per_step;
  const int micro_batches = static_cast<int>(global / per_step);
  LATTICE_ASSIGN_OR_RETURN(
      ProcessGrid g0, ProcessGrid::Create(world, 0, static_cast<int>(p.tp),
                                          static_cast<int>(p.pp), static_cast<int>(dp)));
  std::string out = absl::StrCat(
      "lattice train: memory plan per rank (nothing allocated; docs/memory.md): ",
      c.model.arch == Arch::kGpt2 ? "gpt2" : "llama", ", ", Decoder::CountParameters(c.model),
      " parameters, tp=", p.tp, " pp=", p.pp, " dp=", dp, " vpp=", p.vpp,
      " sp=", p.sequence_parallel && p.tp > 1 ? "on" : "off", " zero1=", p.zero1 ? "on" : "off",
      ", micro batch ", c.train.micro_batch_size, " x seq_len ", c.model.seq_len, ", ",
      micro_batches, " micro-batches per step, recompute=", RecomputeName(c.train.recompute),
      ", classifier chunk ", c.train.classifier_chunk, " tokens\n");
  for (int stage = 0; stage < g0.pp_size(); ++stage) {
    const int rank = g0.RankOf(0, 0, stage);
    LATTICE_ASSIGN_OR_RETURN(ProcessGrid g,
                             ProcessGrid::Create(world, rank, static_cast<int>(p.tp),
                                                 static_cast<int>(p.pp), static_cast<int>(dp)));
    const ModelShard shard = ParallelEngine::ShardFor(c, g);
    LATTICE_ASSIGN_OR_RETURN(DecoderMemory d,
                             Decoder::PlanMemory(c.model, c.train.micro_batch_size, shard,
                                                 DecoderOptions::From(c.train)));
    LATTICE_ASSIGN_OR_RETURN(EngineMemory e, ParallelEngine::PlanMemory(
                                                 c, g, shard, micro_batches, kDefaultBucketBytes));
    absl::StrAppend(&out, "pipeline stage ", stage, " (rank ", rank, "):\n");
    absl::StrAppend(&out, Line("parameters", e.params), Line("gradients", e.grads),
                    Line("optimizer_state", e.optimizer_state),
                    Line("comm_buffers", e.comm_buffers));
    absl::StrAppend(&out, Line("scratch", e.scratch),
                    Line("scratch.recompute_set", d.recompute_scratch),
                    Line("scratch.classifier_chunk", d.classifier_scratch));
    absl::StrAppend(
        &out, Line("activations_per_micro_batch", e.activations_per_micro_batch),
        Line("activations.layers", d.layers * d.layer_bytes,
             absl::StrCat(d.layers, " layers x ", d.layer_bytes, " B")),
        Line("activations.chunk_io", d.chunks * d.chunk_io_bytes,
             absl::StrCat(d.chunks, " chunk(s) x ", d.chunk_io_bytes, " B")),
        Line("activations.head", d.head_bytes));
    absl::StrAppend(&out, Line("activations_peak", e.activations_peak,
                               "the schedule's micro-batches in flight"),
                    Line("total", e.total()));
  }
  return out;
}

}  // namespace lattice
