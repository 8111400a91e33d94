#include "runtime/status.h"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace lattice::internal {

void CheckFailed(const char* file, int line, const char* cond, absl::string_view msg) {
  std::fprintf(stderr, "lattice internal error: CHECK(%s) failed at %s:%d %s\n", cond, file, line,
               std::string(msg).c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace lattice::internal
