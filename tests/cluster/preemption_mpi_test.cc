// LATTICE_MPI_NP: 1 3
//
// AgreeToStop across real ranks (launcher/preemption.h): whatever one rank saw (signals, its
// clock past the limit, a signal during its save), every rank takes the same decision from the
// same all-reduce, so they all stop at the same step boundary. The inputs are given, not sent:
// MPI's threads started before this test could block the signals, so a real one could kill it
// (real signals: preemption_test.cc and the end-to-end tests).
#include <csignal>

#include "gtest/gtest.h"
#include "launcher/preemption.h"
#include "tests/parallel/mpi_harness.h"

namespace lattice {
namespace {

using testing::World;

class PreemptionMpiTest : public ::testing::Test {};

TEST_F(PreemptionMpiTest, ASignalOnTheLastRankStopsEveryRank) {
  Communicator& w = World();
  // No rank signalled: nobody stops.
  absl::StatusOr<StopDecision> d = AgreeToStop(w, StopSignals{}, 0, 0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->stop());
  StopSignals s;
  if (w.rank() == w.size() - 1) {
    s.signal = SIGUSR1;
    s.count = 2;  // twice: still one stop
  }
  d = AgreeToStop(w, s, 0, 0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->reason, StopReason::kSignal);
  EXPECT_EQ(d->signal, SIGUSR1);
  EXPECT_EQ(d->signal_count, 2);
}

TEST_F(PreemptionMpiTest, TheLargestSignalAndAnySaveFlagWin) {
  Communicator& w = World();
  StopSignals s;
  if (w.rank() == 0) {
    s.signal = SIGUSR1;
    s.count = 1;
  }
  if (w.rank() == w.size() - 1) {
    s.signal = SIGTERM;
    s.count = 1;
    s.during_save = true;
  }
  absl::StatusOr<StopDecision> d = AgreeToStop(w, s, 0, 0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->reason, StopReason::kSignal);
  EXPECT_EQ(d->signal, SIGTERM);
  EXPECT_TRUE(d->during_save);
}

TEST_F(PreemptionMpiTest, OneRankPastTheLimitStopsEveryRank) {
  Communicator& w = World();
  // Rank clocks differ a little; the rank whose clock passed the limit decides for all.
  const double minutes = w.rank() == w.size() - 1 ? 10.0 : 9.5;
  absl::StatusOr<StopDecision> d = AgreeToStop(w, StopSignals{}, 10, minutes);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->reason, StopReason::kTimeLimit);
}

}  // namespace
}  // namespace lattice

LATTICE_MPI_TEST_MAIN(preemption_mpi_test)
