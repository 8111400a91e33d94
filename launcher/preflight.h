// Checks made before long work starts, so that a run never trains (or tokenizes) for hours and
// then fails to write its result, or writes it over one of its own inputs.
#ifndef LATTICE_LAUNCHER_PREFLIGHT_H_
#define LATTICE_LAUNCHER_PREFLIGHT_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "runtime/config.h"

namespace lattice {

// A named file: what the user called it (a config key or an option) and its path.
struct NamedPath {
  std::string name;  // e.g. "train.save_weights" or "--out"
  std::string path;
};

// True when both paths are one file: the same existing regular file (any spelling, symbolic or
// hard link: st_dev/st_ino), or the same new path (neither exists; compared after resolving
// the directories). Devices and FIFOs are never the same file here: writing one destroys no
// content of another.
bool SameFile(const std::string& a, const std::string& b);

// Every output can be written (runtime/io/output_file.h, CheckOutputWritable), no two outputs
// are one file, and no output is one of the inputs. Errors name the option / key and the paths.
absl::Status CheckOutputs(const std::vector<NamedPath>& outputs,
                          const std::vector<NamedPath>& inputs);

// `lattice train`: every file the run writes (train.save_weights, train.metrics_file) can be
// written, and none of them is one of its inputs (train.init_weights, data.*), except that
// train.save_weights may replace train.init_weights when train.overwrite_init_weights is true.
// Call it where the files are written (rank 0) before the first step.
absl::Status CheckTrainOutputs(const Config& cfg);

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_PREFLIGHT_H_
