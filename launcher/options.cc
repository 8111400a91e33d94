#include "launcher/options.h"

#include <cmath>
#include <iostream>
#include <limits>

#include "absl/strings/str_cat.h"

namespace lattice {

namespace po = boost::program_options;

absl::Status ParseOptions(const std::string& command, const std::vector<std::string>& args,
                          const po::options_description& desc, po::variables_map& vm, bool* help) {
  *help = false;
  po::options_description all = desc;
  all.add_options()("help,h", "print this help");
  try {
    po::store(po::command_line_parser(args).options(all).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: lattice " << command << " [options]\n" << all << "\n";
      *help = true;
      return absl::OkStatus();
    }
    po::notify(vm);
  } catch (const po::error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(e.what(), " (see `lattice ", command, " --help`)"));
  }
  return absl::OkStatus();
}

absl::Status CheckIntOption(absl::string_view option, int64_t value, int64_t min, int64_t max) {
  if (value >= min && value <= max) return absl::OkStatus();
  if (max == std::numeric_limits<int64_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", option, "=", value, " is invalid: must be >= ", min));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--", option, "=", value, " is invalid: must be in [", min, ", ", max, "]"));
}

absl::Status CheckFloatOption(absl::string_view option, double value, double min, double max,
                              bool min_exclusive) {
  const bool above = min_exclusive ? value > min : value >= min;
  if (std::isfinite(value) && above && value <= max) return absl::OkStatus();
  const std::string range =
      std::isinf(max) ? absl::StrCat(min_exclusive ? "> " : ">= ", min)
                      : absl::StrCat("in ", min_exclusive ? "(" : "[", min, ", ", max, "]");
  return absl::InvalidArgumentError(absl::StrCat("--", option, "=", value,
                                                 " is invalid: must be a finite number ", range));
}

absl::Status CheckThreadsOption(int64_t value) {
  if (value >= 0 && value <= kMaxThreads) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--threads=", value, " is invalid: must be in [0, ",
                                                 kMaxThreads, "] (0 = one per core)"));
}

}  // namespace lattice
