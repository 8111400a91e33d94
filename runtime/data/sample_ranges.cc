#include "runtime/data/sample_ranges.h"

#include <algorithm>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "runtime/io/json_limits.h"

namespace lattice {

std::vector<SampleRange> MergeSampleRanges(std::vector<SampleRange> ranges) {
  std::erase_if(ranges, [](const SampleRange& r) { return r.end <= r.begin; });
  std::sort(ranges.begin(), ranges.end(),
            [](const SampleRange& a, const SampleRange& b) { return a.begin < b.begin; });
  std::vector<SampleRange> out;
  for (const SampleRange& r : ranges) {
    if (!out.empty() && r.begin <= out.back().end) {
      out.back().end = std::max(out.back().end, r.end);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

namespace {

// The first range whose end is > g (the only one that can hold g or follow it).
std::vector<SampleRange>::const_iterator After(int64_t g, const std::vector<SampleRange>& ranges) {
  return std::upper_bound(ranges.begin(), ranges.end(), g,
                          [](int64_t v, const SampleRange& r) { return v < r.end; });
}

}  // namespace

int64_t FirstUnskipped(int64_t g, const std::vector<SampleRange>& ranges) {
  auto it = After(g, ranges);
  // Merged ranges never touch, so the end of the one holding g is not skipped.
  return it != ranges.end() && it->begin <= g ? it->end : g;
}

int64_t UnskippedRunEnd(int64_t g, const std::vector<SampleRange>& ranges) {
  auto it = After(g, ranges);
  if (it != ranges.end() && it->begin <= g) ++it;  // g is inside it: the run starts at its end
  return it == ranges.end() ? std::numeric_limits<int64_t>::max() : it->begin;
}

int64_t NthUnskipped(int64_t from, int64_t n, const std::vector<SampleRange>& ranges) {
  int64_t g = FirstUnskipped(from, ranges);
  // One hop per skipped range crossed, not per sample.
  while (true) {
    const int64_t run = UnskippedRunEnd(g, ranges) - g;
    if (n < run) return g + n;
    n -= run;
    g = FirstUnskipped(g + run, ranges);
  }
}

std::string FormatSampleRanges(const std::vector<SampleRange>& ranges) {
  if (ranges.empty()) return "none";
  return absl::StrJoin(ranges, ", ", [](std::string* out, const SampleRange& r) {
    absl::StrAppend(out, "[", r.begin, ", ", r.end, ")");
  });
}

nlohmann::json SampleRangesToJson(const std::vector<SampleRange>& ranges) {
  nlohmann::json j = nlohmann::json::array();
  for (const SampleRange& r : ranges) j.push_back({r.begin, r.end});
  return j;
}

absl::StatusOr<std::vector<SampleRange>> SampleRangesFromJson(const nlohmann::json& j) {
  if (!j.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"skipped\" must be an array of [begin, end] pairs, got ", JsonSnippet(j, 60)));
  }
  // A non-negative JSON integer that fits int64 (larger unsigned values would wrap).
  auto index = [](const nlohmann::json& v, int64_t* out) {
    if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return false;
      }
    } else if (!v.is_number_integer() || v.get<int64_t>() < 0) {
      return false;
    }
    *out = v.get<int64_t>();
    return true;
  };
  std::vector<SampleRange> ranges;
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::json& e = j[i];
    SampleRange r;
    if (!e.is_array() || e.size() != 2 || !index(e[0], &r.begin) || !index(e[1], &r.end) ||
        r.end <= r.begin) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"skipped\"[", i, "] must be [begin, end] with integers 0 <= begin < end, got ",
          JsonSnippet(e, 60)));
    }
    if (!ranges.empty() && r.begin <= ranges.back().end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"skipped\"[", i, "] = ", JsonSnippet(e, 60),
          " must start after the end of the range before it (", ranges.back().end,
          "): the ranges are stored sorted and merged"));
    }
    ranges.push_back(r);
  }
  return ranges;
}

}  // namespace lattice
