#include "parallel/data_parallel.h"

#include <algorithm>
#include <array>
#include <bit>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "runtime/status.h"

namespace lattice {

// ---- Layout --------------------------------------------------------------------------------

OwnedRange BucketLayout::Owned(size_t i, int rank) const {
  const GradBucket& b = buckets[i];
  const int64_t start = b.begin + static_cast<int64_t>(rank) * b.chunk;
  OwnedRange r;
  r.begin = std::min(start, b.end);
  r.end = std::min(start + b.chunk, b.end);
  r.shard_offset = b.shard_offset;
  return r;
}

absl::StatusOr<BucketLayout> MakeBucketLayout(int64_t numel, int dp, int64_t bucket_bytes) {
  if (numel < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("data parallel: the parameter buffer has ", numel, " elements (need >= 1)"));
  }
  if (dp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("data parallel: dp=", dp, " must be >= 1"));
  }
  if (bucket_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("data parallel: bucket_bytes=", bucket_bytes, " must be >= 1"));
  }
  // fp32 elements, capped at the buffer (so rounding cannot overflow), then rounded up to a
  // multiple of dp so that every bucket but the last splits into dp chunks without padding.
  int64_t e = bucket_bytes / 4 + (bucket_bytes % 4 != 0 ? 1 : 0);
  e = std::min(e, numel);
  e = (e + dp - 1) / dp * dp;

  BucketLayout layout;
  layout.dp = dp;
  layout.numel = numel;
  layout.elems_per_bucket = e;
  int64_t shard = 0;
  for (int64_t end = numel; end > 0;) {
    GradBucket b;
    b.end = end;
    b.begin = std::max<int64_t>(0, end - e);
    b.chunk = (b.numel() + dp - 1) / dp;
    b.shard_offset = shard;
    shard += b.chunk;
    layout.buckets.push_back(b);
    end = b.begin;
  }
  layout.shard_numel = shard;
  LATTICE_CHECK_MSG(shard == (numel + dp - 1) / dp, "a shard must hold ceil(numel / dp) elements");
  return layout;
}

std::vector<ShardSegment> ShardSegments(const ParameterSet& params, const BucketLayout& layout,
                                        int rank) {
  const std::vector<Parameter>& ps = params.params();
  std::vector<ShardSegment> out;
  for (size_t i = 0; i < layout.buckets.size(); ++i) {
    const OwnedRange own = layout.Owned(i, rank);
    if (own.numel() <= 0) continue;
    // Parameters are declared in offset order: the first one ending after own.begin.
    auto it = std::upper_bound(ps.begin(), ps.end(), own.begin,
                               [](int64_t x, const Parameter& p) {
                                 return x < p.offset + NumElements(p.shape);
                               });
    for (; it != ps.end() && it->offset < own.end; ++it) {
      ShardSegment s;
      s.begin = std::max(own.begin, it->offset);
      s.end = std::min(own.end, it->offset + NumElements(it->shape));
      if (s.end <= s.begin) continue;  // an empty parameter
      s.state_offset = own.shard_offset + (s.begin - own.begin);
      s.param = static_cast<size_t>(it - ps.begin());
      s.weight_decay = it->weight_decay;
      out.push_back(s);
    }
  }
  return out;
}

double OwnedSumOfSquares(const float* grads, const BucketLayout& layout, int rank) {
  kernels::Backend& be = kernels::DefaultBackend();
  kernels::DeviceScalars acc = be.AllocateScalars(1);
  be.ZeroScalars(acc);
  for (size_t i = 0; i < layout.buckets.size(); ++i) {
    const OwnedRange own = layout.Owned(i, rank);
    if (own.numel() > 0) {
      be.AccumulateSumOfSquares(acc, 0, kernels::F32View(grads + own.begin, own.numel()));
    }
  }
  double sum = 0.0;
  be.ReadScalars(acc, &sum);
  return sum;
}

// ---- Rank-order sums -----------------------------------------------------------------------

