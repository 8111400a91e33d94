#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/status.h"

namespace lattice {
namespace {

using Kind = PipeAction::Kind;

// A rank's list holds 2 * micro_batches * vpp actions; beyond this a request is a config
// mistake (and the products would approach int range), not a pipeline.
constexpr int64_t kMaxActionsPerKind = int64_t{1} << 24;

// Errors listing many offenders name only the first few.
constexpr int kMaxListed = 8;

absl::Status CheckCommonSizes(int pp, int vpp, int micro_batches) {
  if (pp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline schedule: pp (pipeline stages) must be >= 1, got pp=", pp));
  }
  if (vpp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline schedule: vpp (model chunks per stage) must be >= 1, got vpp=", vpp));
  }
  if (micro_batches < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline schedule: micro_batches must be >= 1, got micro_batches=", micro_batches));
  }
  if (static_cast<int64_t>(micro_batches) * vpp > kMaxActionsPerKind ||
      static_cast<int64_t>(pp) * vpp > kMaxActionsPerKind) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline schedule: too large (pp=", pp, ", vpp=", vpp, ", micro_batches=", micro_batches,
        "); micro_batches * vpp and pp * vpp must be <= ", kMaxActionsPerKind));
  }
  return absl::OkStatus();
}

absl::Status ValidateSchedule(PipelineSchedule kind, int pp, int vpp, int stage,
                              int micro_batches) {
  LATTICE_RETURN_IF_ERROR(CheckCommonSizes(pp, vpp, micro_batches));
  if (stage < 0 || stage >= pp) {
    return absl::InvalidArgumentError(absl::StrCat("pipeline schedule: stage ", stage,
                                                   " is outside [0, ", pp, ") for pp=", pp));
  }
  const absl::string_view name = PipelineScheduleName(kind);
  switch (kind) {
    case PipelineSchedule::kGpipe:
    case PipelineSchedule::kOneFOneB:
      if (vpp != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "pipeline schedule ", name, " needs vpp == 1, got vpp=", vpp,
            " (virtual stages need schedule \"interleaved\")"));
      }
      break;
    case PipelineSchedule::kInterleaved:
      if (vpp < 2) {
        return absl::InvalidArgumentError(absl::StrCat(
            "pipeline schedule ", name, " needs vpp >= 2, got vpp=", vpp,
            " (with one chunk per stage use \"1f1b\")"));
      }
      if (micro_batches % pp != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "pipeline schedule ", name, " needs micro_batches divisible by pp (as Megatron), got "
            "micro_batches=", micro_batches, ", pp=", pp));
      }
      break;
  }
  return absl::OkStatus();
}

PipeAction Forward(int m, int chunk) { return {Kind::kForward, m, chunk}; }
PipeAction Backward(int m, int chunk) { return {Kind::kBackward, m, chunk}; }

// Megatron's get_model_chunk_id / get_microbatch_id_in_model_chunk for virtual micro-step k:
// micro-batches go through the chunks in groups of pp.
int InterleavedChunk(int k, int pp, int vpp, bool forward) {
  const int chunk = (k % (pp * vpp)) / pp;
  return forward ? chunk : vpp - 1 - chunk;
}
int InterleavedMicroBatch(int k, int pp, int vpp) { return (k / (pp * vpp)) * pp + k % pp; }

std::vector<PipeAction> BuildGPipe(int micro_batches) {
  std::vector<PipeAction> out;
  out.reserve(2 * static_cast<size_t>(micro_batches));
  for (int m = 0; m < micro_batches; ++m) out.push_back(Forward(m, 0));
  for (int m = 0; m < micro_batches; ++m) out.push_back(Backward(m, 0));
  return out;
}

std::vector<PipeAction> Build1F1B(int pp, int stage, int micro_batches) {
  const int warmup = std::min(pp - stage - 1, micro_batches);
  const int steady = micro_batches - warmup;
  std::vector<PipeAction> out;
  out.reserve(2 * static_cast<size_t>(micro_batches));
  for (int m = 0; m < warmup; ++m) out.push_back(Forward(m, 0));
  for (int i = 0; i < steady; ++i) {
    out.push_back(Forward(warmup + i, 0));
    out.push_back(Backward(i, 0));
  }
  for (int m = steady; m < micro_batches; ++m) out.push_back(Backward(m, 0));
  return out;
}

