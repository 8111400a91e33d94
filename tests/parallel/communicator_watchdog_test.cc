// The abort watchdog (parallel/watchdog.h): a process still alive when the deadline passes is
// ended with kWatchdogExitCode and a message; a disarmed one lives on. The death tests fork, so
// the process that hangs (and is ended) is a child, not the test binary.
#include "parallel/watchdog.h"

#include <chrono>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lattice {
namespace {

// A hang, as far as a 0.2 s watchdog can tell.
void HangForAMinute() { std::this_thread::sleep_for(std::chrono::seconds(60)); }

class WatchdogDeathTest : public ::testing::Test {
 protected:
  // The watchdog is a thread: fork-and-exec the child instead of only forking.
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(WatchdogDeathTest, EndsAProcessThatOutlivesTheDeadline) {
  EXPECT_EXIT(
      {
        Watchdog dog(0.2, "rank 3: MPI_Abort");
        HangForAMinute();
      },
      ::testing::ExitedWithCode(kWatchdogExitCode),
      "lattice: watchdog: rank 3: MPI_Abort: the process did not end within 0.2 s; exiting "
      "with code 125");
}

TEST_F(WatchdogDeathTest, TheFirstArmedAbortWatchdogWins) {
  EXPECT_EXIT(
      {
        ArmAbortWatchdog(0.2, "first");
        ArmAbortWatchdog(3600, "second");  // must not extend the deadline
        HangForAMinute();
      },
      ::testing::ExitedWithCode(kWatchdogExitCode), "watchdog: first: .*within 0.2 s");
}

TEST(Watchdog, DisarmedItLetsTheProcessLive) {
  const auto start = std::chrono::steady_clock::now();
  {
    Watchdog dog(0.2, "never");
    dog.Disarm();
    std::this_thread::sleep_for(std::chrono::milliseconds(400));  // past the deadline
  }
  // Still here, and the thread was joined without waiting for anything else.
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(s, 0.4);
  EXPECT_LT(s, 5.0);
}

TEST(Watchdog, DestroyingItWakesTheThreadAtOnce) {
  const auto start = std::chrono::steady_clock::now();
  { Watchdog dog(3600, "long"); }
  // The destructor disarms and joins: no hour-long wait (5 s is a loaded machine's scheduling).
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(s, 5.0);
}

}  // namespace
}  // namespace lattice
