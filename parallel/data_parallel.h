// Data parallelism over the flat gradient buffer (model/parameters.h): gradient buckets laid
// out in backward order, a reducer that launches each bucket's reduction the moment the
// backward pass has finished it, and sums that every rank computes to the same bits.
//
// Bucket layout. Buckets are contiguous element ranges of the flat buffers, cut from the END of
// the buffer towards the start (the decoder finishes the last parameters first), each holding
// `elems_per_bucket` elements: about bucket_bytes / 4 rounded up to a multiple of dp. Only the
// last bucket (the one that starts at element 0, the embeddings) may be shorter, and it is the
// only one whose length may not divide by dp. Cuts fall wherever the size says, inside a
// parameter if need be: a bucket is ready when every element of it has been reported.
//
// Shards (ZeRO-1). Every bucket is split into dp equal chunks of `chunk` = ceil(len / dp)
// elements (the short last bucket is padded with zeros to dp * chunk); rank r owns chunk r of
// every bucket, and its shard is the concatenation of those chunks in bucket order. Since only
// one bucket needs padding, a shard holds exactly ceil(numel / dp) elements (padding included),
// which is what a rank's optimizer state costs.
#ifndef LATTICE_PARALLEL_DATA_PARALLEL_H_
#define LATTICE_PARALLEL_DATA_PARALLEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/optimizer.h"
#include "model/parameters.h"
#include "parallel/communicator.h"

namespace lattice {

// PyTorch DDP's default bucket_cap_mb (25 MiB).
inline constexpr int64_t kDefaultBucketBytes = 25 * 1024 * 1024;

struct GradBucket {
  int64_t begin = 0;         // flat element range [begin, end) of the parameter buffers
  int64_t end = 0;
  int64_t chunk = 0;         // elements per rank: ceil((end - begin) / dp)
  int64_t shard_offset = 0;  // where this bucket's chunk starts in every rank's shard
  int64_t numel() const { return end - begin; }
};

// A rank's chunk of one bucket in flat coordinates, padding excluded (possibly empty).
struct OwnedRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t shard_offset = 0;  // position of `begin` in the rank's shard
  int64_t numel() const { return end - begin; }
};

struct BucketLayout {
  int dp = 1;
  int64_t numel = 0;             // elements of the flat buffers
  int64_t elems_per_bucket = 0;  // every bucket's length except possibly the last one's
  int64_t shard_numel = 0;       // elements of one rank's shard: ceil(numel / dp)
  std::vector<GradBucket> buckets;  // backward order: [0] ends at numel, the last begins at 0

  // dp * chunk: what a collective over bucket i moves (>= its length only for a short bucket).
  int64_t padded(size_t i) const { return buckets[i].chunk * dp; }
  bool needs_padding(size_t i) const { return padded(i) != buckets[i].numel(); }
  OwnedRange Owned(size_t i, int rank) const;
};

// InvalidArgument when numel < 1, dp < 1 or bucket_bytes < 1 (the message names the value).
absl::StatusOr<BucketLayout> MakeBucketLayout(int64_t numel, int dp, int64_t bucket_bytes);

// One piece of a rank's shard that lies inside a single parameter: an optimizer segment whose
// state_offset is its position in the rank's shard (so AdamW keeps the shard's moments only),
// plus the parameter it belongs to.
struct ShardSegment : OptimizerSegment {
  size_t param = 0;  // index into ParameterSet::params()
};

// The segments of `rank`'s shard, in shard order. Their union is the rank's owned ranges.
std::vector<ShardSegment> ShardSegments(const ParameterSet& params, const BucketLayout& layout,
                                        int rank);

// Sum of squares (in double) of grads over the ranges `rank` owns. The ranks' values add up to
// the sum over the whole buffer, so the global norm costs one small exchange of partial sums
// instead of every rank reading every gradient.
double OwnedSumOfSquares(const float* grads, const BucketLayout& layout, int rank);

// Sums `values` element-wise over the ranks of `comm`, adding the ranks' contributions in rank
// order, so every rank gets the same bits (a floating-point MPI all-reduce need not give all
// ranks the same result, and a step-skip decision must agree everywhere). Costs one AllGather
// of values.size() * 8 bytes per rank.
absl::Status SumInRankOrder(Communicator& comm, absl::Span<double> values);
absl::Status SumInRankOrder(Communicator& comm, absl::Span<int64_t> values);

// How the buckets are reduced: plain data parallelism all-reduces them; the distributed
// optimizer (ZeRO-1) reduce-scatters them, each rank keeping the sum of its own chunk.
enum class GradReduction { kAllReduce, kReduceScatter };

// Launches the reductions of the buckets as the backward pass reports gradient ranges ready
// (Decoder::set_grad_ready_callback), then waits for them. Sums, never averages: the loss
// gradient already divides by the global token count.
//
// One reduction per step, on the last micro-batch of every rank (the earlier micro-batches
// only accumulate):
//   reducer.Begin(grads);
//   decoder.set_grad_ready_callback([&](int64_t b, int64_t e) { reducer.OnGradsReady(b, e); });
//   decoder.Backward(dloss);
//   decoder.set_grad_ready_callback(nullptr);
//   status = reducer.Finish();
// Every rank reports the same ranges in the same order (the backward pass is the same program
// everywhere), so the buckets are launched in the same order on every rank, as collectives
// must be. The decoder calls back from the thread that runs Backward, outside its parallel
// loops, which is the thread that owns the communicator (MPI is initialised FUNNELED).
//
// After Finish, kAllReduce leaves the global sum in the whole buffer; kReduceScatter leaves it
// in the ranges this rank owns (other elements hold this rank's local partial sums).
class GradReducer {
 public:
  struct Stats {
    int buckets = 0;
    int launched_during_backward = 0;  // launched from a ready callback
    // Launched from a callback other than the last one, i.e. with backward work still to do.
    int overlapped = 0;
    int launched_at_finish = 0;        // never reported complete (the decoder broke its promise)
  };

  // `staging` holds layout.padded(i) floats for the bucket that needs padding (only used when
  // kReduceScatter and that bucket exists); it must outlive the reducer.
  GradReducer(Communicator& comm, const BucketLayout& layout, GradReduction mode, float* staging);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Starts a reduction round over `grads` (layout.numel floats, alive until Finish returns).
  void Begin(float* grads);
  // The decoder's callback: [begin, end) of the flat buffer is complete.
  void OnGradsReady(int64_t begin, int64_t end);
  // Launches any bucket not reported complete, waits for all, and returns the first error
  // (a failed launch, a failed collective, or ranges reported twice).
  absl::Status Finish();
  const Stats& stats() const { return stats_; }

 private:
  void Launch(size_t i, bool from_callback);

  Communicator& comm_;
  const BucketLayout& layout_;
  GradReduction mode_;
  float* staging_;
  float* grads_ = nullptr;
  std::vector<int64_t> ready_;       // (buckets,) elements reported so far
  std::vector<int64_t> launched_by_; // (buckets,) callback number that launched it, -1 none
  std::vector<std::unique_ptr<Work>> works_;  // (buckets,)
  int64_t callbacks_ = 0;
  absl::Status error_;
  Stats stats_;
};

}  // namespace lattice

#endif  // LATTICE_PARALLEL_DATA_PARALLEL_H_
