// The on-disk format of lattice checkpoints (docs/checkpoints.md has the user's view): files,
// the index that commits them, discovery of committed checkpoints, and the checked reading of
// boxes. What goes into a checkpoint and the commit protocol over ranks are
// parallel/checkpoint.h's.
//
//   <checkpoint.dir>/
//     step_00000010/                       one committed checkpoint (iteration 10)
//       shard_00000_of_00008.safetensors   what world rank 0 wrote
//       ...
//       index.json                         written last: its presence commits the directory
//     latest                               "step_00000010\n", updated after each commit
//     .tmp.step_00000012/                  a save in progress (or a failed one: ignored, and
//                                          removed at the next start)
//
// Every state tensor ("model/<param>", "optimizer/exp_avg/<param>",
// "optimizer/exp_avg_sq/<param>") is stored in GLOBAL coordinates: its unsharded shape, and a
// list of disjoint boxes (offset and shape per dim) that together cover every element once.
// Box k of a tensor lives in one shard file as a safetensors tensor named
// "<key>@<offset0>,<offset1>" whose shape is the box's, so the standard safetensors library
// opens every shard. The index records, per box, the file, the absolute byte offset of its first
// byte, its byte count and the CRC-32C of its bytes (runtime/io/crc32c.h).
#ifndef LATTICE_RUNTIME_IO_CHECKPOINT_FORMAT_H_
#define LATTICE_RUNTIME_IO_CHECKPOINT_FORMAT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/io/safetensors.h"
#include "runtime/tensor.h"

namespace lattice {

// Version of the index layout. A reader refuses other versions instead of misreading them.
inline constexpr int kCheckpointFormatVersion = 1;
inline constexpr char kCheckpointIndexFile[] = "index.json";
inline constexpr char kCheckpointLatestFile[] = "latest";
// Prefix of a checkpoint directory being written (and of what a failed save leaves).
inline constexpr char kCheckpointTempPrefix[] = ".tmp.";

// "step_00000010": the directory of the checkpoint taken after `iteration` iterations.
std::string CheckpointDirName(int64_t iteration);
// "shard_00003_of_00008.safetensors"
std::string ShardFileName(int rank, int world);

// A box of a global tensor: offset and shape in every dim (as many dims as the tensor).
struct Box {
  std::vector<int64_t> offset;
  std::vector<int64_t> shape;
  int64_t numel() const;
  // "[0:32, 64:128]" (half-open ranges per dim).
  std::string ToString() const;
  bool operator==(const Box&) const = default;
};

// The name of a box inside its shard file: "<key>@<offset0>,<offset1>,...". Boxes of a tensor
// are disjoint and non-empty, so their offsets (and names) differ.
std::string BoxTensorName(absl::string_view key, const Box& box);

struct StoredBox {
  Box box;
  int file = 0;              // index into CheckpointIndex::files
  std::string name;          // the safetensors tensor holding it (BoxTensorName)
  uint64_t byte_offset = 0;  // absolute offset of its first byte in the file
  uint64_t nbytes = 0;       // numel * 4 (F32)
  uint32_t crc32c = 0;       // of those bytes
};

struct CheckpointTensor {
  std::string dtype = "F32";  // every state tensor is fp32 today
  Shape shape;                // the global (unsharded, vocabulary unpadded) shape
  std::vector<StoredBox> boxes;
};

struct CheckpointFile {
  std::string name;  // inside the checkpoint directory
  uint64_t bytes = 0;
  int rank = 0;      // the world rank that wrote it
};

// The layout the checkpoint was written from (information: loading accepts any layout).
struct CheckpointLayout {
  int world = 1, tp = 1, dp = 1, pp = 1, vpp = 1;
  bool zero1 = false;
  bool sequence_parallel = false;
  std::string schedule = "1f1b";
  // "tp=2 dp=2 pp=2 vpp=1 zero1=on sp=off schedule=1f1b (8 ranks)"
  std::string ToString() const;
};

// The training state besides the tensors: what a save records and a resume restores.
struct CheckpointContents {
  int64_t iteration = 0;       // iterations taken (the learning-rate schedule's counter)
  int64_t optimizer_step = 0;  // AdamW updates applied (bias correction)
  int64_t skipped_iterations = 0;  // iterations without an update (non-finite loss or norm)
  int64_t nan_iterations = 0;      // of those, with a NaN/Inf loss or norm (all of them in fp32)
  uint64_t seed = 0;           // train.seed
  std::string data_state;      // DataLoaderState JSON (runtime/data/dataset.h); "" = none
  // The fp16 loss scaler's state JSON (parallel/loss_scaler.h StateJson); "" = none (fp32, bf16).
  std::string loss_scaler;
  std::string config_yaml;     // the run's whole config (runtime/config.h ToYaml)
  CheckpointLayout layout;
};

// index.json: the contents, the shard files and every tensor's boxes.
struct CheckpointIndex : CheckpointContents {
  int format_version = kCheckpointFormatVersion;
  std::vector<CheckpointFile> files;
  std::map<std::string, CheckpointTensor> tensors;  // by key

