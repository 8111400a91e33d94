#include "parallel/loss_scaler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "runtime/io/json_limits.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

DynamicLossScaler Make(const LossScalerConfig& config) {
  absl::StatusOr<DynamicLossScaler> s = DynamicLossScaler::Create(config);
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

LossScalerConfig Small() {
  LossScalerConfig c;
  c.initial_scale = 1024.0;
  c.min_scale = 16.0;
  c.growth_interval = 3;
  c.hysteresis = 2;
  return c;
}

TEST(LossScalerTest, DefaultsAreMegatrons) {
  const LossScalerConfig c;
  EXPECT_EQ(c.initial_scale, std::ldexp(1.0, 32));
  EXPECT_EQ(c.min_scale, 1.0);
  EXPECT_EQ(c.growth_factor, 2.0);
  EXPECT_EQ(c.backoff_factor, 0.5);
  EXPECT_EQ(c.growth_interval, 1000);
  EXPECT_EQ(c.hysteresis, 2);
  DynamicLossScaler s = Make(c);
  EXPECT_EQ(s.scale(), 4294967296.0f);
  EXPECT_EQ(s.inv_scale(), std::ldexp(1.0f, -32));
  EXPECT_EQ(s.growth_tracker(), 0);
  EXPECT_EQ(s.hysteresis_tracker(), 2);
}

TEST(LossScalerTest, GrowsAfterEachFullIntervalOfCleanSteps) {
  DynamicLossScaler s = Make(Small());
  EXPECT_FALSE(s.Update(false));
  EXPECT_FALSE(s.Update(false));
  EXPECT_EQ(s.growth_tracker(), 2);
  EXPECT_EQ(s.scale(), 1024.0f);  // not yet: 2 of 3
  EXPECT_FALSE(s.Update(false));
  EXPECT_EQ(s.scale(), 2048.0f);
  EXPECT_EQ(s.growth_tracker(), 0);
  for (int i = 0; i < 3; ++i) s.Update(false);
  EXPECT_EQ(s.scale(), 4096.0f);
  EXPECT_EQ(s.inv_scale(), 1.0f / 4096.0f);
}

TEST(LossScalerTest, OverflowSkipsTheStepAndResetsGrowth) {
  DynamicLossScaler s = Make(Small());
  s.Update(false);
  s.Update(false);
  // Every overflowing step is skipped, also the first one, which the hysteresis absorbs.
  EXPECT_TRUE(s.Update(true));
  EXPECT_EQ(s.growth_tracker(), 0);
  EXPECT_EQ(s.hysteresis_tracker(), 1);
  EXPECT_EQ(s.scale(), 1024.0f);  // hysteresis 2: the first overflow does not back off
  // The growth interval starts again from the overflow.
  s.Update(false);
  s.Update(false);
  EXPECT_EQ(s.scale(), 1024.0f);
  s.Update(false);
  EXPECT_EQ(s.scale(), 2048.0f);
  EXPECT_EQ(s.hysteresis_tracker(), 2);  // a growth restores the hysteresis
}

TEST(LossScalerTest, BacksOffOnceHysteresisIsExhaustedThenOnEveryOverflow) {
  DynamicLossScaler s = Make(Small());
  EXPECT_TRUE(s.Update(true));
  EXPECT_EQ(s.scale(), 1024.0f);
  // Clean steps in between do not restore the hysteresis (Megatron's rule): it counts the
  // overflows of one growth interval, not consecutive ones.
  s.Update(false);
  s.Update(false);
  EXPECT_EQ(s.hysteresis_tracker(), 1);
  EXPECT_TRUE(s.Update(true));
  EXPECT_EQ(s.hysteresis_tracker(), 0);
  EXPECT_EQ(s.scale(), 512.0f);
  EXPECT_TRUE(s.Update(true));
  EXPECT_EQ(s.scale(), 256.0f);
  EXPECT_EQ(s.hysteresis_tracker(), 0);  // stays at 0 rather than counting down
  // Hysteresis 1 backs off on the first overflow.
  LossScalerConfig c = Small();
  c.hysteresis = 1;
  DynamicLossScaler t = Make(c);
  EXPECT_TRUE(t.Update(true));
  EXPECT_EQ(t.scale(), 512.0f);
}

TEST(LossScalerTest, BackoffStopsAtTheMinimumScale) {
  LossScalerConfig c = Small();
  c.hysteresis = 1;
  c.initial_scale = 64.0;
  c.min_scale = 20.0;  // not a power of two: the clamp, not the factor, gives it
  DynamicLossScaler s = Make(c);
  s.Update(true);
  EXPECT_EQ(s.scale(), 32.0f);
  s.Update(true);
  EXPECT_EQ(s.scale(), 20.0f);
  s.Update(true);
  EXPECT_EQ(s.scale(), 20.0f);
  // And grows from there by the factor.
  for (int i = 0; i < 3; ++i) s.Update(false);
  EXPECT_EQ(s.scale(), 40.0f);
}

TEST(LossScalerTest, ArithmeticIsFp32LikeMegatrons) {
  // Factors that are not powers of two: each product is rounded to fp32, as Megatron's fp32
  // tensors round it.
  LossScalerConfig c;
  c.initial_scale = 1000.0;
  c.min_scale = 1e-3;
  c.growth_factor = 1.1;
  c.backoff_factor = 0.3;
  c.growth_interval = 1;
  c.hysteresis = 1;
  DynamicLossScaler s = Make(c);
  float want = 1000.0f;
  for (int i = 0; i < 5; ++i) {
    s.Update(false);
    want = want * 1.1f;
    EXPECT_EQ(s.scale(), want) << i;
  }
  s.Update(true);
  want = want * 0.3f;
  EXPECT_EQ(s.scale(), want);
  EXPECT_EQ(s.inv_scale(), static_cast<float>(1.0 / static_cast<double>(want)));
}

TEST(LossScalerTest, GrowthNeverOverflowsTheScaleToInfinity) {
  LossScalerConfig c;
  c.initial_scale = std::ldexp(1.0, 126);
  c.growth_interval = 1;
  DynamicLossScaler s = Make(c);
  s.Update(false);
  EXPECT_EQ(s.scale(), std::ldexp(1.0f, 127));
  s.Update(false);  // 2^128 is inf in fp32: kept at 2^127
  EXPECT_EQ(s.scale(), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isfinite(s.scale()));
}

TEST(LossScalerTest, StateRoundTripsThroughJsonAndResumesIdentically) {
  LossScalerConfig c = Small();
  c.growth_factor = 1.5;  // a scale that is not a power of two must survive exactly
  DynamicLossScaler a = Make(c);
  for (bool inf : {false, false, false, true, false, false, false, false}) a.Update(inf);
  const nlohmann::json state = a.StateJson();
  EXPECT_EQ(state["version"], 1);
  EXPECT_EQ(state["scale"].get<double>(), static_cast<double>(a.scale()));
  EXPECT_EQ(state["growth_tracker"], a.growth_tracker());
  EXPECT_EQ(state["hysteresis_tracker"], a.hysteresis_tracker());
  // Through text, as a checkpoint stores it.
  absl::StatusOr<nlohmann::json> parsed = ParseJson(state.dump());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  DynamicLossScaler b = Make(c);
  ASSERT_TRUE(b.LoadStateJson(*parsed).ok());
  EXPECT_EQ(b.scale(), a.scale());
  EXPECT_EQ(b.growth_tracker(), a.growth_tracker());
  EXPECT_EQ(b.hysteresis_tracker(), a.hysteresis_tracker());
  // Both continue identically.
  for (bool inf : {false, true, true, false, false, false, true}) {
    EXPECT_EQ(a.Update(inf), b.Update(inf));
    EXPECT_EQ(a.scale(), b.scale());
    EXPECT_EQ(a.growth_tracker(), b.growth_tracker());
    EXPECT_EQ(a.hysteresis_tracker(), b.hysteresis_tracker());
  }
}

TEST(LossScalerTest, ATrackerPastAShorterIntervalGrowsAtOnce) {
  // A checkpoint from a run with a longer growth interval: the next clean step grows.
  DynamicLossScaler s = Make(Small());  // interval 3
  nlohmann::json state = s.StateJson();
  state["growth_tracker"] = 10;
  ASSERT_TRUE(s.LoadStateJson(state).ok());
  s.Update(false);
  EXPECT_EQ(s.scale(), 2048.0f);
  EXPECT_EQ(s.growth_tracker(), 0);
}

TEST(LossScalerTest, MalformedStateIsRejectedByNameAndLeavesTheScalerUnchanged) {
  DynamicLossScaler s = Make(Small());
  const nlohmann::json good = s.StateJson();
  struct Case {
    const char* key;
    nlohmann::json value;  // null: remove the key
    const char* message;
  };
  const Case cases[] = {
      {"version", 2, "version 2 (this build reads 1)"},
      {"version", nullptr, "missing \"version\""},
      {"scale", 0.0, "\"scale\" must be a positive finite fp32 value, got 0"},
      {"scale", -4.0, "\"scale\" must be a positive finite fp32"},
      {"scale", 1e39, "\"scale\" must be a positive finite fp32"},
      {"scale", "1024", "\"scale\" must be a positive finite fp32 value, got \"1024\""},
      {"scale", nullptr, "missing \"scale\""},
      {"growth_tracker", -1, "\"growth_tracker\" must be an integer >= 0, got -1"},
      {"growth_tracker", 1.5, "\"growth_tracker\" must be an integer >= 0, got 1.5"},
      {"growth_tracker", std::numeric_limits<uint64_t>::max(), "\"growth_tracker\" must be"},
      {"hysteresis_tracker", nullptr, "missing \"hysteresis_tracker\""},
  };
  for (const Case& c : cases) {
    nlohmann::json bad = good;
    bad["growth_tracker"] = 1;  // would change the scaler if it were applied
    if (c.value.is_null()) {
      bad.erase(c.key);
    } else {
      bad[c.key] = c.value;
    }
    const absl::Status st = s.LoadStateJson(bad);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.message));
    EXPECT_EQ(s.growth_tracker(), 0) << c.message;
    EXPECT_EQ(s.scale(), 1024.0f) << c.message;
  }
  EXPECT_THAT(std::string(s.LoadStateJson(nlohmann::json::array()).message()),
              HasSubstr("not a JSON object"));
}

