// A per-op wall-time profile of the CPU step (`lattice bench train-step --profile`). Kernels
// open a Scope around their work; while profiling is off (the default) a Scope costs one
// relaxed atomic load. Scopes do not nest: only kernel entry points open one, from the thread
// that drives the step (never inside a parallel region).
#ifndef LATTICE_RUNTIME_PROFILER_H_
#define LATTICE_RUNTIME_PROFILER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace lattice::profiler {

// kPhase: a step phase timed by the engine (forward, backward, pipeline wait, communication,
// optimizer; parallel/engine.cc), which contains kernel scopes: reports keep the two apart.
enum class Category { kGemm, kAttention, kElementwise, kOptimizer, kOther, kPhase };
const char* CategoryName(Category c);  // "gemm", "attention", ..., "phase"

struct OpStats {
  std::string name;
  Category category = Category::kOther;
  int64_t calls = 0;
  double seconds = 0;  // wall time inside the op
  // CPU time of the calling thread inside the op: on a loaded machine, the op's own cost when
  // it runs on one thread (wall time there includes the time other processes held the core).
  double thread_cpu_seconds = 0;
  double flops = 0;    // floating-point operations counted by the op (0: not counted)
  double bytes = 0;    // bytes the op must at least move (0: not counted)
};

void SetEnabled(bool on);
inline std::atomic<bool>& EnabledFlag() {
  static std::atomic<bool> flag{false};
  return flag;
}
inline bool Enabled() { return EnabledFlag().load(std::memory_order_relaxed); }
void Reset();
// Per-op totals since the last Reset, in first-seen order.
std::vector<OpStats> Snapshot();

// `name` must be a string literal (it is kept by pointer until the op is first recorded).
class Scope {
 public:
  Scope(const char* name, Category category, double flops = 0, double bytes = 0)
      : name_(name), category_(category), flops_(flops), bytes_(bytes), on_(Enabled()) {
    if (on_) Start();
  }
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  const char* name_;
  Category category_;
  double flops_, bytes_;
  bool on_;
  std::chrono::steady_clock::time_point start_;
  double start_cpu_ = 0;
  void Start();
};

}  // namespace lattice::profiler

#endif  // LATTICE_RUNTIME_PROFILER_H_
