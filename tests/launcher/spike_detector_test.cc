// The loss-spike detector (launcher/spike.h) and the train.spike config keys.
#include "launcher/spike.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/config.h"

namespace lattice {
namespace {

SpikeConfig Spike(int64_t window, double z, int64_t max_nonfinite = 0, int64_t max_rollbacks = 3) {
  SpikeConfig c;
  c.window = window;
  c.z_threshold = z;
  c.max_nonfinite = max_nonfinite;
  c.max_rollbacks = max_rollbacks;
  return c;
}

// Mean and sample standard deviation, computed here the textbook way.
void Stats(const std::vector<double>& x, double* mean, double* stddev) {
  double s = 0;
  for (double v : x) s += v;
  *mean = s / x.size();
  double q = 0;
  for (double v : x) q += (v - *mean) * (v - *mean);
  *stddev = std::sqrt(q / (x.size() - 1));
}

TEST(SpikeDetector, WaitsForTheWindowThenMeasuresZAgainstIt) {
  // Before 4 good losses are known nothing triggers, however large the loss.
  SpikeDetector early(Spike(4, 3.0));
  for (int i = 1; i <= 3; ++i) EXPECT_FALSE(early.Observe(i, 5.0 + 0.1 * i, false).triggered());
  EXPECT_FALSE(early.Observe(4, 1000.0, false).triggered());

  SpikeDetector d(Spike(4, 3.0));
  const std::vector<double> first = {5.0, 5.2, 4.9, 5.1};
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_FALSE(d.Observe(static_cast<int64_t>(i) + 1, first[i], false).triggered());
  }
  EXPECT_EQ(d.known(), 4);
  double mean, sd;
  Stats(first, &mean, &sd);
  // Just under the threshold: kept, and it enters the window.
  const double under = mean + 2.9 * sd;
  EXPECT_FALSE(d.Observe(5, under, false).triggered());
  // The window is now the last 4: 5.2, 4.9, 5.1, under.
  const std::vector<double> window = {5.2, 4.9, 5.1, under};
  Stats(window, &mean, &sd);
  const double loss = mean + 3.5 * sd;
  const SpikeVerdict v = d.Observe(6, loss, false);
  ASSERT_EQ(v.kind, SpikeVerdict::Kind::kSpike);
  EXPECT_EQ(v.step, 6);
  EXPECT_EQ(v.window, 4);
  EXPECT_NEAR(v.mean, mean, 1e-12);
  EXPECT_NEAR(v.stddev, sd, 1e-12);
  EXPECT_NEAR(v.sigma, 3.5, 1e-9);
  EXPECT_NE(v.Describe().find("at iteration 6 is 3.5 sigma above the last 4"), std::string::npos)
      << v.Describe();
  // The spike itself is not kept: the same loss triggers again, with the same statistics.
  const SpikeVerdict again = d.Observe(7, loss, false);
  ASSERT_TRUE(again.triggered());
  EXPECT_NEAR(again.sigma, 3.5, 1e-9);
  // A loss below the mean never triggers, however far below.
  EXPECT_FALSE(d.Observe(8, 0.0, false).triggered());
}

TEST(SpikeDetector, SkippedStepsAreNotInTheWindow) {
  SpikeDetector d(Spike(3, 2.0));
  EXPECT_FALSE(d.Observe(1, 4.0, false).triggered());
  // A skipped step (the engine's verdict) with a large but finite loss, and a NaN loss.
  EXPECT_FALSE(d.Observe(2, 1000.0, true).triggered());
  EXPECT_FALSE(d.Observe(3, std::nan(""), false).triggered());
  EXPECT_FALSE(d.Observe(4, 4.2, false).triggered());
  EXPECT_EQ(d.known(), 2);  // 4.0 and 4.2 only
  EXPECT_FALSE(d.Observe(5, 4.1, false).triggered());
  const SpikeVerdict v = d.Observe(6, 100.0, false);
  ASSERT_TRUE(v.triggered());
  EXPECT_NEAR(v.mean, 4.1, 1e-12);  // (4.0 + 4.2 + 4.1) / 3: the 1000 is not in it
  EXPECT_NEAR(v.stddev, 0.1, 1e-12);
}

TEST(SpikeDetector, NonFiniteStreakTriggersAndAFiniteStepResetsIt) {
  SpikeDetector d(Spike(0, 6.0, /*max_nonfinite=*/3));
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_FALSE(d.Observe(1, inf, true).triggered());
  EXPECT_FALSE(d.Observe(2, std::nan(""), true).triggered());
  EXPECT_FALSE(d.Observe(3, 5.0, false).triggered());  // resets the streak
  EXPECT_EQ(d.streak(), 0);
  EXPECT_FALSE(d.Observe(4, 5.0, true).triggered());   // skipped with a finite loss counts
  EXPECT_FALSE(d.Observe(5, inf, false).triggered());  // a non-finite loss counts
  const SpikeVerdict v = d.Observe(6, std::nan(""), true);
  ASSERT_EQ(v.kind, SpikeVerdict::Kind::kNonFinite);
  EXPECT_EQ(v.streak, 3);
  EXPECT_EQ(v.first_step, 4);
  EXPECT_NE(v.Describe().find("3 non-finite steps in a row (iterations 4-6"), std::string::npos)
      << v.Describe();
  // Without window the z test is off: any finite loss passes.
  EXPECT_FALSE(d.Observe(7, 1e30, false).triggered());
}

TEST(SpikeDetector, ZeroDeviationMeansAnyLargerLossIsASpike) {
  SpikeDetector d(Spike(3, 6.0));
  for (int i = 1; i <= 3; ++i) EXPECT_FALSE(d.Observe(i, 2.0, false).triggered());
  EXPECT_FALSE(d.Observe(4, 2.0, false).triggered());
  const SpikeVerdict v = d.Observe(5, 2.0000001, false);
  ASSERT_TRUE(v.triggered());
  EXPECT_TRUE(std::isinf(v.sigma));
}

TEST(SpikeDetector, RollBackForgetsTheLaterStepsAndKeepsTheWindowUpToTheCheckpoint) {
  SpikeDetector d(Spike(3, 3.0));
  // Steps 1..10 with slowly varying losses; a checkpoint of iteration 6.
  std::vector<double> loss(11);
  for (int i = 1; i <= 10; ++i) loss[i] = 5.0 + 0.1 * ((i * 7) % 5);
  for (int i = 1; i <= 6; ++i) EXPECT_FALSE(d.Observe(i, loss[i], false).triggered());
  d.Anchor(6);
  for (int i = 7; i <= 10; ++i) EXPECT_FALSE(d.Observe(i, loss[i], false).triggered());
  EXPECT_EQ(d.known(), 3 + 4);  // the window up to 6, plus everything after it
  EXPECT_FALSE(d.Observe(11, std::nan(""), true).triggered());
  EXPECT_EQ(d.streak(), 1);
  ASSERT_TRUE(d.CanRollBack());
  d.RollBack(6);
  EXPECT_EQ(d.rollbacks(), 1);
  EXPECT_EQ(d.known(), 3);
  EXPECT_EQ(d.streak(), 0);
  // The window after the rollback is losses 4, 5, 6: the statistics say so.
  double mean, sd;
  Stats({loss[4], loss[5], loss[6]}, &mean, &sd);
  const SpikeVerdict v = d.Observe(7, mean + 10 * sd, false);
  ASSERT_TRUE(v.triggered());
  EXPECT_NEAR(v.mean, mean, 1e-12);
  EXPECT_NEAR(v.sigma, 10.0, 1e-9);
  // A newer anchor drops what only an older rollback needed.
  for (int i = 7; i <= 12; ++i) EXPECT_FALSE(d.Observe(i, 5.1 + 0.01 * i, false).triggered());
  d.Anchor(12);
  EXPECT_EQ(d.known(), 3);
}

TEST(SpikeDetector, MaxRollbacksBoundsTheRollbacksOfAProcess) {
  SpikeDetector d(Spike(2, 3.0, 0, /*max_rollbacks=*/2));
  EXPECT_TRUE(d.CanRollBack());
  d.RollBack(0);
  EXPECT_TRUE(d.CanRollBack());
  d.RollBack(0);
  EXPECT_FALSE(d.CanRollBack());
  EXPECT_EQ(d.rollbacks(), 2);
  SpikeDetector never(Spike(2, 3.0, 0, /*max_rollbacks=*/0));
  EXPECT_FALSE(never.CanRollBack());
}

TEST(SpikeConfigKeys, ParseValidateAndRoundTripThroughYaml) {
  absl::StatusOr<Config> c = ParseConfig(
      "train:\n  spike:\n    window: 20\n    z_threshold: 4.5\n    max_nonfinite: 3\n"
      "    max_rollbacks: 2\ncheckpoint:\n  dir: ckpt\n",
      {}, "test");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->train.spike.window, 20);
  EXPECT_EQ(c->train.spike.z_threshold, 4.5);
  EXPECT_EQ(c->train.spike.max_nonfinite, 3);
  EXPECT_EQ(c->train.spike.max_rollbacks, 2);
  EXPECT_TRUE(c->train.spike.enabled());
  // ToYaml writes the nested section once and reads back to the same config.
  const std::string yaml = c->ToYaml();
  EXPECT_NE(yaml.find("\n  spike:\n    window: 20"), std::string::npos) << yaml;
  absl::StatusOr<Config> back = ParseConfig(yaml, {}, "round trip");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << yaml;
  EXPECT_TRUE(*back == *c);
  // Dotted overrides work too, and the defaults are off.
  absl::StatusOr<Config> d = ParseConfig("", {"train.spike.max_nonfinite=2", "checkpoint.dir=x"},
                                         "test");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->train.spike.max_nonfinite, 2);
  EXPECT_FALSE(Config().train.spike.enabled());

  auto error = [](std::vector<std::string> overrides) {
    absl::StatusOr<Config> r = ParseConfig("", overrides, "test");
    return r.ok() ? std::string() : std::string(r.status().message());
  };
  EXPECT_NE(error({"train.spike.window=1", "checkpoint.dir=x"}).find("train.spike.window=1"),
            std::string::npos);
  EXPECT_NE(error({"train.spike.window=-2", "checkpoint.dir=x"}).find("train.spike.window"),
            std::string::npos);
  EXPECT_NE(error({"train.spike.z_threshold=0", "checkpoint.dir=x"}).find("z_threshold=0"),
            std::string::npos);
  EXPECT_NE(error({"train.spike.max_rollbacks=-1"}).find("train.spike.max_rollbacks"),
            std::string::npos);
  // A rollback needs checkpoints; max_rollbacks=0 (stop on the first spike) does not.
  EXPECT_NE(error({"train.spike.window=8"}).find("checkpoint.dir is empty"), std::string::npos);
  EXPECT_EQ(error({"train.spike.window=8", "train.spike.max_rollbacks=0"}), "");
}

}  // namespace
}  // namespace lattice