TEST(LossScalerTest, InvalidConfigsNameTheField) {
  struct Case {
    void (*edit)(LossScalerConfig&);
    const char* message;
  };
  const Case cases[] = {
      {[](LossScalerConfig& c) { c.initial_scale = 0; }, "initial_scale = 0"},
      {[](LossScalerConfig& c) { c.initial_scale = 1e39; }, "initial_scale = 1e+39"},
      {[](LossScalerConfig& c) { c.initial_scale = std::nan(""); }, "initial_scale = nan"},
      {[](LossScalerConfig& c) { c.min_scale = 0; }, "min_scale = 0 must be positive"},
      {[](LossScalerConfig& c) { c.min_scale = 1e10; }, "at most initial_scale (4.29497e+09)"},
      {[](LossScalerConfig& c) { c.min_scale = 1e-50; }, "min_scale = 1e-50 rounds to 0"},
      {[](LossScalerConfig& c) { c.growth_factor = 1.0; }, "growth_factor = 1 must be greater"},
      {[](LossScalerConfig& c) { c.growth_factor = 1.0 + 1e-9; }, "rounds to 1 in fp32"},
      {[](LossScalerConfig& c) { c.backoff_factor = 1.0; }, "backoff_factor = 1 must be in"},
      {[](LossScalerConfig& c) { c.backoff_factor = 0.0; }, "backoff_factor = 0 must be in"},
      {[](LossScalerConfig& c) { c.backoff_factor = 1.0 - 1e-9; }, "rounds to 0 or 1"},
      {[](LossScalerConfig& c) { c.growth_interval = 0; }, "growth_interval = 0"},
      {[](LossScalerConfig& c) { c.hysteresis = -1; }, "hysteresis = -1"},
  };
  for (const Case& k : cases) {
    LossScalerConfig c;
    k.edit(c);
    const absl::StatusOr<DynamicLossScaler> s = DynamicLossScaler::Create(c);
    ASSERT_FALSE(s.ok()) << k.message;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(k.message));
  }
}

}  // namespace
}  // namespace lattice
