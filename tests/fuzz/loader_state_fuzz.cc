// Fuzzes the checkpointed data-loader state (DataLoaderState::FromJson, runtime/data/dataset.h).
// What parses must round-trip through ToJson() to the same state, skipped sample ranges included.
#include <cstdint>

#include "absl/strings/string_view.h"
#include "runtime/data/dataset.h"
#include "tests/fuzz/fuzz_file.h"

using lattice::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lattice;
  const absl::string_view json(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<DataLoaderState> state = DataLoaderState::FromJson(json);
  if (!state.ok()) {
    Check(state.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  absl::StatusOr<DataLoaderState> back = DataLoaderState::FromJson(state->ToJson());
  Check(back.ok());
  Check(back->consumed_samples == state->consumed_samples && back->seed == state->seed &&
        back->seq_len == state->seq_len && back->sources.size() == state->sources.size());
  // Skipped ranges (loss-spike rollbacks) come back as they were, and are in the merged form
  // the loader keeps (sorted, disjoint, not touching, non-empty).
  Check(back->skipped == state->skipped);
  Check(MergeSampleRanges(state->skipped) == state->skipped);
  for (const SampleRange& r : state->skipped) Check(0 <= r.begin && r.begin < r.end);
  for (size_t i = 0; i < state->sources.size(); ++i) {
    Check(back->sources[i].path == state->sources[i].path &&
          back->sources[i].num_tokens == state->sources[i].num_tokens &&
          back->sources[i].weight == state->sources[i].weight);
  }
  return 0;
}
