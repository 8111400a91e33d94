#include "runtime/io/fault_injection.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace lattice {
namespace {

struct FaultSpec {
  std::string point;
  int64_t rank = -1;  // -1: any
  int64_t step = -1;  // -1: any
  std::optional<double> value;  // the optional 4th field (scale_loss's factor)
};

std::vector<FaultSpec> ParseSpecs() {
  std::vector<FaultSpec> specs;
  const char* env = std::getenv("LATTICE_FAULT_INJECT");
  if (env == nullptr) return specs;
  for (absl::string_view item : absl::StrSplit(env, ',', absl::SkipEmpty())) {
    std::vector<absl::string_view> parts = absl::StrSplit(item, ':');
    FaultSpec s;
    bool ok = parts.size() == 3 || parts.size() == 4;
    if (ok) {
      s.point = std::string(parts[0]);
      ok = (parts[1] == "*" || absl::SimpleAtoi(parts[1], &s.rank)) &&
           (parts[2] == "*" || absl::SimpleAtoi(parts[2], &s.step));
    }
    if (ok && parts.size() == 4) {
      double v;
      ok = absl::SimpleAtod(parts[3], &v);  // "nan" and "inf" parse too
      if (ok) s.value = v;
    }
    if (!ok) {
      // Said loudly: the test that set it then fails because its crash never happens.
      std::fprintf(stderr,
                   "lattice: warning: LATTICE_FAULT_INJECT entry '%.*s' is not "
                   "<point>:<rank>:<step>[:<value>]; ignored\n",
                   static_cast<int>(item.size()), item.data());
      continue;
    }
    specs.push_back(std::move(s));
  }
  return specs;
}

const std::vector<FaultSpec>& Specs() {
  static const std::vector<FaultSpec>* const specs = new std::vector<FaultSpec>(ParseSpecs());
  return *specs;
}

}  // namespace

bool FaultInjected(absl::string_view point, int rank, int64_t step) {
  for (const FaultSpec& s : Specs()) {
    if (s.point == point && (s.rank < 0 || s.rank == rank) && (s.step < 0 || s.step == step)) {
      return true;
    }
  }
  return false;
}

bool AnyFaultInjected() { return !Specs().empty(); }

std::optional<double> TakeFaultValue(absl::string_view point, int rank, int64_t step) {
  static std::mutex mu;
  static std::set<size_t>* const taken = new std::set<size_t>();
  const std::vector<FaultSpec>& specs = Specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    const FaultSpec& s = specs[i];
    if (s.point == point && (s.rank < 0 || s.rank == rank) && (s.step < 0 || s.step == step) &&
        s.value.has_value()) {
      std::lock_guard<std::mutex> lock(mu);
      if (!taken->insert(i).second) continue;
      std::fprintf(stderr, "lattice: LATTICE_FAULT_INJECT: rank %d: %.*s of step %lld by %g\n",
                   rank, static_cast<int>(point.size()), point.data(),
                   static_cast<long long>(step), *s.value);
      return s.value;
    }
  }
  return std::nullopt;
}

namespace {
std::atomic<int64_t> fault_step{-1};
}  // namespace

void SetFaultInjectionStep(int64_t step) { fault_step.store(step, std::memory_order_relaxed); }
int64_t FaultInjectionStep() { return fault_step.load(std::memory_order_relaxed); }

void MaybeInjectStop(absl::string_view point, int rank, int64_t step) {
  if (!FaultInjected(point, rank, step)) return;
  // Once: a process that is continued (mpirun sends SIGCONT before killing a job) runs on.
  static std::atomic<bool> stopped{false};
  if (stopped.exchange(true)) return;
  std::fprintf(stderr, "lattice: LATTICE_FAULT_INJECT: rank %d sends itself SIGSTOP at %.*s of step %lld\n",
               rank, static_cast<int>(point.size()), point.data(), static_cast<long long>(step));
  std::fflush(stderr);
  ::kill(::getpid(), SIGSTOP);
}

void MaybeInjectFault(absl::string_view point, int rank, int64_t step) {
  if (!FaultInjected(point, rank, step)) return;
  std::fprintf(stderr, "lattice: LATTICE_FAULT_INJECT: rank %d sends itself SIGKILL at %.*s of step %lld\n",
               rank, static_cast<int>(point.size()), point.data(), static_cast<long long>(step));
  std::fflush(stderr);
  ::kill(::getpid(), SIGKILL);
  ::pause();  // SIGKILL cannot be caught; this only waits for it to land
}

}  // namespace lattice
