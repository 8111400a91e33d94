// JSON from outside lattice (tokenizer.json, safetensors headers, checkpointed loader state),
// parsed with bounds, so that no file can crash or stall the process.
//
// nlohmann::json parses without recursion, but it accepts what these formats must not: a NUL
// byte ends its input silently (so `{...}\0junk` parses as `{...}`), a repeated key keeps the
// last value, and nesting is unbounded, after which every recursive operation on the value
// (dump, copy, comparison) can overflow the stack. ParseJson rejects all three while parsing,
// and JsonSnippet prints any value, however large or deep, in bounded time and stack.
#ifndef LATTICE_RUNTIME_IO_JSON_LIMITS_H_
#define LATTICE_RUNTIME_IO_JSON_LIMITS_H_

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lattice {

// Containers ({} and []) open at once, the root counting as 1. The deepest structure lattice
// reads is a tokenizer.json post_processor (root > post_processor > processors > [i] > single >
// [j] > SpecialToken > ids: 8 levels); 64 is that with a wide margin for fields the formats may
// grow, and still keeps every recursive nlohmann operation on a parsed value within a few KB
// of stack.
inline constexpr int kDefaultMaxJsonDepth = 64;

struct JsonParseOptions {
  int max_depth = kDefaultMaxJsonDepth;
  // A key given twice in one object is an error (nlohmann would keep the last value, other
  // readers the first: a file two readers understand differently is corrupt).
  bool reject_duplicate_keys = true;
};

// Parses `text` as exactly one JSON value (surrounding whitespace allowed). InvalidArgument
// with a message that stands alone and names the place, callers prefix their file name:
//   "invalid JSON: parse error at line 1, column 5: ..."
//   "invalid JSON: NUL byte at offset 42"
//   "JSON nested deeper than 64 levels at normalizer.a[0][0]..."
//   "duplicate key \"x\" in model.vocab"
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text,
                                         const JsonParseOptions& options = {});

// `value` as compact JSON text cut to at most `max_chars` characters (the last three "..."
// when cut). Only the printed prefix is visited, so the cost and the recursion depth are
// bounded by max_chars whatever the value holds.
std::string JsonSnippet(const nlohmann::json& value, size_t max_chars = 120);

}  // namespace lattice

#endif  // LATTICE_RUNTIME_IO_JSON_LIMITS_H_
