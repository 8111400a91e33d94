#include "launcher/commands.h"
#include "launcher/options.h"
#include "launcher/trainer.h"

namespace lattice {

namespace po = boost::program_options;

absl::Status RunTrainCommand(const CommandArgs& args) {
  po::options_description desc("lattice train");
  std::string config;
  std::vector<std::string> sets;
  desc.add_options()("config", po::value(&config)->required(), "YAML config file")(
      "set", po::value(&sets)->composing(), "override a config key: --set train.lr=1e-3");
  po::variables_map vm;
  bool help;
  LATTICE_RETURN_IF_ERROR(ParseOptions("train", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(config, sets));
  LATTICE_ASSIGN_OR_RETURN(auto trainer, Trainer::Create(cfg));
  return trainer->Run();
}

}  // namespace lattice
