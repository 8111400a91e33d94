#include "launcher/options.h"

#include <iostream>

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

}  // namespace lattice
