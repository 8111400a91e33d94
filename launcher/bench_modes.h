// The modes of `lattice bench` (launcher/bench_command.cc parses the options):
//   steps      `lattice bench --config F`: timed training steps under any launcher
//              (bench_command.cc)
//   sweep      `lattice bench --sweep ranks=1,2,4 --config F`: launches one steps run per rank
//              count, writes a Markdown table, JSON and a gnuplot PNG (bench_sweep.cc)
//   calibrate  `lattice bench --calibrate --config F --out C.yaml`: this machine's rates as a
//              cluster description for `lattice plan` (bench_calibrate.cc)
#ifndef LATTICE_LAUNCHER_BENCH_MODES_H_
#define LATTICE_LAUNCHER_BENCH_MODES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/system.h"  // PeakResidentBytes
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lattice {

struct BenchOptions {
  std::string config;
  std::vector<std::string> sets;
  int64_t warmup = 3;
  int64_t steps = 10;
  std::string json;          // where the steps' JSON goes (also printed on stdout)
  bool profile = false;      // per-op table of the timed steps (rank 0's)
  std::string cluster;       // a device description whose peak_tflops gives MFU
  // Sweep.
  std::string sweep;         // "ranks=1,2,4"
  bool weak = false;         // global batch grows with the ranks
  bool strong = false;       // global batch fixed (the default)
  std::string out_dir = "bench-sweep";
  // Calibration.
  bool calibrate = false;
  bool calibrate_mpi = false;  // internal: the ranks of the MPI part of a calibration
  std::string out;             // the cluster description written
  int64_t threads = 0;         // threads per rank the calibration measures (0: the default)
};

absl::Status RunBenchSteps(const BenchOptions& o);
absl::Status RunBenchSweep(const BenchOptions& o);
absl::Status RunBenchCalibrate(const BenchOptions& o);

// The lattice binary running now (/proc/self/exe), to launch more of it.
absl::StatusOr<std::string> SelfExecutable();
// Runs argv (argv[0] looked up in PATH) with `env` added to this process's environment,
// stdout and stderr into `log_path`; returns its exit status (error when it cannot start).
absl::StatusOr<int> RunChild(const std::vector<std::string>& argv,
                             const std::vector<std::string>& env, const std::string& log_path);
// The environment Open MPI needs for the runs a bench launches on this machine (the repo's
// usual: oversubscription allowed, root allowed when root, no CMA single copy in containers).
std::vector<std::string> MpiChildEnv();
// Writes `bytes` to `path` through runtime/io/output_file.h.
absl::Status WriteOutput(const std::string& path, const std::string& bytes);
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_BENCH_MODES_H_
