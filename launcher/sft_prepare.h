// The trainer's side of instruction fine-tuning data (data.format: sft, runtime/data/sft.h):
// rank 0 prepares (or reuses) the prepared file of each JSONL, every rank learns the outcome,
// then every rank reads it and builds its rows.
#ifndef LATTICE_LAUNCHER_SFT_PREPARE_H_
#define LATTICE_LAUNCHER_SFT_PREPARE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "runtime/config.h"
#include "runtime/data/dataset.h"

namespace lattice {

struct SftStreams {
  std::shared_ptr<const SampleSource> train;
  std::shared_ptr<const SampleSource> val;  // null without data.val
};

// Collective over `world`. Logs (rank 0) for each file whether the prepared file was reused
// ("reusing prepared ...") or written ("prepared ..."). Errors name the key and the file.
absl::StatusOr<SftStreams> OpenSftStreams(const Config& cfg, Communicator& world);

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_SFT_PREPARE_H_
