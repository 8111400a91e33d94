// A pre-check for YAML text before yaml-cpp sees it (config files and --set values).
//
// yaml-cpp 0.7 parses recursively and guards itself only with a depth counter that fails
// with the message "bad file", reads any amount of text into memory, and loops forever on
// some invalid input (found by tests/fuzz/config_fuzz.cc). CheckYamlLimits rejects all of that
// first, with a message that says what is wrong and where.
#ifndef LATTICE_RUNTIME_IO_YAML_LIMITS_H_
#define LATTICE_RUNTIME_IO_YAML_LIMITS_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace lattice {

// The largest config preset is a few KB; even a data.blend of thousands of files stays far
// below 4 MiB, which yaml-cpp parses in well under a second.
inline constexpr size_t kMaxYamlBytes = size_t{4} << 20;
// A config nests 4 levels at most (data > blend > [i] > [weight, path]); 32 is a wide margin
// and far below the ~500 levels where yaml-cpp's own guard gives up.
inline constexpr int kMaxYamlDepth = 32;

// InvalidArgument when `text` is larger than max_bytes, nests deeper than max_depth levels
// (block indentation, "- " sequence entries and [ / { flow collections together), holds a
// control character other than tab, LF and CR, or has a block value that starts with ','
// (invalid YAML on which yaml-cpp 0.7's LoadAll never returns), naming the line and column;
// the caller prefixes the file or key. The depth is estimated from the text:
// it never counts less than the nesting the text spells out (aliases are shared nodes, which
// yaml-cpp does not copy), and may count more (one level per line of "- " entries, brackets in
// unusual plain scalars such as `a [b]`), which is why the limit sits far above what configs
// need.
absl::Status CheckYamlLimits(absl::string_view text, size_t max_bytes = kMaxYamlBytes,
                             int max_depth = kMaxYamlDepth);

}  // namespace lattice

#endif  // LATTICE_RUNTIME_IO_YAML_LIMITS_H_