std::vector<PipeAction> BuildInterleaved(int pp, int vpp, int stage, int micro_batches) {
  const int total = micro_batches * vpp;
  const int warmup = std::min((pp - stage - 1) * 2 + (vpp - 1) * pp, total);
  const int steady = total - warmup;
  auto fwd = [&](int k) {
    return Forward(InterleavedMicroBatch(k, pp, vpp), InterleavedChunk(k, pp, vpp, true));
  };
  auto bwd = [&](int k) {
    return Backward(InterleavedMicroBatch(k, pp, vpp), InterleavedChunk(k, pp, vpp, false));
  };
  std::vector<PipeAction> out;
  out.reserve(2 * static_cast<size_t>(total));
  for (int k = 0; k < warmup; ++k) out.push_back(fwd(k));
  for (int k = 0; k < steady; ++k) {
    out.push_back(fwd(warmup + k));
    out.push_back(bwd(k));
  }
  for (int k = steady; k < total; ++k) out.push_back(bwd(k));
  return out;
}

// Checks that every (micro-batch, chunk) appears exactly once per kind on every rank, and that
// each backward follows its own forward.
absl::Status CheckActionLists(int vpp, int micro_batches,
                              const std::vector<std::vector<PipeAction>>& rank_actions) {
  const int pp = static_cast<int>(rank_actions.size());
  const size_t per_kind = static_cast<size_t>(micro_batches) * vpp;
  std::vector<std::string> problems;
  auto note = [&](std::string s) {
    if (problems.size() < kMaxListed) problems.push_back(std::move(s));
    else if (problems.size() == kMaxListed) problems.push_back("...");
  };
  for (int s = 0; s < pp; ++s) {
    // Position of each action in the list, -1 if absent; index chunk * M + m.
    std::vector<int> fwd_pos(per_kind, -1), bwd_pos(per_kind, -1);
    const std::vector<PipeAction>& list = rank_actions[s];
    for (size_t i = 0; i < list.size(); ++i) {
      const PipeAction& a = list[i];
      if (a.micro_batch < 0 || a.micro_batch >= micro_batches || a.chunk < 0 || a.chunk >= vpp) {
        note(absl::StrCat("rank ", s, " action #", i, " ", PipeActionDebugString(a),
                          " is out of range (micro_batches=", micro_batches, ", vpp=", vpp, ")"));
        continue;
      }
      std::vector<int>& pos = a.kind == Kind::kForward ? fwd_pos : bwd_pos;
      const size_t idx = static_cast<size_t>(a.chunk) * micro_batches + a.micro_batch;
      if (pos[idx] >= 0) {
        note(absl::StrCat("rank ", s, " action #", i, " ", PipeActionDebugString(a),
                          " duplicates action #", pos[idx]));
        continue;
      }
      pos[idx] = static_cast<int>(i);
    }
    for (int c = 0; c < vpp; ++c) {
      for (int m = 0; m < micro_batches; ++m) {
        const size_t idx = static_cast<size_t>(c) * micro_batches + m;
        if (fwd_pos[idx] < 0) {
          note(absl::StrCat("rank ", s, " misses ", PipeActionDebugString(Forward(m, c))));
        }
        if (bwd_pos[idx] < 0) {
          note(absl::StrCat("rank ", s, " misses ", PipeActionDebugString(Backward(m, c))));
        }
        if (fwd_pos[idx] >= 0 && bwd_pos[idx] >= 0 && bwd_pos[idx] < fwd_pos[idx]) {
          note(absl::StrCat("rank ", s, " dependency violated: action #", bwd_pos[idx], " ",
                            PipeActionDebugString(Backward(m, c)), " comes before its forward #",
                            fwd_pos[idx]));
        }
      }
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat("pipeline simulation: invalid action lists: ", absl::StrJoin(problems, "; ")));
}

}  // namespace

absl::StatusOr<PipelineSchedule> ParsePipelineSchedule(absl::string_view name) {
  for (PipelineSchedule s : {PipelineSchedule::kGpipe, PipelineSchedule::kOneFOneB,
                             PipelineSchedule::kInterleaved}) {
    if (name == PipelineScheduleName(s)) return s;
  }
  return absl::InvalidArgumentError(absl::StrCat("parallel.schedule: unknown pipeline schedule \"",
                                                 name, "\"; choices: gpipe, 1f1b, interleaved"));
}

absl::string_view PipelineScheduleName(PipelineSchedule s) {
  switch (s) {
    case PipelineSchedule::kGpipe:
      return "gpipe";
    case PipelineSchedule::kOneFOneB:
      return "1f1b";
    case PipelineSchedule::kInterleaved:
      return "interleaved";
  }
  return "unknown";
}

std::string PipeActionDebugString(const PipeAction& a) {
  return absl::StrCat(a.kind == Kind::kForward ? "F" : "B", "(m=", a.micro_batch,
                      ",c=", a.chunk, ")");
}

