// Pipeline schedules: every schedule over a sweep of sizes is complete, ordered, deadlock-free in
// the send/receive simulation and within its activation bound; hand-derived lists pin down the
// exact 1F1B and interleaved orders.
#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <map>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lattice {

// Readable actions in gtest failure output.
void PrintTo(const PipeAction& a, std::ostream* os) { *os << PipeActionDebugString(a); }

namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Kind = PipeAction::Kind;

constexpr PipelineSchedule kAllSchedules[] = {PipelineSchedule::kGpipe, PipelineSchedule::kOneFOneB,
                                              PipelineSchedule::kInterleaved};

PipeAction F(int m, int c = 0) { return {Kind::kForward, m, c}; }
PipeAction B(int m, int c = 0) { return {Kind::kBackward, m, c}; }

bool IsValid(PipelineSchedule kind, int pp, int vpp, int m) {
  if (kind == PipelineSchedule::kInterleaved) return vpp >= 2 && m % pp == 0;
  return vpp == 1;
}

std::string Case(PipelineSchedule kind, int pp, int vpp, int m) {
  return absl::StrCat(PipelineScheduleName(kind), " pp=", pp, " vpp=", vpp, " M=", m);
}

int InterleavedWarmup(int pp, int vpp, int stage, int m) {
  return std::min((pp - stage - 1) * 2 + (vpp - 1) * pp, m * vpp);
}

