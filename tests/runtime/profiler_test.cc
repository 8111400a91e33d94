#include "runtime/profiler.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace lattice {
namespace {

TEST(ProfilerTest, RecordsOnlyWhileEnabledAndSumsPerOp) {
  profiler::Reset();
  { profiler::Scope s("test.op", profiler::Category::kGemm, 10.0, 4.0); }
  EXPECT_TRUE(profiler::Snapshot().empty()) << "disabled scopes record nothing";

  profiler::SetEnabled(true);
  for (int i = 0; i < 3; ++i) {
    profiler::Scope s("test.op", profiler::Category::kGemm, 10.0, 4.0);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  {
    profiler::Scope s("test.other", profiler::Category::kAttention);
    // Busy work: thread CPU time grows only while the thread runs.
    volatile double x = 0;
    for (int i = 0; i < 200000; ++i) x = x + 1.0;
  }
  profiler::SetEnabled(false);
  { profiler::Scope s("test.op", profiler::Category::kGemm, 10.0, 4.0); }

  const auto ops = profiler::Snapshot();
  ASSERT_EQ(ops.size(), 2u);
  EXPECT_EQ(ops[0].name, "test.op");  // first-seen order
  EXPECT_EQ(ops[0].category, profiler::Category::kGemm);
  EXPECT_EQ(ops[0].calls, 3);
  EXPECT_DOUBLE_EQ(ops[0].flops, 30.0);
  EXPECT_DOUBLE_EQ(ops[0].bytes, 12.0);
  EXPECT_GE(ops[0].seconds, 0.006);  // three sleeps of 2 ms
  // Sleeping costs (almost) no CPU: far less than the wall time.
  EXPECT_LT(ops[0].thread_cpu_seconds, ops[0].seconds);
  EXPECT_EQ(ops[1].name, "test.other");
  EXPECT_STREQ(profiler::CategoryName(ops[1].category), "attention");
  EXPECT_GT(ops[1].thread_cpu_seconds, 0.0);

  profiler::Reset();
  EXPECT_TRUE(profiler::Snapshot().empty());
}

}  // namespace
}  // namespace lattice