absl::StatusOr<std::vector<PipeAction>> BuildPipelineSchedule(PipelineSchedule kind, int pp,
                                                              int vpp, int stage,
                                                              int micro_batches) {
  LATTICE_RETURN_IF_ERROR(ValidateSchedule(kind, pp, vpp, stage, micro_batches));
  switch (kind) {
    case PipelineSchedule::kGpipe:
      return BuildGPipe(micro_batches);
    case PipelineSchedule::kOneFOneB:
      return Build1F1B(pp, stage, micro_batches);
    case PipelineSchedule::kInterleaved:
      return BuildInterleaved(pp, vpp, stage, micro_batches);
  }
  return absl::InternalError("pipeline schedule: unhandled schedule kind");
}

absl::StatusOr<PipelineSimulation> SimulatePipeline(PipelineSchedule kind, int pp, int vpp,
                                                    int micro_batches) {
  // Validate once up front so that the error names the sizes rather than rank 0.
  LATTICE_RETURN_IF_ERROR(ValidateSchedule(kind, pp, vpp, 0, micro_batches));
  std::vector<std::vector<PipeAction>> rank_actions(pp);
  for (int s = 0; s < pp; ++s) {
    LATTICE_ASSIGN_OR_RETURN(rank_actions[s],
                             BuildPipelineSchedule(kind, pp, vpp, s, micro_batches));
  }
  absl::StatusOr<PipelineSimulation> sim =
      SimulatePipelineActions(vpp, micro_batches, rank_actions);
  if (!sim.ok()) {
    return Annotate(sim.status(), absl::StrCat("schedule ", PipelineScheduleName(kind), " pp=", pp,
                                               " vpp=", vpp, " micro_batches=", micro_batches));
  }
  return sim;
}

absl::StatusOr<PipelineSimulation> SimulatePipelineActions(
    int vpp, int micro_batches, const std::vector<std::vector<PipeAction>>& rank_actions) {
  const int pp = static_cast<int>(rank_actions.size());
  LATTICE_RETURN_IF_ERROR(CheckCommonSizes(pp, vpp, micro_batches));
  LATTICE_RETURN_IF_ERROR(CheckActionLists(vpp, micro_batches, rank_actions));

  const int num_virtual = pp * vpp;
  // Tick at which the forward / backward of (virtual stage v, micro-batch m) finished, index
  // v * M + m; -1 while not run. A message sent in tick t can be received from tick t + 1.
  const size_t slots = static_cast<size_t>(num_virtual) * micro_batches;
  std::vector<int> fwd_tick(slots, -1), bwd_tick(slots, -1);
  auto slot = [micro_batches](int v, int m) { return static_cast<size_t>(v) * micro_batches + m; };

  std::vector<size_t> next(pp, 0);
  std::vector<int> in_flight(pp, 0);
  PipelineSimulation result;
  result.peak_in_flight.assign(pp, 0);
  result.action_ticks.resize(pp);
  for (int s = 0; s < pp; ++s) result.action_ticks[s].assign(rank_actions[s].size(), -1);

  // What the next action of rank s waits for; empty when it can run at tick `tick`.
  auto blocker = [&](int s, int tick) -> std::string {
    const PipeAction& a = rank_actions[s][next[s]];
    const int v = a.chunk * pp + s;
    if (a.kind == Kind::kForward) {
      if (v == 0) return "";
      const int t = fwd_tick[slot(v - 1, a.micro_batch)];
      if (t >= 0 && t < tick) return "";
      const int src = (v - 1) % pp;
      return absl::StrCat("the forward of virtual stage ", v - 1, " micro-batch ", a.micro_batch,
                          " from rank ", src, src == s ? " (itself)" : "");
    }
    if (v == num_virtual - 1) return "";
    const int t = bwd_tick[slot(v + 1, a.micro_batch)];
    if (t >= 0 && t < tick) return "";
    const int src = (v + 1) % pp;
    return absl::StrCat("the backward of virtual stage ", v + 1, " micro-batch ", a.micro_batch,
                        " from rank ", src, src == s ? " (itself)" : "");
  };

  size_t remaining = 0;
  for (const auto& list : rank_actions) remaining += list.size();
  std::vector<int> runnable;
  for (int tick = 0; remaining > 0; ++tick) {
    runnable.clear();
    for (int s = 0; s < pp; ++s) {
      if (next[s] < rank_actions[s].size() && blocker(s, tick).empty()) runnable.push_back(s);
    }
    if (runnable.empty()) {
      std::vector<std::string> stuck;
      for (int s = 0; s < pp; ++s) {
        if (next[s] >= rank_actions[s].size()) continue;
        stuck.push_back(absl::StrCat("rank ", s, " at action #", next[s], " ",
                                     PipeActionDebugString(rank_actions[s][next[s]]),
                                     " waits for ", blocker(s, tick)));
      }
      return absl::InternalError(absl::StrCat("pipeline simulation: deadlock at tick ", tick, " (",
                                              remaining, " actions left): ",
                                              absl::StrJoin(stuck, "; ")));
    }
    for (int s : runnable) {
      const PipeAction& a = rank_actions[s][next[s]];
      const size_t i = slot(a.chunk * pp + s, a.micro_batch);
      if (a.kind == Kind::kForward) {
        fwd_tick[i] = tick;
        result.peak_in_flight[s] = std::max(result.peak_in_flight[s], ++in_flight[s]);
      } else {
        bwd_tick[i] = tick;
        --in_flight[s];
      }
      result.action_ticks[s][next[s]] = tick;
      ++next[s];
      --remaining;
    }
    result.total_ticks = tick + 1;
  }
  return result;
}