  std::string ToJson() const;
  // Parses and checks the structure (types, ranges); `path` prefixes every message.
  static absl::StatusOr<CheckpointIndex> FromJson(absl::string_view text, const std::string& path);
  // Total bytes of all boxes.
  uint64_t payload_bytes() const;
};

// Checks what the index promises before any data is read: every box lies inside its tensor, has
// the byte count its shape needs, names a listed file and a unique safetensors name; the boxes
// of every tensor are disjoint and cover each element exactly once; file names stay inside the
// directory. DataLoss naming `path` and the tensor.
absl::Status ValidateIndex(const CheckpointIndex& index, const std::string& path);

// Reads <dir>/index.json, parses and validates it. NotFound when there is no index (the
// directory is not a committed checkpoint), DataLoss for a truncated or malformed one.
absl::StatusOr<CheckpointIndex> ReadCheckpointIndex(const std::string& dir);

// ---- Discovery ------------------------------------------------------------------------------

struct CheckpointEntry {
  int64_t iteration = 0;
  std::string path;  // <root>/step_<iteration>
};
// The committed checkpoints under `root` (directories step_<digits> holding index.json),
// oldest first. A missing root is an empty list. Leftovers of failed saves are never listed.
absl::StatusOr<std::vector<CheckpointEntry>> ListCheckpoints(const std::string& root);
// True when `path` is a directory holding an index.json.
bool IsCheckpointDirectory(const std::string& path);
// `path` names a checkpoint directory, or a checkpoint root (its newest committed checkpoint is
// returned). NotFound naming the path otherwise.
absl::StatusOr<std::string> ResolveCheckpoint(const std::string& path);
// Removes what failed saves left in `root` (.tmp.* directories, temporaries of `latest`) and
// returns their names. Only call it when no save into `root` is running.
absl::StatusOr<std::vector<std::string>> RemoveCheckpointLeftovers(const std::string& root);

// ---- Shard files ----------------------------------------------------------------------------

// One tensor of a shard file to write: `nbytes` F32 bytes of shape `shape` at `data`.
struct ShardTensor {
  std::string name;
  Shape shape;
  const void* data = nullptr;
  uint64_t nbytes = 0;
};

// The safetensors header of a shard (u64 length + JSON padded to 8 bytes) and where every
// tensor's bytes will start in the file, computed before anything is written.
struct ShardPlan {
  std::string header;
  std::vector<uint64_t> offsets;  // absolute, per tensor
  uint64_t file_bytes = 0;
};
absl::StatusOr<ShardPlan> PlanShard(const std::vector<ShardTensor>& tensors,
                                    const std::map<std::string, std::string>& metadata);

// A host buffer aligned for direct I/O (OutputFile::kDirectAlignment), its pages touched at
// allocation so that later copies into it do not page-fault. Holds a shard's file image for
// an async save.
class AlignedHostBuffer {
 public:
  AlignedHostBuffer() = default;
  AlignedHostBuffer(AlignedHostBuffer&& o) noexcept
      : data_(std::move(o.data_)), size_(std::exchange(o.size_, 0)) {}
  AlignedHostBuffer& operator=(AlignedHostBuffer&& o) noexcept {
    data_ = std::move(o.data_);
    size_ = std::exchange(o.size_, 0);
    return *this;
  }
  // ResourceExhausted naming the size when the memory is not there.
  static absl::StatusOr<AlignedHostBuffer> Allocate(uint64_t bytes);
  uint8_t* data() const { return data_.get(); }
  uint64_t size() const { return size_; }

