// launcher/preemption.h in one process: the watcher thread records SIGUSR1/SIGTERM sent to the
// process (and whether one landed during a save) without ending it, and the calling thread
// has both blocked (no handler runs on a compute thread); AgreeToStop's decision
// from its inputs; the stopped status that main() maps to exit status 75; and the
// train.exit_after_minutes key. Across ranks: preemption_mpi_test.cc; end to end:
// preemption_mpirun_test.py and slurm_preemption_test.py.
#include "launcher/preemption.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "runtime/config.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

// Sends `sig` to the whole process, as kill(1), mpirun and slurmstepd do (raise() would target
// this thread, which blocks it), and waits until the watcher has recorded `count` signals.
bool SendAndWait(int sig, int count) {
  if (::kill(::getpid(), sig) != 0) return false;
  // The watcher records a signal within microseconds; 10 s only bounds a broken watcher.
  for (int i = 0; i < 10000; ++i) {
    if (ReceivedStopSignals().count >= count) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

class PreemptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(StartStopSignalWatcher().ok());
    ResetStopSignals();
    SetCheckpointInProgress(false);
  }
  void TearDown() override {
    ResetStopSignals();
    SetCheckpointInProgress(false);
  }
  SelfCommunicator world_;
};

TEST_F(PreemptionTest, TheWatcherRecordsSignalsAndTheProcessLives) {
  EXPECT_EQ(ReceivedStopSignals().signal, 0);
  ASSERT_TRUE(SendAndWait(SIGUSR1, 1));  // the default action would end the process
  StopSignals s = ReceivedStopSignals();
  EXPECT_EQ(s.signal, SIGUSR1);
  EXPECT_EQ(s.count, 1);
  EXPECT_FALSE(s.during_save);
  ASSERT_TRUE(SendAndWait(SIGTERM, 2));
  s = ReceivedStopSignals();
  EXPECT_EQ(s.signal, SIGTERM);
  EXPECT_EQ(s.count, 2);
  ResetStopSignals();
  EXPECT_EQ(ReceivedStopSignals().signal, 0);
  EXPECT_EQ(ReceivedStopSignals().count, 0);
}

TEST_F(PreemptionTest, ComputeThreadsHaveTheSignalsBlockedAndStartingTwiceIsHarmless) {
  ASSERT_TRUE(StartStopSignalWatcher().ok());
  // This thread, and every thread it starts from now on (OpenMP workers, the async checkpoint
  // writer), never runs a handler: the signals wait for the watcher's sigwait.
  sigset_t mask;
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, nullptr, &mask), 0);
  EXPECT_EQ(sigismember(&mask, SIGUSR1), 1);
  EXPECT_EQ(sigismember(&mask, SIGTERM), 1);
  int in_child_usr1 = -1;
  std::thread([&] {
    sigset_t m;
    ::pthread_sigmask(SIG_BLOCK, nullptr, &m);
    in_child_usr1 = sigismember(&m, SIGUSR1);
  }).join();
  EXPECT_EQ(in_child_usr1, 1);
  // Still exactly one watcher: one signal is counted once.
  ASSERT_TRUE(SendAndWait(SIGUSR1, 1));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(ReceivedStopSignals().count, 1);
}

TEST_F(PreemptionTest, ASignalDuringASaveIsMarked) {
  SetCheckpointInProgress(true);
  ASSERT_TRUE(SendAndWait(SIGUSR1, 1));
  SetCheckpointInProgress(false);
  EXPECT_TRUE(ReceivedStopSignals().during_save);
  absl::StatusOr<StopDecision> d = AgreeToStop(world_, 0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->reason, StopReason::kSignal);
  EXPECT_TRUE(d->during_save);
  EXPECT_EQ(d->Describe(), "SIGUSR1 (received during a checkpoint save)");
}

TEST_F(PreemptionTest, NoSignalNoLimitMeansGoOn) {
  absl::StatusOr<StopDecision> d = AgreeToStop(world_, StopSignals{}, 0, 1e6);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->stop());
  // A limit not reached yet.
  d = AgreeToStop(world_, StopSignals{}, 5, 4.99);
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->stop());
}

TEST_F(PreemptionTest, TimeLimitStopsAtOrPastIt) {
  absl::StatusOr<StopDecision> d = AgreeToStop(world_, StopSignals{}, 5, 5.0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->reason, StopReason::kTimeLimit);
  EXPECT_EQ(d->Describe(), "train.exit_after_minutes=5 reached (5.00 minutes since start)");
}

TEST_F(PreemptionTest, ASignalWinsOverTheTimeLimit) {
  StopSignals s;
  s.signal = SIGTERM;
  s.count = 2;
  absl::StatusOr<StopDecision> d = AgreeToStop(world_, s, 1, 2);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->reason, StopReason::kSignal);
  EXPECT_EQ(d->signal, SIGTERM);
  EXPECT_EQ(d->Describe(), "SIGTERM (2 signals)");
}

TEST_F(PreemptionTest, TheClockRunsFromProcessStart) {
  const double a = MinutesSinceProcessStart();
  EXPECT_GE(a, 0);
  EXPECT_GE(MinutesSinceProcessStart(), a);
}

TEST_F(PreemptionTest, StoppedStatusIsRecognisedAndSaysHowToResume) {
  StopDecision d;
  d.reason = StopReason::kSignal;
  d.signal = SIGUSR1;
  d.signal_count = 1;
  const absl::Status s = StoppedStatus(d, 7, 20, "ckpt/step_00000007");
  EXPECT_TRUE(IsStopped(s));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("stopped after iteration 7 of 20 on SIGUSR1"));
  EXPECT_THAT(s.message(), HasSubstr("checkpoint ckpt/step_00000007 committed"));
  EXPECT_THAT(s.message(), HasSubstr("exit status 75"));
  // Other errors, even of the same code, are failures.
  EXPECT_FALSE(IsStopped(absl::UnavailableError("stopped after iteration 7")));
  EXPECT_FALSE(IsStopped(absl::OkStatus()));
  EXPECT_EQ(kStoppedExitCode, 75);
}

TEST(PreemptionConfigTest, ExitAfterMinutesKey) {
  absl::StatusOr<Config> c = ParseConfig("train:\n  exit_after_minutes: 230.5\n", {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->train.exit_after_minutes, 230.5);
  EXPECT_EQ(Config{}.train.exit_after_minutes, 0);  // no limit unless asked
  c = ParseConfig("", {"train.exit_after_minutes=0.25"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->train.exit_after_minutes, 0.25);
  absl::StatusOr<Config> back = ParseConfig(c->ToYaml(), {});
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->train.exit_after_minutes, 0.25);
  c = ParseConfig("", {"train.exit_after_minutes=-1"});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("train.exit_after_minutes=-1 must be >= 0"));
  c = ParseConfig("", {"train.exit_after_minutes=soon"});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("train.exit_after_minutes"));
}

}  // namespace
}  // namespace lattice
