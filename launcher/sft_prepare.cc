#include "launcher/sft_prepare.h"

#include <cstdio>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/data/sft.h"
#include "runtime/status.h"

namespace lattice {

namespace {

absl::StatusOr<std::shared_ptr<const SampleSource>> OpenOne(const Config& cfg,
                                                            Communicator& world,
                                                            const std::string& jsonl,
                                                            const char* key, const char* name) {
  absl::Status prepared;
  if (world.rank() == 0) {
    absl::StatusOr<SftPrepareResult> r = PrepareSft(jsonl, cfg.data.tokenizer);
    prepared = r.status();
    if (r.ok()) {
      std::printf("lattice train: sft: %s %s for %s (%lld examples, %lld tokens)\n",
                  r->reused ? "reusing prepared" : "prepared", r->prepared_path.c_str(),
                  jsonl.c_str(), static_cast<long long>(r->examples),
                  static_cast<long long>(r->tokens));
      std::fflush(stdout);
    }
  }
  LATTICE_RETURN_IF_ERROR(Annotate(AgreeOnStatus(world, prepared), key));
  const std::string path = SftPreparedPath(jsonl);
  absl::StatusOr<SftExamples> examples = ReadSftPrepared(path, jsonl);
  if (!examples.ok()) return Annotate(examples.status(), key);
  SftSampleOptions o;
  o.seq_len = cfg.model.seq_len;
  o.seed = cfg.train.seed;
  o.pack = cfg.data.pack;
  o.vocab_size = cfg.model.vocab_size;
  o.name = name;
  absl::StatusOr<std::unique_ptr<SftSamples>> samples = SftSamples::Create(
      std::make_shared<const SftExamples>(*std::move(examples)), path, o);
  if (!samples.ok()) return Annotate(samples.status(), key);
  if (world.rank() == 0) {
    std::printf("lattice train: sft: %s: %lld rows of %lld positions (%s)\n", key,
                static_cast<long long>((*samples)->rows_per_epoch()),
                static_cast<long long>(cfg.model.seq_len),
                cfg.data.pack ? "packed, document-masked attention" : "one example per row");
  }
  return std::shared_ptr<const SampleSource>(*std::move(samples));
}

}  // namespace

absl::StatusOr<SftStreams> OpenSftStreams(const Config& cfg, Communicator& world) {
  if (cfg.data.train.empty()) {
    return absl::InvalidArgumentError("data.format=sft needs data.train (a JSONL file)");
  }
  SftStreams s;
  LATTICE_ASSIGN_OR_RETURN(s.train, OpenOne(cfg, world, cfg.data.train, "data.train", "train"));
  if (!cfg.data.val.empty()) {
    LATTICE_ASSIGN_OR_RETURN(s.val, OpenOne(cfg, world, cfg.data.val, "data.val", "val"));
  }
  return s;
}

}  // namespace lattice
