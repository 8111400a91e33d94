// Command-line parsing shared by the subcommands (Boost.Program_options), with errors as Status.
#ifndef LATTICE_LAUNCHER_OPTIONS_H_
#define LATTICE_LAUNCHER_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace lattice {

// Parses args into vm. Returns OK with *help = true when --help was given (usage printed).
absl::Status ParseOptions(const std::string& command, const std::vector<std::string>& args,
                          const boost::program_options::options_description& desc,
                          boost::program_options::variables_map& vm, bool* help);

// Range checks of parsed option values. Boost checks only the type ("-1" even parses as a huge
// unsigned number), so every numeric option is checked here; errors name the option and the
// value: "--top-k=-1 is invalid: must be >= 0".
absl::Status CheckIntOption(absl::string_view option, int64_t value, int64_t min, int64_t max);
// A finite value in [min, max], or (min, max] with min_exclusive.
absl::Status CheckFloatOption(absl::string_view option, double value, double min, double max,
                              bool min_exclusive = false);
// --threads: 0 (one per core) up to kMaxThreads.
absl::Status CheckThreadsOption(int64_t value);
// More threads than this is a typo, not a machine: the largest x86 nodes have 2 x 192 cores with
// SMT (768 hardware threads); the limit leaves headroom while refusing to start a million.
inline constexpr int64_t kMaxThreads = 4096;

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_OPTIONS_H_
