#include "runtime/profiler.h"

#include <time.h>

#include <mutex>

namespace lattice::profiler {
namespace {

struct Registry {
  std::mutex mu;
  std::vector<OpStats> ops;  // few dozen entries: a linear search by name is cheap
};

Registry& Reg() {
  static Registry r;
  return r;
}

double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

}  // namespace

void Scope::Start() {
  start_cpu_ = ThreadCpuSeconds();
  start_ = std::chrono::steady_clock::now();
}

const char* CategoryName(Category c) {
  switch (c) {
    case Category::kGemm: return "gemm";
    case Category::kAttention: return "attention";
    case Category::kElementwise: return "elementwise";
    case Category::kOptimizer: return "optimizer";
    case Category::kOther: return "other";
    case Category::kPhase: return "phase";
  }
  return "other";
}

void SetEnabled(bool on) { EnabledFlag().store(on, std::memory_order_relaxed); }

void Reset() {
  Registry& r = Reg();
  std::lock_guard<std::mutex> lock(r.mu);
  r.ops.clear();
}

std::vector<OpStats> Snapshot() {
  Registry& r = Reg();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.ops;
}

Scope::~Scope() {
  if (!on_) return;
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double cpu = ThreadCpuSeconds() - start_cpu_;
  Registry& r = Reg();
  std::lock_guard<std::mutex> lock(r.mu);
  for (OpStats& op : r.ops) {
    if (op.name == name_) {
      ++op.calls;
      op.seconds += s;
      op.thread_cpu_seconds += cpu;
      op.flops += flops_;
      op.bytes += bytes_;
      return;
    }
  }
  r.ops.push_back(OpStats{name_, category_, 1, s, cpu, flops_, bytes_});
}

}  // namespace lattice::profiler