std::string PipeCommOpDebugString(const PipeCommOp& op) {
  return absl::StrCat(op.send ? "send " : "recv ",
                      op.message.kind == Kind::kForward ? "F" : "B", "(v=",
                      op.message.from_virtual_stage, ",m=", op.message.micro_batch, ") ",
                      op.send ? "to" : "from", " rank ", op.peer);
}

absl::StatusOr<std::vector<std::vector<PipeStep>>> BuildPipelinePrograms(
    PipelineSchedule kind, int pp, int vpp, int micro_batches, PipeCommGrouping grouping) {
  LATTICE_RETURN_IF_ERROR(ValidateSchedule(kind, pp, vpp, 0, micro_batches));
  std::vector<std::vector<PipeAction>> actions(pp);
  for (int s = 0; s < pp; ++s) {
    LATTICE_ASSIGN_OR_RETURN(actions[s], BuildPipelineSchedule(kind, pp, vpp, s, micro_batches));
  }
  const int num_virtual = pp * vpp;
  // The message an action receives before it runs and the one it sends after (none for the
  // ends of the model and between two chunks of one rank).
  auto input_of = [&](int s, const PipeAction& a) -> std::optional<PipeCommOp> {
    const int v = a.chunk * pp + s;
    if (a.kind == Kind::kForward && v > 0 && (v - 1) % pp != s) {
      return PipeCommOp{false, (v - 1) % pp, {Kind::kForward, v - 1, a.micro_batch}};
    }
    if (a.kind == Kind::kBackward && v < num_virtual - 1 && (v + 1) % pp != s) {
      return PipeCommOp{false, (v + 1) % pp, {Kind::kBackward, v + 1, a.micro_batch}};
    }
    return std::nullopt;
  };
  auto output_of = [&](int s, const PipeAction& a) -> std::optional<PipeCommOp> {
    const int v = a.chunk * pp + s;
    if (a.kind == Kind::kForward && v < num_virtual - 1 && (v + 1) % pp != s) {
      return PipeCommOp{true, (v + 1) % pp, {Kind::kForward, v, a.micro_batch}};
    }
    if (a.kind == Kind::kBackward && v > 0 && (v - 1) % pp != s) {
      return PipeCommOp{true, (v - 1) % pp, {Kind::kBackward, v, a.micro_batch}};
    }
    return std::nullopt;
  };
  std::vector<std::vector<PipeStep>> programs(pp);
  if (grouping == PipeCommGrouping::kSequential) {
    for (int s = 0; s < pp; ++s) {
      for (const PipeAction& a : actions[s]) {
        if (auto in = input_of(s, a)) programs[s].push_back(PipeStep{false, {}, {*in}});
        programs[s].push_back(PipeStep{true, a, {}});
        if (auto out = output_of(s, a)) programs[s].push_back(PipeStep{false, {}, {*out}});
      }
    }
    return programs;
  }
  // Tick-synchronous: when each action runs without blocking sends, then one group per rank
  // and tick boundary.
  LATTICE_ASSIGN_OR_RETURN(PipelineSimulation sim,
                           SimulatePipelineActions(vpp, micro_batches, actions));
  // groups[s][t]: rank s's operations at the boundary after tick t.
  std::vector<std::vector<std::vector<PipeCommOp>>> groups(
      pp, std::vector<std::vector<PipeCommOp>>(sim.total_ticks));
  for (int s = 0; s < pp; ++s) {
    for (size_t i = 0; i < actions[s].size(); ++i) {
      const std::optional<PipeCommOp> out = output_of(s, actions[s][i]);
      if (!out) continue;
      const int t = sim.action_ticks[s][i];
      groups[s][t].push_back(*out);
      groups[out->peer][t].push_back(PipeCommOp{false, s, out->message});
    }
  }
  for (int s = 0; s < pp; ++s) {
    size_t next = 0;
    for (int t = 0; t < sim.total_ticks; ++t) {
      if (next < actions[s].size() && sim.action_ticks[s][next] == t) {
        programs[s].push_back(PipeStep{true, actions[s][next], {}});
        ++next;
      }
      if (!groups[s][t].empty()) programs[s].push_back(PipeStep{false, {}, groups[s][t]});
    }
  }
  return programs;
}

