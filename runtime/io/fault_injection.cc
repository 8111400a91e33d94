#include "runtime/io/fault_injection.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
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
};

std::vector<FaultSpec> ParseSpecs() {
  std::vector<FaultSpec> specs;
  const char* env = std::getenv("LATTICE_FAULT_INJECT");
  if (env == nullptr) return specs;
  for (absl::string_view item : absl::StrSplit(env, ',', absl::SkipEmpty())) {
    std::vector<absl::string_view> parts = absl::StrSplit(item, ':');
    FaultSpec s;
    bool ok = parts.size() == 3;
    if (ok) {
      s.point = std::string(parts[0]);
      ok = (parts[1] == "*" || absl::SimpleAtoi(parts[1], &s.rank)) &&
           (parts[2] == "*" || absl::SimpleAtoi(parts[2], &s.step));
    }
    if (!ok) {
      // Said loudly: the test that set it then fails because its crash never happens.
      std::fprintf(stderr,
                   "lattice: warning: LATTICE_FAULT_INJECT entry '%.*s' is not "
                   "<point>:<rank>:<step>; ignored\n",
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

void MaybeInjectFault(absl::string_view point, int rank, int64_t step) {
  if (!FaultInjected(point, rank, step)) return;
  std::fprintf(stderr, "lattice: LATTICE_FAULT_INJECT: rank %d sends itself SIGKILL at %.*s of step %lld\n",
               rank, static_cast<int>(point.size()), point.data(), static_cast<long long>(step));
  std::fflush(stderr);
  ::kill(::getpid(), SIGKILL);
  ::pause();  // SIGKILL cannot be caught; this only waits for it to land
}

}  // namespace lattice
