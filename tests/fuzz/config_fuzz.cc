// Fuzzes config loading (runtime/config.h): YAML text, then after a line "%%" one --set
// override per line. What loads must round-trip through ToYaml() to an equal Config, and the
// layout check must give an answer for any world size.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "runtime/config.h"
#include "tests/fuzz/fuzz_file.h"

using lattice::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lattice;
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  absl::string_view yaml = input;
  std::vector<std::string> overrides;
  if (const size_t sep = input.find("\n%%\n"); sep != absl::string_view::npos) {
    yaml = input.substr(0, sep);
    for (absl::string_view line : absl::StrSplit(input.substr(sep + 4), '\n')) {
      if (!line.empty()) overrides.emplace_back(line);
    }
  }
  absl::StatusOr<Config> config = ParseConfig(yaml, overrides, "fuzz.yaml");
  if (!config.ok()) {
    Check(!config.status().message().empty());
    return 0;
  }
  const std::string text = config->ToYaml();
  absl::StatusOr<Config> again = ParseConfig(text, {}, "round-trip.yaml");
  Check(again.ok() && *again == *config);
  for (int64_t world : {1, 2, 3, 8, 64}) {
    Config copy = *config;
    (void)copy.ValidateLayout(world);
  }
  return 0;
}