namespace {

template <typename T>
absl::Status SumInRankOrderImpl(Communicator& comm, absl::Span<T> values) {
  const size_t bytes = values.size() * sizeof(T);
  const size_t p = static_cast<size_t>(comm.size());
  std::vector<uint8_t> all(bytes * p);  // (p, values.size()) as raw bytes
  LATTICE_RETURN_IF_ERROR(Annotate(
      comm.AllGather(values.data(), all.data(), bytes, CommType::kU8), "SumInRankOrder"));
  for (size_t k = 0; k < values.size(); ++k) {
    T sum = 0;
    for (size_t r = 0; r < p; ++r) {
      std::array<uint8_t, sizeof(T)> raw;
      std::copy_n(all.data() + r * bytes + k * sizeof(T), sizeof(T), raw.begin());
      sum += std::bit_cast<T>(raw);
    }
    values[k] = sum;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SumInRankOrder(Communicator& comm, absl::Span<double> values) {
  return SumInRankOrderImpl(comm, values);
}

absl::Status SumInRankOrder(Communicator& comm, absl::Span<int64_t> values) {
  return SumInRankOrderImpl(comm, values);
}

// ---- Reducer -------------------------------------------------------------------------------

GradReducer::GradReducer(Communicator& comm, const BucketLayout& layout, GradReduction mode,
                         float* staging)
    : comm_(comm), layout_(layout), mode_(mode), staging_(staging) {
  LATTICE_CHECK_MSG(comm.size() == layout.dp, "the bucket layout was made for another dp size");
  const size_t n = layout.buckets.size();
  ready_.assign(n, 0);
  launched_by_.assign(n, -1);
  works_.resize(n);
  stats_.buckets = static_cast<int>(n);
  if (mode == GradReduction::kReduceScatter) {
    for (size_t i = 0; i < n; ++i) {
      LATTICE_CHECK_MSG(!layout.needs_padding(i) || staging != nullptr,
                        "a padded bucket needs a staging buffer");
    }
  }
}

GradReducer::~GradReducer() {
  // A round abandoned half-way still must not free buffers under in-flight operations.
  (void)WaitAll(works_);
}

void GradReducer::Begin(float* grads) {
  LATTICE_CHECK_MSG(grads_ == nullptr, "GradReducer::Begin while a round is open (call Finish)");
  LATTICE_CHECK(grads != nullptr);
  grads_ = grads;
  std::fill(ready_.begin(), ready_.end(), 0);
  std::fill(launched_by_.begin(), launched_by_.end(), -1);
  callbacks_ = 0;
  error_ = absl::OkStatus();
  stats_ = Stats();
  stats_.buckets = static_cast<int>(layout_.buckets.size());
}

void GradReducer::OnGradsReady(int64_t begin, int64_t end) {
  ++callbacks_;
  if (grads_ == nullptr) {
    if (error_.ok()) error_ = absl::FailedPreconditionError("gradients reported outside a round");
    return;
  }
  if (begin < 0 || end > layout_.numel || begin >= end) {
    if (error_.ok()) {
      error_ = absl::InternalError(absl::StrCat("gradient range [", begin, ", ", end,
                                                ") reported ready is not inside [0, ",
                                                layout_.numel, ")"));
    }
    return;
  }
  // Buckets are cut from the end: bucket i covers [numel - (i+1) e, numel - i e).
  const int64_t e = layout_.elems_per_bucket;
  const size_t first = static_cast<size_t>((layout_.numel - end) / e);
  const size_t last = static_cast<size_t>((layout_.numel - begin - 1) / e);
  for (size_t i = first; i <= last; ++i) {
    const GradBucket& b = layout_.buckets[i];
    const int64_t overlap = std::min(end, b.end) - std::max(begin, b.begin);
    if (overlap <= 0) continue;
    ready_[i] += overlap;
    if (ready_[i] > b.numel() && error_.ok()) {
      error_ = absl::InternalError(absl::StrCat(
          "gradients of bucket ", i, " [", b.begin, ", ", b.end,
          ") were reported ready more than once (last range [", begin, ", ", end, "))"));
    }
  }
  // In bucket order, so that ranks launch in the same order whatever completes together.
  for (size_t i = first; i <= last; ++i) {
    if (launched_by_[i] < 0 && ready_[i] == layout_.buckets[i].numel()) Launch(i, true);
  }
}

void GradReducer::Launch(size_t i, bool from_callback) {
  const GradBucket& b = layout_.buckets[i];
  absl::StatusOr<std::unique_ptr<Work>> w;
  if (mode_ == GradReduction::kAllReduce) {
    w = comm_.IAllReduce(grads_ + b.begin, static_cast<size_t>(b.numel()), CommType::kF32,
                         ReduceOp::kSum);
  } else {
    float* send = grads_ + b.begin;
    if (layout_.needs_padding(i)) {
      kernels::Backend& be = kernels::DefaultBackend();
      be.Copy(kernels::F32View(staging_, b.numel()), kernels::F32View(send, b.numel()));
      be.Zero(kernels::F32View(staging_ + b.numel(), layout_.padded(i) - b.numel()));
      send = staging_;
    }
    w = comm_.IReduceScatter(send, send + static_cast<int64_t>(comm_.rank()) * b.chunk,
                             static_cast<size_t>(b.chunk), CommType::kF32, ReduceOp::kSum);
  }
  launched_by_[i] = from_callback ? callbacks_ : callbacks_ + 1;
  if (from_callback) {
    ++stats_.launched_during_backward;
  } else {
    ++stats_.launched_at_finish;
  }
  if (!w.ok()) {
    if (error_.ok()) error_ = Annotate(w.status(), absl::StrCat("gradient bucket ", i));
    return;
  }
  works_[i] = std::move(w).value();
}

absl::Status GradReducer::Finish() {
  LATTICE_CHECK_MSG(grads_ != nullptr, "GradReducer::Finish without Begin");
  for (size_t i = 0; i < layout_.buckets.size(); ++i) {
    if (launched_by_[i] < 0) Launch(i, false);
  }
  absl::Status waited = WaitAll(works_);
  for (auto& w : works_) w.reset();
  for (size_t i = 0; i < layout_.buckets.size(); ++i) {
    if (launched_by_[i] >= 1 && launched_by_[i] < callbacks_) ++stats_.overlapped;
  }
  if (waited.ok() && mode_ == GradReduction::kReduceScatter) {
    for (size_t i = 0; i < layout_.buckets.size(); ++i) {
      if (!layout_.needs_padding(i)) continue;
      const OwnedRange own = layout_.Owned(i, comm_.rank());
      if (own.numel() <= 0) continue;
      const GradBucket& b = layout_.buckets[i];
      kernels::DefaultBackend().Copy(
          kernels::F32View(grads_ + own.begin, own.numel()),
          kernels::F32View(static_cast<const float*>(staging_) + (own.begin - b.begin),
                           own.numel()));
    }
  }
  grads_ = nullptr;
  if (!error_.ok()) return error_;
  return waited;
}

}  // namespace lattice
