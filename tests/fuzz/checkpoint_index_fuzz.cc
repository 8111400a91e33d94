// Fuzzes the checkpoint index reader and the checked reading of shards
// (runtime/io/checkpoint_format.h), the parsers a resume, `lattice ckpt verify` and
// train.init_weights run on files from outside.
//
// Input: the bytes of index.json, then optionally a NUL byte and the bytes of a shard file
// (JSON text holds no raw NUL, and a safetensors header starts with NUL-rich length bytes).
// They are written as <dir>/index.json and <dir>/shard_00000_of_00001.safetensors.
//
// Beyond "never crashes": whatever parses is consistent. Failures are DataLoss (a damaged or
// foreign file) or FailedPrecondition (another format_version), never anything else; an index
// that parses survives ToJson -> FromJson unchanged; its tensors are covered exactly once (an
// independent pairwise check, for small indexes); and reading the shard through the reader
// either fails with DataLoss naming the shard, or gives bytes whose CRC-32C is the index's,
// identical through Box() (mapped) and Read() (pread).
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "runtime/io/checkpoint_format.h"
#include "runtime/io/crc32c.h"

namespace lattice {
namespace {

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

// A directory of this process's own in a RAM-backed folder, removed at exit (the files are
// rewritten for every input; tests/fuzz/fuzz_file.h does the same for single files).
class FuzzDir {
 public:
  FuzzDir() {
    struct stat st;
    const char* tmp = std::getenv("TMPDIR");
    const std::string base = ::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode)
                                 ? "/dev/shm"
                                 : (tmp != nullptr ? tmp : "/tmp");
    path_ = base + "/lattice_fuzz_" + std::to_string(::getpid()) + "_checkpoint";
    if (::mkdir(path_.c_str(), 0700) != 0 && errno != EEXIST) {
      std::perror(path_.c_str());
      std::abort();
    }
  }
  ~FuzzDir() {
    ::unlink(Path(kCheckpointIndexFile).c_str());
    ::unlink(Path(ShardFileName(0, 1)).c_str());
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::string Path(const std::string& name) const { return path_ + "/" + name; }

  // Replaces the file's contents; nullptr removes it. Aborts on a failed write: that is the
  // harness, not lattice.
  void Write(const std::string& name, const uint8_t* data, size_t size) const {
    const std::string p = Path(name);
    if (data == nullptr) {
      ::unlink(p.c_str());
      return;
    }
    std::FILE* f = std::fopen(p.c_str(), "wb");
    if (f == nullptr || (size > 0 && std::fwrite(data, 1, size, f) != size) ||
        std::fclose(f) != 0) {
      std::abort();
    }
  }

 private:
  std::string path_;
};

bool Overlaps(const Box& a, const Box& b) {
  for (size_t d = 0; d < a.offset.size(); ++d) {
    if (a.offset[d] + a.shape[d] <= b.offset[d] || b.offset[d] + b.shape[d] <= a.offset[d]) {
      return false;
    }
  }
  return true;
}

// What a valid index promises, checked the slow and obvious way.
void CheckIndexInvariants(const CheckpointIndex& idx) {
  uint64_t payload = 0;
  for (const auto& [key, t] : idx.tensors) {
    Check(t.dtype == "F32" && !t.shape.empty());
    int64_t numel = 1;
    for (int64_t d : t.shape) Check(!__builtin_mul_overflow(numel, d, &numel));
    int64_t covered = 0;
    for (const StoredBox& b : t.boxes) {
      Check(b.box.offset.size() == t.shape.size() && b.box.shape.size() == t.shape.size());
      for (size_t d = 0; d < t.shape.size(); ++d) {
        Check(b.box.shape[d] >= 1 && b.box.offset[d] >= 0 &&
              b.box.offset[d] + b.box.shape[d] <= t.shape[d]);
      }
      Check(b.nbytes == static_cast<uint64_t>(b.box.numel()) * 4);
      Check(b.file >= 0 && static_cast<size_t>(b.file) < idx.files.size());
      Check(b.byte_offset + b.nbytes <= idx.files[b.file].bytes);
      covered += b.box.numel();
      payload += b.nbytes;
    }
    Check(covered == numel);
    // Pairwise, for indexes small enough (the fuzzer's inputs are a few KB: tens of boxes).
    if (t.boxes.size() <= 512) {
      for (size_t i = 0; i < t.boxes.size(); ++i) {
        for (size_t k = i + 1; k < t.boxes.size(); ++k) {
          Check(!Overlaps(t.boxes[i].box, t.boxes[k].box));
        }
      }
    }
  }
  Check(payload == idx.payload_bytes());
  for (const CheckpointFile& f : idx.files) {
    Check(!f.name.empty() && f.name.find('/') == std::string::npos && f.name != "." &&
          f.name != ".." && f.rank >= 0 && f.rank < idx.layout.world);
  }
  Check(idx.optimizer_step <= idx.iteration && idx.skipped_iterations <= idx.iteration);
}

// An error reading the shard is DataLoss (or NotFound for no such box, which never happens
// for the boxes the index lists) and names a file of the checkpoint.
void CheckReadError(const absl::Status& s, const FuzzDir& dir) {
  Check(s.code() == absl::StatusCode::kDataLoss);
  Check(absl::StrContains(s.message(), dir.path()));
  Check(s.message().size() < 4096);
}

}  // namespace
}  // namespace lattice

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lattice;
  static const FuzzDir dir;
  const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t index_size = nul != nullptr ? static_cast<size_t>(nul - data) : size;
  const absl::string_view text(reinterpret_cast<const char*>(data), index_size);
  dir.Write(kCheckpointIndexFile, data, index_size);
  dir.Write(ShardFileName(0, 1), nul != nullptr ? nul + 1 : nullptr,
            nul != nullptr ? size - index_size - 1 : 0);

  const std::string index_path = dir.Path(kCheckpointIndexFile);
  absl::StatusOr<CheckpointIndex> direct = CheckpointIndex::FromJson(text, index_path);
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(dir.path());
  Check(direct.ok() == reader.ok());
  if (!reader.ok()) {
    const absl::StatusCode code = reader.status().code();
    Check(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kFailedPrecondition);
    Check(absl::StrContains(reader.status().message(), index_path));
    Check(direct.status() == reader.status());
    return 0;
  }
  const CheckpointIndex& idx = (*reader)->index();
  CheckIndexInvariants(idx);
  Check(ValidateIndex(idx, index_path).ok());
  // What parses writes back as itself.
  const std::string json = idx.ToJson();
  Check(json == direct->ToJson());
  absl::StatusOr<CheckpointIndex> again = CheckpointIndex::FromJson(json, index_path);
  Check(again.ok() && again->ToJson() == json);

  // Every box through both read paths.
  const absl::Status all = (*reader)->VerifyAll();
  if (!all.ok()) CheckReadError(all, dir);
  for (const auto& [key, t] : idx.tensors) {
    for (size_t i = 0; i < t.boxes.size(); ++i) {
      absl::StatusOr<const float*> mapped = (*reader)->Box(key, i);
      Check(mapped.ok() || !all.ok());
      if (!mapped.ok()) {
        CheckReadError(mapped.status(), dir);
        continue;
      }
      // The box was found in a file of the size the index says, so its bytes are in the input.
      const StoredBox& b = t.boxes[i];
      Check(Crc32c(*mapped, b.nbytes) == b.crc32c);
      std::vector<float> copy(static_cast<size_t>(b.box.numel()));
      const absl::Status read = (*reader)->Read(key, i, copy.data());
      Check(read.ok() && std::memcmp(copy.data(), *mapped, b.nbytes) == 0);
    }
  }
  Check(!(*reader)->Box("no such tensor", 0).ok());
  Check((*reader)->files_opened() <= static_cast<int>(idx.files.size()));
  return 0;
}