 private:
  struct Free {
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t, Free> data_;
  uint64_t size_ = 0;
};

// Fills `image` (at least plan.file_bytes) with the shard's file: the header, then each
// tensor's bytes at its offset; re-points the tensors at their bytes in the image.
void CopyShardImage(const ShardPlan& plan, std::vector<ShardTensor>* tensors, uint8_t* image);

struct ShardWriteOptions {
  // O_DIRECT writes (OutputFile::EnableDirectIO; buffered where the filesystem refuses it).
  bool direct_io = true;
  // Called after each piece of data with (bytes written, file bytes); the crash tests stop a
  // rank half-way through.
  std::function<void(uint64_t, uint64_t)> progress;
  // The shard's file image from CopyShardImage (its tensors pointing into it): written as it
  // is, without a staging copy. Null: the tensors are copied through two aligned 8 MiB staging
  // buffers, one filled (and CRC-checked) while the other is written.
  const uint8_t* image = nullptr;
};

// Writes a planned shard (runtime/io/output_file.h: temporary, fsync, rename) and returns the
// CRC-32C of every tensor's bytes.
absl::StatusOr<std::vector<uint32_t>> WriteShard(const std::string& path, const ShardPlan& plan,
                                                 const std::vector<ShardTensor>& tensors,
                                                 const ShardWriteOptions& options = {});

// ---- Reading --------------------------------------------------------------------------------

// Reads boxes of a committed checkpoint. Files are opened (and their size and safetensors
// header checked against the index) the first time one of their boxes is needed, so a rank
// touches only the files, and the bytes, of the boxes it reads.
class CheckpointReader {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(const std::string& dir);
  // Over an index already read (and validated) from `dir`.
  CheckpointReader(std::string dir, CheckpointIndex index);
  ~CheckpointReader();

  const std::string& dir() const { return dir_; }
  const CheckpointIndex& index() const { return index_; }

  // The F32 elements of box `i` of tensor `key` (row-major over the box), checked against its
  // CRC-32C the first time. Valid while the reader lives. DataLoss naming the file, the tensor
  // and the box.
  absl::StatusOr<const float*> Box(const std::string& key, size_t i);
  // Reads box `i` of tensor `key` into `dst` (its numel floats) with pread, checking the
  // CRC-32C of what was read: the fast path when a rank holds a stored box whole (a resume on
  // the layout that saved), one copy out of the page cache instead of page faults on a mapping.
  absl::Status Read(const std::string& key, size_t i, float* dst);
  // One box read whole into `dst` (its numel floats), for ReadRun.
  struct BoxRead {
    const std::string* key;
    size_t box;
    float* dst;
  };
  // The most bytes ReadRun reads with one request (a run of boxes spanning more is refused,
  // a single box larger than this is read in pieces of it).
  static constexpr uint64_t kRunBytes = 8 << 20;
  // Reads boxes of one file that lie in file order (each after the last) within kRunBytes of
  // the first, or one box of any size, with O_DIRECT requests of up to kRunBytes through an
  // aligned staging buffer (buffered where the filesystem refuses O_DIRECT or direct I/O is
  // off), copying each into its `dst` and checking its CRC-32C. For the boxes that only this
  // rank reads (most of the moments, at the layout that saved): no page cache to fill, and requests
  // as large as `dd bs=8M iflag=direct` makes. The bytes between the boxes are read and dropped.
  absl::Status ReadRun(absl::Span<const BoxRead> run);
  // Off: ReadRun reads through the page cache (checkpoint.direct_io). Set before the first
  // read: it also chooses the readahead advice of the files as they are opened.
  void set_direct_io(bool on) { direct_io_ = on; }
  bool direct_io() const { return direct_io_; }
  // Reads and checks every file and every box. The first error, or OK.
  absl::Status VerifyAll();
  // Files opened so far and box bytes read (CRC-checked) so far.
  int files_opened() const;
  uint64_t bytes_read() const { return bytes_read_; }
  // Of those, the bytes of the boxes read by ReadRun.
  uint64_t run_bytes_read() const { return run_bytes_read_; }

 private:
  absl::StatusOr<SafetensorsFile*> File(int f);

  std::string dir_;
  CheckpointIndex index_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<int> fds_;  // opened with files_, for Read
  // O_DIRECT descriptors for ReadRun: -1 not opened yet, -2 refused by the filesystem.
  std::vector<int> direct_fds_;
  AlignedHostBuffer staging_;  // ReadRun's, allocated at its first use
  bool direct_io_ = true;
  std::map<std::string, std::vector<bool>> verified_;
  uint64_t bytes_read_ = 0;
  uint64_t run_bytes_read_ = 0;
};

}  // namespace lattice

#endif  // LATTICE_RUNTIME_IO_CHECKPOINT_FORMAT_H_
