#include "runtime/system.h"

#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace lattice {

namespace {

// The first line of a small file, or "" when it cannot be read.
std::string FirstLine(const char* path) {
  std::ifstream f(path);
  std::string line;
  if (!f || !std::getline(f, line)) return "";
  return line;
}

// A byte count from a cgroup file ("max" or unreadable: -1).
int64_t CgroupBytes(const char* path) {
  const std::string s = FirstLine(path);
  int64_t v = -1;
  if (s.empty() || s == "max" || !absl::SimpleAtoi(s, &v)) return -1;
  return v;
}

}  // namespace

MemoryInfo AvailableMemory() {
  MemoryInfo info;
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, "MemAvailable:")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, "kB");
    int64_t kb = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &kb)) {
      info.available_bytes = kb * 1024;
      info.source = "MemAvailable";
    }
    break;
  }
  // A cgroup limit (the container's or the Slurm job's) may be lower than the machine's.
  struct Cgroup {
    const char* limit;
    const char* usage;
    const char* name;
  };
  for (const Cgroup& c : {Cgroup{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current",
                                 "cgroup memory.max"},
                          Cgroup{"/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                 "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                                 "cgroup memory.limit_in_bytes"}}) {
    const int64_t limit = CgroupBytes(c.limit);
    const int64_t used = CgroupBytes(c.usage);
    // cgroup v1 reports "no limit" as a huge number near 2^63.
    if (limit <= 0 || used < 0 || limit > (int64_t{1} << 60)) continue;
    const int64_t left = std::max<int64_t>(0, limit - used);
    if (info.available_bytes < 0 || left < info.available_bytes) {
      info.available_bytes = left;
      info.source = c.name;
    }
    break;
  }
  return info;
}

int AffinityCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

std::string FormatGiB(int64_t bytes) {
  return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
}

int64_t PeakResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtoll(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

}  // namespace lattice