TEST(PipelineScheduleName, RoundTrips) {
  for (PipelineSchedule s : kAllSchedules) {
    absl::StatusOr<PipelineSchedule> parsed = ParsePipelineSchedule(PipelineScheduleName(s));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_EQ(PipelineScheduleName(PipelineSchedule::kGpipe), "gpipe");
  EXPECT_EQ(PipelineScheduleName(PipelineSchedule::kOneFOneB), "1f1b");
  EXPECT_EQ(PipelineScheduleName(PipelineSchedule::kInterleaved), "interleaved");
}

TEST(PipelineScheduleName, UnknownNameNamesValueAndChoices) {
  for (const char* bad : {"1F1B", "pipedream", "", "interleaved1f1b"}) {
    absl::StatusOr<PipelineSchedule> parsed = ParsePipelineSchedule(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr(absl::StrCat("\"", bad, "\"")));
    EXPECT_THAT(parsed.status().message(), HasSubstr("gpipe, 1f1b, interleaved"));
    EXPECT_THAT(parsed.status().message(), HasSubstr("parallel.schedule"));
  }
}

void ExpectInvalid(PipelineSchedule kind, int pp, int vpp, int stage, int m,
                   const std::vector<std::string>& substrings) {
  absl::StatusOr<std::vector<PipeAction>> s = BuildPipelineSchedule(kind, pp, vpp, stage, m);
  ASSERT_FALSE(s.ok()) << Case(kind, pp, vpp, m) << " stage=" << stage;
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  for (const std::string& sub : substrings) EXPECT_THAT(s.status().message(), HasSubstr(sub));
}

TEST(BuildPipelineSchedule, RejectsBadSizesNamingTheNumbers) {
  using enum PipelineSchedule;
  ExpectInvalid(kOneFOneB, 0, 1, 0, 4, {"pp", "pp=0"});
  ExpectInvalid(kOneFOneB, -2, 1, 0, 4, {"pp=-2"});
  ExpectInvalid(kOneFOneB, 4, 1, 4, 4, {"stage 4", "[0, 4)", "pp=4"});
  ExpectInvalid(kGpipe, 4, 1, -1, 4, {"stage -1", "[0, 4)"});
  ExpectInvalid(kGpipe, 2, 1, 0, 0, {"micro_batches=0"});
  ExpectInvalid(kOneFOneB, 2, 1, 0, -3, {"micro_batches=-3"});
  ExpectInvalid(kGpipe, 2, 2, 0, 4, {"gpipe", "vpp == 1", "vpp=2", "interleaved"});
  ExpectInvalid(kOneFOneB, 2, 3, 0, 4, {"1f1b", "vpp == 1", "vpp=3"});
  ExpectInvalid(kOneFOneB, 2, 0, 0, 4, {"vpp=0"});
  ExpectInvalid(kInterleaved, 2, 1, 0, 4, {"interleaved", "vpp >= 2", "vpp=1", "1f1b"});
  ExpectInvalid(kInterleaved, 4, 2, 0, 6, {"divisible", "micro_batches=6", "pp=4"});
  ExpectInvalid(kInterleaved, 2, 2, 0, 1 << 30, {"too large", "vpp=2"});

  absl::StatusOr<PipelineSimulation> sim = SimulatePipeline(kInterleaved, 3, 2, 4);
  ASSERT_FALSE(sim.ok());
  EXPECT_EQ(sim.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(sim.status().message(), HasSubstr("micro_batches=4, pp=3"));
}

// Megatron's non-interleaved schedule, pp=2, M=3: stage 0 warms up with one forward.
TEST(BuildPipelineSchedule, OneFOneBHandWritten) {
  absl::StatusOr<std::vector<PipeAction>> s0 =
      BuildPipelineSchedule(PipelineSchedule::kOneFOneB, 2, 1, 0, 3);
  ASSERT_TRUE(s0.ok()) << s0.status();
  EXPECT_THAT(*s0, ElementsAreArray({F(0), F(1), B(0), F(2), B(1), B(2)}));

  absl::StatusOr<std::vector<PipeAction>> s1 =
      BuildPipelineSchedule(PipelineSchedule::kOneFOneB, 2, 1, 1, 3);
  ASSERT_TRUE(s1.ok()) << s1.status();
  EXPECT_THAT(*s1, ElementsAreArray({F(0), B(0), F(1), B(1), F(2), B(2)}));
}

TEST(BuildPipelineSchedule, GPipeHandWritten) {
  absl::StatusOr<std::vector<PipeAction>> s =
      BuildPipelineSchedule(PipelineSchedule::kGpipe, 3, 1, 1, 3);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(*s, ElementsAreArray({F(0), F(1), F(2), B(0), B(1), B(2)}));
}

// pp=2, vpp=2, M=4: 8 virtual micro-steps k. Forward k runs chunk (k % 4) / 2 on micro-batch
// (k / 4) * 2 + k % 2:  k=0..7 -> (m0,c0) (m1,c0) (m0,c1) (m1,c1) (m2,c0) (m3,c0) (m2,c1) (m3,c1).
// Backward k runs chunk 1 - that: (m0,c1) (m1,c1) (m0,c0) (m1,c0) (m2,c1) (m3,c1) (m2,c0) (m3,c0).
// Stage 0: warmup = (2-0-1)*2 + (2-1)*2 = 4 forwards, 4 pairs (F k+4, B k), 4 cooldown backwards.
// Stage 1: warmup = 0 + 2 = 2 forwards, 6 pairs (F k+2, B k), 2 cooldown backwards.
TEST(BuildPipelineSchedule, InterleavedHandDerived) {
  absl::StatusOr<std::vector<PipeAction>> s0 =
      BuildPipelineSchedule(PipelineSchedule::kInterleaved, 2, 2, 0, 4);
  ASSERT_TRUE(s0.ok()) << s0.status();
  EXPECT_THAT(*s0, ElementsAreArray({
                       F(0, 0), F(1, 0), F(0, 1), F(1, 1),                      // warmup
                       F(2, 0), B(0, 1), F(3, 0), B(1, 1),                      // steady
                       F(2, 1), B(0, 0), F(3, 1), B(1, 0),                      //
                       B(2, 1), B(3, 1), B(2, 0), B(3, 0),                      // cooldown
                   }));

  absl::StatusOr<std::vector<PipeAction>> s1 =
      BuildPipelineSchedule(PipelineSchedule::kInterleaved, 2, 2, 1, 4);
  ASSERT_TRUE(s1.ok()) << s1.status();
  EXPECT_THAT(*s1, ElementsAreArray({
                       F(0, 0), F(1, 0),                                        // warmup
                       F(0, 1), B(0, 1), F(1, 1), B(1, 1), F(2, 0), B(0, 0),    // steady
                       F(3, 0), B(1, 0), F(2, 1), B(2, 1), F(3, 1), B(3, 1),    //
                       B(2, 0), B(3, 0),                                        // cooldown
                   }));
}

// Every (micro-batch, chunk) once as forward and once as backward, forward first.
void ExpectComplete(const std::vector<PipeAction>& actions, int vpp, int m,
                    const std::string& where) {
  std::map<std::tuple<int, int, int>, std::vector<size_t>> seen;  // (kind, m, c) -> positions
  for (size_t i = 0; i < actions.size(); ++i) {
    const PipeAction& a = actions[i];
    seen[{static_cast<int>(a.kind), a.micro_batch, a.chunk}].push_back(i);
  }
  EXPECT_EQ(actions.size(), static_cast<size_t>(2 * m * vpp)) << where;
  for (int c = 0; c < vpp; ++c) {
    for (int mb = 0; mb < m; ++mb) {
      const auto& f = seen[{static_cast<int>(Kind::kForward), mb, c}];
      const auto& b = seen[{static_cast<int>(Kind::kBackward), mb, c}];
      ASSERT_EQ(f.size(), 1u) << where << " forward m=" << mb << " c=" << c;
      ASSERT_EQ(b.size(), 1u) << where << " backward m=" << mb << " c=" << c;
      EXPECT_LT(f[0], b[0]) << where << " m=" << mb << " c=" << c;
    }
  }
}

TEST(PipelineSchedule, SweepIsCompleteDeadlockFreeAndBounded) {
  int checked = 0;
  for (PipelineSchedule kind : kAllSchedules) {
    for (int pp = 1; pp <= 4; ++pp) {
      for (int vpp = 1; vpp <= 3; ++vpp) {
        for (int m = 1; m <= 8; ++m) {
          const std::string where = Case(kind, pp, vpp, m);
          if (!IsValid(kind, pp, vpp, m)) {
            absl::StatusOr<PipelineSimulation> sim = SimulatePipeline(kind, pp, vpp, m);
            EXPECT_EQ(sim.status().code(), absl::StatusCode::kInvalidArgument) << where;
            continue;
          }
          ++checked;
          for (int stage = 0; stage < pp; ++stage) {
            absl::StatusOr<std::vector<PipeAction>> actions =
                BuildPipelineSchedule(kind, pp, vpp, stage, m);
            ASSERT_TRUE(actions.ok()) << where << ": " << actions.status();
            ExpectComplete(*actions, vpp, m, absl::StrCat(where, " stage ", stage));
          }
          absl::StatusOr<PipelineSimulation> sim = SimulatePipeline(kind, pp, vpp, m);
          ASSERT_TRUE(sim.ok()) << where << ": " << sim.status();
          ASSERT_EQ(sim->peak_in_flight.size(), static_cast<size_t>(pp)) << where;
          for (int stage = 0; stage < pp; ++stage) {
            const int peak = sim->peak_in_flight[stage];
            const std::string at = absl::StrCat(where, " stage ", stage);
            switch (kind) {
              case PipelineSchedule::kGpipe:
                EXPECT_EQ(peak, m) << at;
                break;
              case PipelineSchedule::kOneFOneB:
                EXPECT_LE(peak, pp - stage) << at;
                EXPECT_EQ(peak, std::min(pp - stage, m)) << at;
                break;
              case PipelineSchedule::kInterleaved: {
                const int bound = std::min(InterleavedWarmup(pp, vpp, stage, m) + 1, m * vpp);
                EXPECT_LE(peak, bound) << at;
                EXPECT_EQ(peak, bound) << at;  // the bound is reached: it is tight
                break;
              }
            }
          }
          // One tick per action (a chunk's pass): 2 * M * vpp ticks of work plus a bubble of
          // 2 * (pp - 1) ticks to fill and drain the pipe, for every schedule. With vpp chunks
          // a tick is 1/vpp of a stage's pass, so interleaving divides the bubble by vpp.
          EXPECT_EQ(sim->total_ticks, 2 * (m * vpp + pp - 1)) << where;
        }
      }
    }
  }
  // gpipe, 1f1b: 4 pp x 8 M; interleaved: 2 vpp x (8 + 4 + 2 + 2) valid (pp, M) pairs.
  EXPECT_EQ(checked, 32 + 32 + 2 * (8 + 4 + 2 + 2));
}

// A message's place in a per-peer channel: what an engine that matches receives by arrival order
// (one tag per peer and direction) relies on.
TEST(PipelineSchedule, ChannelsAreFifo) {
  for (PipelineSchedule kind : kAllSchedules) {
    for (int pp = 1; pp <= 4; ++pp) {
      for (int vpp = 1; vpp <= 3; ++vpp) {
        for (int m = 1; m <= 8; ++m) {
          if (!IsValid(kind, pp, vpp, m)) continue;
          const int num_virtual = pp * vpp;
          // (src, dst, kind) -> sequence of (virtual stage of the message's producer, micro-batch)
          std::map<std::tuple<int, int, int>, std::vector<std::pair<int, int>>> sent, received;
          for (int s = 0; s < pp; ++s) {
            absl::StatusOr<std::vector<PipeAction>> actions =
                BuildPipelineSchedule(kind, pp, vpp, s, m);
            ASSERT_TRUE(actions.ok()) << actions.status();
            for (const PipeAction& a : *actions) {
              const int v = a.chunk * pp + s;
              const int k = static_cast<int>(a.kind);
              if (a.kind == Kind::kForward) {
                if (v + 1 < num_virtual) sent[{s, (v + 1) % pp, k}].push_back({v, a.micro_batch});
                if (v > 0) received[{(v - 1) % pp, s, k}].push_back({v - 1, a.micro_batch});
              } else {
                if (v > 0) sent[{s, (v - 1) % pp, k}].push_back({v, a.micro_batch});
                if (v + 1 < num_virtual) {
                  received[{(v + 1) % pp, s, k}].push_back({v + 1, a.micro_batch});
                }
              }
            }
          }
          EXPECT_EQ(sent, received) << Case(kind, pp, vpp, m);
        }
      }
    }
  }
}

TEST(SimulatePipelineActions, ReportsDeadlockNamingRanksAndActions) {
  // Rank 1 wants micro-batch 1 first while rank 0 waits for micro-batch 0's gradient.
  absl::StatusOr<PipelineSimulation> sim =
      SimulatePipelineActions(1, 2, {{F(0), B(0), F(1), B(1)}, {F(1), B(1), F(0), B(0)}});
  ASSERT_FALSE(sim.ok());
  EXPECT_EQ(sim.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(sim.status().message(), HasSubstr("deadlock"));
  EXPECT_THAT(sim.status().message(), HasSubstr("rank 0 at action #1 B(m=0,c=0)"));
  EXPECT_THAT(sim.status().message(), HasSubstr("rank 1 at action #0 F(m=1,c=0)"));
  EXPECT_THAT(sim.status().message(),
              HasSubstr("the forward of virtual stage 0 micro-batch 1 from rank 0"));
}

TEST(SimulatePipelineActions, ReportsWaitOnItself) {
  // One rank, two chunks: chunk 1's forward needs chunk 0's, which this rank has not run yet.
  absl::StatusOr<PipelineSimulation> sim =
      SimulatePipelineActions(2, 1, {{F(0, 1), F(0, 0), B(0, 1), B(0, 0)}});
  ASSERT_FALSE(sim.ok());
  EXPECT_EQ(sim.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(sim.status().message(), HasSubstr("deadlock"));
  EXPECT_THAT(sim.status().message(), HasSubstr("from rank 0 (itself)"));
}

TEST(SimulatePipelineActions, ReportsMissingDuplicatedAndMisorderedActions) {
  absl::StatusOr<PipelineSimulation> missing =
      SimulatePipelineActions(1, 2, {{F(0), F(1), B(0), B(1)}, {F(0), B(0), F(1)}});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(missing.status().message(), HasSubstr("rank 1 misses B(m=1,c=0)"));

  absl::StatusOr<PipelineSimulation> duplicated =
      SimulatePipelineActions(1, 1, {{F(0), B(0), F(0)}});
  ASSERT_FALSE(duplicated.ok());
  EXPECT_EQ(duplicated.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(duplicated.status().message(),
              HasSubstr("rank 0 action #2 F(m=0,c=0) duplicates action #0"));

  absl::StatusOr<PipelineSimulation> misordered =
      SimulatePipelineActions(1, 2, {{F(0), B(1), F(1), B(0)}});
  ASSERT_FALSE(misordered.ok());
  EXPECT_EQ(misordered.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(misordered.status().message(), HasSubstr("dependency violated"));
  EXPECT_THAT(misordered.status().message(), HasSubstr("#1 B(m=1,c=0)"));

  absl::StatusOr<PipelineSimulation> out_of_range =
      SimulatePipelineActions(1, 1, {{F(0), B(0), F(0, 1)}});
  ASSERT_FALSE(out_of_range.ok());
  EXPECT_EQ(out_of_range.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(out_of_range.status().message(), HasSubstr("F(m=0,c=1) is out of range"));

  absl::StatusOr<PipelineSimulation> no_ranks = SimulatePipelineActions(1, 1, {});
  ASSERT_FALSE(no_ranks.ok());
  EXPECT_EQ(no_ranks.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SimulatePipelineActions, CountsActivationsInFlight) {
  // Two ranks, GPipe-like on rank 0, 1F1B on rank 1.
  absl::StatusOr<PipelineSimulation> sim =
      SimulatePipelineActions(1, 3, {{F(0), F(1), F(2), B(0), B(1), B(2)},
                                     {F(0), B(0), F(1), B(1), F(2), B(2)}});
  ASSERT_TRUE(sim.ok()) << sim.status();
  EXPECT_THAT(sim->peak_in_flight, ElementsAreArray({3, 1}));
  // Rank 0 forwards at ticks 0..2, rank 1 pairs follow; rank 0's last backward at tick 7.
  EXPECT_EQ(sim->total_ticks, 8);
}

// ---- Rendezvous (NCCL) programs ----

std::vector<std::vector<PipeStep>> Programs(PipelineSchedule kind, int pp, int vpp, int m,
                                            PipeCommGrouping grouping) {
  absl::StatusOr<std::vector<std::vector<PipeStep>>> p =
      BuildPipelinePrograms(kind, pp, vpp, m, grouping);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(p).value() : std::vector<std::vector<PipeStep>>(pp);
}

// Every schedule of the sweep, as the NCCL engine issues it (tick-synchronous groups), runs to
// the end under rendezvous semantics in the ticks and with the activation peaks of the
// non-blocking model, and every message is sent once and received once.
TEST(PipelinePrograms, TickSynchronousGroupsNeverDeadlockUnderRendezvous) {
  int checked = 0;
  for (PipelineSchedule kind : kAllSchedules) {
    for (int pp = 1; pp <= 4; ++pp) {
      for (int vpp = 1; vpp <= 3; ++vpp) {
        for (int m = 1; m <= 8; ++m) {
          if (!IsValid(kind, pp, vpp, m)) continue;
          const std::string where = Case(kind, pp, vpp, m);
          const auto programs = Programs(kind, pp, vpp, m, PipeCommGrouping::kTickSynchronous);
          std::map<std::tuple<int, int, int>, int> sends, recvs;  // (kind, from v, m) -> count
          int computes = 0;
          for (const auto& program : programs) {
            for (const PipeStep& step : program) {
              computes += step.compute ? 1 : 0;
              // One send and one receive per direction and neighbour at the most.
              EXPECT_LE(step.group.size(), 4u) << where;
              for (const PipeCommOp& op : step.group) {
                auto key = std::make_tuple(static_cast<int>(op.message.kind),
                                           op.message.from_virtual_stage, op.message.micro_batch);
                ++(op.send ? sends : recvs)[key];
              }
            }
          }
          EXPECT_EQ(computes, 2 * m * vpp * pp) << where;
          EXPECT_EQ(sends, recvs) << where;
          for (const auto& [key, n] : sends) EXPECT_EQ(n, 1) << where;
          // Messages cross ranks except between chunks of one rank (pp = 1).
          const int crossing = pp == 1 ? 0 : 2 * m * (vpp * pp - 1);
          EXPECT_EQ(static_cast<int>(sends.size()), crossing) << where;
          absl::StatusOr<PipelineSimulation> sim = SimulatePipelinePrograms(programs);
          ASSERT_TRUE(sim.ok()) << where << ": " << sim.status();
          absl::StatusOr<PipelineSimulation> free_sends = SimulatePipeline(kind, pp, vpp, m);
          ASSERT_TRUE(free_sends.ok()) << where;
          EXPECT_EQ(sim->peak_in_flight, free_sends->peak_in_flight) << where;
          // Rendezvous can only add waiting; these groups add none: the ticks of free sends.
          EXPECT_EQ(sim->total_ticks, free_sends->total_ticks) << where;
          ++checked;
        }
      }
    }
  }
  EXPECT_EQ(checked, 32 + 32 + 2 * (8 + 4 + 2 + 2));
}

// The reason for the grouping: issued one operation at a time, 1F1B's steady phase deadlocks
// (stage 0 sends its next forward while stage 1 sends its backward, both waiting for a receive),
// and the error names both ranks and what they wait in. GPipe, whose phases do not mix, runs.
TEST(PipelinePrograms, SequentialOperationsDeadlockInOneFOneB) {
  absl::StatusOr<PipelineSimulation> sim = SimulatePipelinePrograms(
      Programs(PipelineSchedule::kOneFOneB, 2, 1, 2, PipeCommGrouping::kSequential));
  ASSERT_FALSE(sim.ok());
  EXPECT_EQ(sim.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(sim.status().message(), HasSubstr("deadlock"));
  EXPECT_THAT(sim.status().message(), HasSubstr("rank 0 at step"));
  EXPECT_THAT(sim.status().message(), HasSubstr("send F(v=0,m=1) to rank 1"));
  EXPECT_THAT(sim.status().message(), HasSubstr("rank 1 at step"));
  EXPECT_THAT(sim.status().message(), HasSubstr("send B(v=1,m=0) to rank 0"));
  for (int pp = 2; pp <= 4; ++pp) {
    for (int m = pp; m <= 8; ++m) {
      EXPECT_FALSE(SimulatePipelinePrograms(Programs(PipelineSchedule::kOneFOneB, pp, 1, m,
                                                     PipeCommGrouping::kSequential))
                       .ok())
          << "1f1b pp=" << pp << " M=" << m;
      EXPECT_TRUE(SimulatePipelinePrograms(
                      Programs(PipelineSchedule::kGpipe, pp, 1, m, PipeCommGrouping::kSequential))
                      .ok())
          << "gpipe pp=" << pp << " M=" << m;
    }
  }
}

// Hand-written: 1F1B with pp = 2, M = 2 on stage 0. Ticks (free sends): stage 0 runs F0 F1 at
// 0, 1; stage 1 runs F0 B0 at 1, 2 and F1 B1 at 3, 4; stage 0 runs B0 at 3 and B1 at 5.
TEST(PipelinePrograms, OneFOneBStageZeroHandWritten) {
  const auto programs = Programs(PipelineSchedule::kOneFOneB, 2, 1, 2,
                                 PipeCommGrouping::kTickSynchronous);
  std::vector<std::string> got;
  for (const PipeStep& step : programs[0]) {
    if (step.compute) {
      got.push_back(PipeActionDebugString(step.action));
    } else {
      std::vector<std::string> ops;
      for (const PipeCommOp& op : step.group) ops.push_back(PipeCommOpDebugString(op));
      got.push_back("{" + absl::StrJoin(ops, " + ") + "}");
    }
  }
  EXPECT_THAT(got, ElementsAreArray(std::vector<std::string>{
                       "F(m=0,c=0)", "{send F(v=0,m=0) to rank 1}", "F(m=1,c=0)",
                       "{send F(v=0,m=1) to rank 1}", "{recv B(v=1,m=0) from rank 1}",
                       "B(m=0,c=0)", "{recv B(v=1,m=1) from rank 1}", "B(m=1,c=0)"}));
}

// A program whose receive is never sent is reported as a deadlock naming the operation.
TEST(PipelinePrograms, UnmatchedReceiveIsADeadlock) {
  std::vector<std::vector<PipeStep>> programs(2);
  programs[0].push_back(PipeStep{false, {}, {PipeCommOp{false, 1, {Kind::kForward, 1, 0}}}});
  absl::StatusOr<PipelineSimulation> sim = SimulatePipelinePrograms(programs);
  ASSERT_FALSE(sim.ok());
  EXPECT_THAT(sim.status().message(), HasSubstr("rank 0 at step #0 waits in recv F(v=1,m=0) from rank 1"));
  programs[0][0].group[0].peer = 0;
  EXPECT_THAT(SimulatePipelinePrograms(programs).status().message(), HasSubstr("bad peer"));
}

}  // namespace
}  // namespace lattice