absl::StatusOr<PipelineSimulation> SimulatePipelinePrograms(
    const std::vector<std::vector<PipeStep>>& programs) {
  const int pp = static_cast<int>(programs.size());
  if (pp < 1) return absl::InvalidArgumentError("pipeline programs: no ranks");
  std::vector<size_t> pc(pp, 0);
  // done[s][i]: operation i of rank s's current group has met its counterpart.
  std::vector<std::vector<bool>> done(pp);
  std::vector<int> in_flight(pp, 0);
  PipelineSimulation result;
  result.peak_in_flight.assign(pp, 0);
  auto at_group = [&](int s) { return pc[s] < programs[s].size() && !programs[s][pc[s]].compute; };
  auto enter = [&](int s) {
    if (at_group(s)) done[s].assign(programs[s][pc[s]].group.size(), false);
  };
  for (int s = 0; s < pp; ++s) {
    for (const PipeStep& step : programs[s]) {
      for (const PipeCommOp& op : step.group) {
        if (op.peer < 0 || op.peer >= pp || op.peer == s) {
          return absl::InternalError(absl::StrCat("pipeline programs: rank ", s, " ",
                                                  PipeCommOpDebugString(op), ": bad peer"));
        }
      }
    }
    enter(s);
  }
  for (int tick = 0;; ++tick) {
    // Communication: match posted operations until nothing changes (rendezvous takes no time).
    for (bool changed = true; changed;) {
      changed = false;
      for (int s = 0; s < pp; ++s) {
        if (!at_group(s)) continue;
        const std::vector<PipeCommOp>& ops = programs[s][pc[s]].group;
        for (size_t i = 0; i < ops.size(); ++i) {
          if (done[s][i]) continue;
          const int p = ops[i].peer;
          if (!at_group(p)) continue;
          const std::vector<PipeCommOp>& theirs = programs[p][pc[p]].group;
          for (size_t j = 0; j < theirs.size(); ++j) {
            if (!done[p][j] && theirs[j].send != ops[i].send && theirs[j].peer == s &&
                theirs[j].message == ops[i].message) {
              done[s][i] = done[p][j] = true;
              changed = true;
              break;
            }
          }
        }
      }
      for (int s = 0; s < pp; ++s) {
        if (at_group(s) && std::all_of(done[s].begin(), done[s].end(), [](bool b) { return b; })) {
          ++pc[s];
          enter(s);
          changed = true;
        }
      }
    }
    bool finished = true, computed = false;
    for (int s = 0; s < pp; ++s) {
      if (pc[s] >= programs[s].size()) continue;
      finished = false;
      const PipeStep& step = programs[s][pc[s]];
      if (!step.compute) continue;
      computed = true;
      if (step.action.kind == Kind::kForward) {
        result.peak_in_flight[s] = std::max(result.peak_in_flight[s], ++in_flight[s]);
      } else {
        --in_flight[s];
      }
      ++pc[s];
      enter(s);
    }
    if (finished) return result;
    if (!computed) {
      std::vector<std::string> stuck;
      for (int s = 0; s < pp; ++s) {
        if (!at_group(s)) continue;
        std::vector<std::string> waiting;
        const std::vector<PipeCommOp>& ops = programs[s][pc[s]].group;
        for (size_t i = 0; i < ops.size() && waiting.size() < kMaxListed; ++i) {
          if (!done[s][i]) waiting.push_back(PipeCommOpDebugString(ops[i]));
        }
        stuck.push_back(absl::StrCat("rank ", s, " at step #", pc[s], " waits in ",
                                     absl::StrJoin(waiting, " + ")));
      }
      return absl::InternalError(absl::StrCat("pipeline programs: deadlock at tick ", tick,
                                              " under rendezvous sends: ",
                                              absl::StrJoin(stuck, "; ")));
    }
    result.total_ticks = tick + 1;
  }
}

}  // namespace lattice
