// Fuzzes the bounded JSON parser (runtime/io/json_limits.h) against nlohmann's own: both agree
// on every input they both accept, ParseJson refuses only for its three documented reasons,
// and JsonSnippet stays within its bound.
#include <cstdint>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "runtime/io/json_limits.h"
#include "tests/fuzz/fuzz_file.h"

using lattice::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lattice;
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<nlohmann::json> ours = ParseJson(text);
  const nlohmann::json theirs = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                                      /*allow_exceptions=*/false);
  if (ours.ok()) {
    Check(!theirs.is_discarded() && theirs == *ours);
    Check(JsonSnippet(*ours).size() <= 120);
    Check(JsonSnippet(*ours, 10).size() <= 10);
    return 0;
  }
  const absl::string_view why = ours.status().message();
  if (!theirs.is_discarded()) {
    // nlohmann accepted it: ours refused for a NUL, the depth or a repeated key only.
    Check(absl::StartsWith(why, "invalid JSON: NUL byte") ||
          absl::StartsWith(why, "JSON nested deeper than") ||
          absl::StartsWith(why, "duplicate key"));
  }
  Check(why.size() < 1024);
  return 0;
}
