// Command-line parsing shared by the subcommands (Boost.Program_options), with errors as Status.
#ifndef LATTICE_LAUNCHER_OPTIONS_H_
#define LATTICE_LAUNCHER_OPTIONS_H_

#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "absl/status/status.h"

namespace lattice {

// Parses args into vm. Returns OK with *help = true when --help was given (usage printed).
absl::Status ParseOptions(const std::string& command, const std::vector<std::string>& args,
                          const boost::program_options::options_description& desc,
                          boost::program_options::variables_map& vm, bool* help);

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_OPTIONS_H_
