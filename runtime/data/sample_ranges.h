// Ranges of global sample indices the training loader never yields (runtime/data/dataset.h):
// the data windows a loss-spike rollback skipped (train.spike, docs/recovery.md).
//
// A skipped range [begin, end) is in global sample coordinates, the loader's own (the index g of
// dataset.h, before the blend, the shuffle and the data-parallel split), so it means the same
// samples under any data-parallel size or layout. The loader's position (consumed_samples)
// counts skipped samples too: it is the global index where the next micro-step starts, and a
// micro-step takes the next micro_batch * dp indices that are not skipped. Ranges are kept
// sorted, disjoint and merged (no two touch), the form DataLoaderState's JSON stores.
#ifndef LATTICE_RUNTIME_DATA_SAMPLE_RANGES_H_
#define LATTICE_RUNTIME_DATA_SAMPLE_RANGES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace lattice {

struct SampleRange {
  int64_t begin = 0;  // first skipped global index
  int64_t end = 0;    // one past the last

  bool operator==(const SampleRange&) const = default;
};

// Sorted, disjoint, with touching or overlapping ranges merged; empty ranges dropped.
std::vector<SampleRange> MergeSampleRanges(std::vector<SampleRange> ranges);

// The smallest global index >= `g` that no range (merged) holds.
int64_t FirstUnskipped(int64_t g, const std::vector<SampleRange>& ranges);
// The global index of the n-th (0-based) index >= `from` that is not skipped.
int64_t NthUnskipped(int64_t from, int64_t n, const std::vector<SampleRange>& ranges);
// Where the first skipped range after `g` begins (INT64_MAX when none does): indices
// [g, RunEnd(g)) are consecutive unskipped ones when g itself is unskipped.
int64_t UnskippedRunEnd(int64_t g, const std::vector<SampleRange>& ranges);

// "[240, 296), [400, 408)" ("none" when empty).
std::string FormatSampleRanges(const std::vector<SampleRange>& ranges);

// JSON [[begin, end], ...] as DataLoaderState stores them.
nlohmann::json SampleRangesToJson(const std::vector<SampleRange>& ranges);
// InvalidArgument naming the entry unless `j` is such an array of integers with
// 0 <= begin < end < 2^63, sorted and disjoint with gaps between them (the merged form).
absl::StatusOr<std::vector<SampleRange>> SampleRangesFromJson(const nlohmann::json& j);

}  // namespace lattice

#endif  // LATTICE_RUNTIME_DATA_SAMPLE_RANGES_H_
