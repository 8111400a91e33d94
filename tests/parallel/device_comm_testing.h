// The checks every communicator on device buffers passes (device_communicator.h), shared by
// nccl_communicator_mpi_test.cc and staged_device_communicator_mpi_test.cc: each defines its
// main() to name its factory (DeviceCommEnv) and adds its own tests. Every operation is
// compared with the host communicator (MPI under mpirun, Self otherwise) on the same inputs;
// outputs are poisoned first (0xFF bytes: NaN for the float types), so an element an operation
// fails to write fails the comparison.
//
// Without a GPU (this machine, CI) every test skips with the reason, decided by all ranks
// together so that no rank waits in a collective for one that skipped. Compiled only with CUDA;
// the including files skip their single placeholder test otherwise.
#ifndef LATTICE_TESTS_PARALLEL_DEVICE_COMM_TESTING_H_
#define LATTICE_TESTS_PARALLEL_DEVICE_COMM_TESTING_H_

#ifdef LATTICE_HAVE_CUDA

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "kernels/cuda/cuda_backend.h"
#include "parallel/communicator.h"
#include "parallel/device_communicator.h"
#include "runtime/dtype.h"
#include "runtime/tensor.h"
#include "tests/parallel/mpi_harness.h"

namespace lattice::testing {

// ---- Device memory for the tests ----

// cudaMalloc'd memory with synchronous host copies. The copies run on the legacy default stream
// and synchronise the device afterwards: the communicators' streams are non-blocking with
// respect to that stream, so without it a communicator could read a buffer before the upload
// landed.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) {
      EXPECT_EQ(cudaMalloc(&ptr_, bytes), cudaSuccess) << "cudaMalloc(" << bytes << ")";
    }
    Poison();
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  DeviceBuffer(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <typename T>
  T* as(size_t offset = 0) const {
    return static_cast<T*>(ptr_) + offset;
  }
  size_t bytes() const { return bytes_; }

  // 0xFF in every byte: NaN for f32, bf16 and f16, all ones for the integers.
  void Poison() {
    if (ptr_ == nullptr) return;
    EXPECT_EQ(cudaMemset(ptr_, 0xFF, bytes_), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  template <typename T>
  void Upload(const std::vector<T>& v, size_t offset = 0) {
    if (v.empty()) return;
    EXPECT_EQ(cudaMemcpy(as<T>(offset), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  template <typename T>
  std::vector<T> Download(size_t n, size_t offset = 0) const {
    std::vector<T> v(n);
    if (n > 0) {
      EXPECT_EQ(cudaMemcpy(v.data(), as<T>(offset), n * sizeof(T), cudaMemcpyDeviceToHost),
                cudaSuccess);
    }
    return v;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
DeviceBuffer ToDevice(const std::vector<T>& v) {
  DeviceBuffer b(v.size() * sizeof(T));
  b.Upload(v);
  return b;
}

// A device tensor (for the Tensor overloads' checks).
class DeviceStorage final : public Storage {
 public:
  DeviceStorage(size_t bytes, int device) : buf_(bytes), device_(device) {}
  void* data() override { return buf_.get(); }
  size_t bytes() const override { return buf_.bytes(); }
  Device device() const override { return Device{DeviceType::kCuda, device_}; }

 private:
  DeviceBuffer buf_;
  int device_;
};

inline Tensor DeviceTensor(Shape shape, DType dtype, int device) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  auto storage = std::make_shared<DeviceStorage>(static_cast<size_t>(n) * DTypeSize(dtype), device);
  return Tensor(std::move(storage), 0, std::move(shape), dtype);
}

// ---- Tolerances of reductions in a narrow float type ----

// The unit roundoff u of a float type (round to nearest: half an ulp of 1), the most one
// rounding loses relative to the value: 2^-24 for f32 (24 significant bits), 2^-8 for bf16 (8),
// 2^-11 for f16 (11).
inline double UnitRoundoff(CommType t) {
  switch (t) {
    case CommType::kBF16: return std::ldexp(1.0, -8);
    case CommType::kF16: return std::ldexp(1.0, -11);
    default: return std::ldexp(1.0, -24);
  }
}

// |reduced - exact| for one element summed over p ranks, where `abs_sum` = sum over ranks of
// |x_r|. NCCL adds in the buffer's type and rounds every partial sum it stores (a ring passes
// p-1 of them along; a tree adds pairs, fewer): at most p-1 roundings of at most u times a
// partial sum, itself at most abs_sum. One more u covers the reduced value's own rounding when
// the exact sum is not representable: p u abs_sum.
inline double SumTolerance(CommType t, int p, double abs_sum) {
  return p * UnitRoundoff(t) * abs_sum + 1e-30;
}
// The average: the sum's error divided by p, plus the division (or NCCL's pre-multiplication of
// every term by a rounded 1/p: one rounding for 1/p and one per product, each at most u times a
// term): (2p + 1) u abs_sum / p.
inline double AverageTolerance(CommType t, int p, double abs_sum) {
  return (2.0 * p + 1.0) * UnitRoundoff(t) * abs_sum / p + 1e-30;
}

inline uint16_t ToNarrow(CommType t, float f) {
  return t == CommType::kBF16 ? FloatToBf16(f) : FloatToF16(f);
}
inline float FromNarrow(CommType t, uint16_t h) {
  return t == CommType::kBF16 ? Bf16ToFloat(h) : F16ToFloat(h);
}

// ---- What each test binary provides ----

using DeviceCommFactory = std::function<absl::StatusOr<std::unique_ptr<DeviceCommunicator>>(
    Communicator& host, const DeviceCommOptions& options)>;

struct DeviceCommEnv {
  DeviceCommFactory create;
  // NCCL refuses two ranks of one communicator on one device: the tests need a device per rank
  // of each node. The staged communicator shares one.
  bool one_device_per_rank = false;
  // Why this build cannot create the communicator at all ("" when it can).
  std::string unavailable;
};
inline DeviceCommEnv& Env() {
  static DeviceCommEnv env;
  return env;
}

struct GpuWorld {
  std::string skip;  // why every rank skips ("" when they all run)
  int device = -1;   // this rank's device: its rank on the node modulo the devices
};

// Decided once, by every rank together (the first test's SetUp), so that no rank skips a test
// the others run: the lowest rank that cannot run says why, for all.
inline const GpuWorld& TheGpuWorld() {
  static const GpuWorld* world = [] {
    auto* g = new GpuWorld();
    std::string why;
    const int devices = kernels::cuda::DeviceCount(&why);
    absl::StatusOr<std::unique_ptr<Communicator>> node = World().SplitByNode();
    LATTICE_CHECK(node.ok());
    absl::Status local;
    if (devices == 0) {
      local = absl::FailedPreconditionError(absl::StrCat("skipped: no CUDA device (", why, ")"));
    } else if (!Env().unavailable.empty()) {
      local = absl::FailedPreconditionError(absl::StrCat("skipped: ", Env().unavailable));
    } else if (Env().one_device_per_rank && (*node)->size() > devices) {
      local = absl::FailedPreconditionError(absl::StrCat(
          "skipped: ", (*node)->size(), " ranks on this node share ", devices,
          " GPU(s), and NCCL refuses two ranks of one communicator on one device (the staged "
          "communicator's test runs several ranks on one GPU)"));
    }
    g->device = devices > 0 ? (*node)->rank() % devices : -1;
    // This rank's own reason as it is; another rank's prefixed with its rank.
    absl::Status agreed = AgreeOnStatus(World(), local);
    if (!agreed.ok()) g->skip = std::string(local.ok() ? agreed.message() : local.message());
    return g;
  }();
  return *world;
}

class DeviceCommTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const GpuWorld& gpu = TheGpuWorld();
    if (!gpu.skip.empty()) GTEST_SKIP() << gpu.skip;
    device_ = gpu.device;
    ASSERT_EQ(cudaSetDevice(device_), cudaSuccess);
    host_ = FreshWorld();
    DeviceCommOptions options;
    options.device = device_;
    absl::StatusOr<std::unique_ptr<DeviceCommunicator>> c = Env().create(World(), options);
    ASSERT_TRUE(c.ok()) << c.status();  // every rank fails together (the factories agree)
    comm_ = std::move(c).value();
  }
  void TearDown() override {
    comm_.reset();
    host_.reset();
  }

  DeviceCommunicator& comm() { return *comm_; }
  Communicator& host() { return *host_; }
  int rank() const { return host_->rank(); }
  int size() const { return host_->size(); }
  int device() const { return device_; }

  // Values exact in f32 and in every partial sum of up to 64 ranks: multiples of 1/4 below 2^16.
  static float Value(int r, int k) { return static_cast<float>((r * 37 + k * 11) % 401 - 200) * 0.25f; }

  std::unique_ptr<DeviceCommunicator> comm_;
  std::unique_ptr<Communicator> host_;
  int device_ = -1;
};

using ::testing::HasSubstr;

// ---- The shared checks ----

TEST_F(DeviceCommTest, DescribesItself) {
  EXPECT_EQ(comm().rank(), rank());
  EXPECT_EQ(comm().size(), size());
  EXPECT_EQ(comm().buffer_device(), DeviceType::kCuda);
  EXPECT_EQ(comm().device(), device());
  EXPECT_NE(comm().stream(), nullptr);
  EXPECT_EQ(comm().name(), World().name());
  EXPECT_EQ(comm().timeout(), World().timeout());
  EXPECT_EQ(AsDeviceCommunicator(&comm()), &comm());
  EXPECT_EQ(AsDeviceCommunicator(&host()), nullptr);
  EXPECT_EQ(comm().counters(), CommCounters());  // the bootstrap counted nothing here
}

TEST_F(DeviceCommTest, AllReduceEveryOpAndType) {
  const int n = 1000 + 3;  // odd, and more than one NCCL chunk of small sizes
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
    SCOPED_TRACE(ReduceOpName(op));
    std::vector<float> x(n);
    for (int k = 0; k < n; ++k) x[k] = Value(rank(), k);
    DeviceBuffer d = ToDevice(x);
    EXPECT_TRUE(comm().AllReduce(d.get(), n, CommType::kF32, op).ok());
    std::vector<float> want = x;
    EXPECT_TRUE(host().AllReduce(absl::MakeSpan(want), op).ok());
    const std::vector<float> got = d.Download<float>(n);
    int bad = 0;
    for (int k = 0; k < n; ++k) {
      // Sums of these values are exact in any order; the average rounds (|Value| <= 50).
      const double tol =
          op == ReduceOp::kAvg ? AverageTolerance(CommType::kF32, size(), size() * 50.0) : 0.0;
      if (!(std::fabs(static_cast<double>(got[k]) - want[k]) <= tol)) ++bad;
    }
    EXPECT_EQ(bad, 0) << "first: got " << got[0] << " want " << want[0];
  }
  // Integers.
  std::vector<int32_t> i(n);
  std::vector<uint32_t> u(n);
  std::vector<uint8_t> b(n);
  for (int k = 0; k < n; ++k) {
    i[k] = (rank() - 2) * 1000 - k;
    u[k] = 3000000000u + static_cast<uint32_t>(rank() * 7 + k % 5);
    b[k] = static_cast<uint8_t>(rank() + 1 + k % 3);
  }
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
    SCOPED_TRACE(ReduceOpName(op));
    DeviceBuffer di = ToDevice(i), du = ToDevice(u), db = ToDevice(b);
    EXPECT_TRUE(comm().AllReduce(di.get(), n, CommType::kI32, op).ok());
    EXPECT_TRUE(comm().AllReduce(du.get(), n, CommType::kU32, op).ok());
    EXPECT_TRUE(comm().AllReduce(db.get(), n, CommType::kU8, op).ok());
    std::vector<int32_t> wi = i;
    std::vector<uint32_t> wu = u;
    std::vector<uint8_t> wb = b;
    EXPECT_TRUE(host().AllReduce(absl::MakeSpan(wi), op).ok());
    EXPECT_TRUE(host().AllReduce(absl::MakeSpan(wu), op).ok());
    EXPECT_TRUE(host().AllReduce(absl::MakeSpan(wb), op).ok());
    EXPECT_EQ(di.Download<int32_t>(n), wi);
    EXPECT_EQ(du.Download<uint32_t>(n), wu);
    EXPECT_EQ(db.Download<uint8_t>(n), wb);
  }
  // An empty buffer is a no-op on every rank, but counted.
  EXPECT_TRUE(comm().AllReduce(nullptr, 0, CommType::kF32, ReduceOp::kSum).ok());
}

TEST_F(DeviceCommTest, ReduceScatterOutOfPlaceAndIntoTheOwnChunk) {
  const int p = size(), r = rank();
  const int c = 257;
  std::vector<float> send(static_cast<size_t>(p * c));
  for (int j = 0; j < p * c; ++j) send[j] = Value(r, j);
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
    SCOPED_TRACE(ReduceOpName(op));
    std::vector<float> want(c);
    EXPECT_TRUE(host().ReduceScatter(absl::MakeConstSpan(send), absl::MakeSpan(want), op).ok());
    const double tol =
        op == ReduceOp::kAvg ? AverageTolerance(CommType::kF32, p, p * 50.0) : 0.0;
    DeviceBuffer ds = ToDevice(send), dr(c * 4);
    EXPECT_TRUE(comm().ReduceScatter(ds.get(), dr.get(), c, CommType::kF32, op).ok());
    const std::vector<float> got = dr.Download<float>(c);
    // In place: the result lands in this rank's chunk, the other chunks stay as they were.
    DeviceBuffer inplace = ToDevice(send);
    EXPECT_TRUE(comm().ReduceScatter(inplace.get(), inplace.as<float>(static_cast<size_t>(r) * c),
                                     c, CommType::kF32, op).ok());
    const std::vector<float> full = inplace.Download<float>(static_cast<size_t>(p * c));
    int bad = 0;
    for (int k = 0; k < c; ++k) {
      if (!(std::fabs(got[k] - want[k]) <= tol)) ++bad;
      if (!(std::fabs(full[r * c + k] - want[k]) <= tol)) ++bad;
    }
    for (int j = 0; j < p * c; ++j) {
      if (j / c != r && full[j] != send[j]) ++bad;
    }
    EXPECT_EQ(bad, 0);
  }
  // A non-blocking integer one.
  std::vector<int32_t> isend(static_cast<size_t>(p * c));
  for (int j = 0; j < p * c; ++j) isend[j] = r * 10 + j;
  std::vector<int32_t> iwant(c);
  EXPECT_TRUE(host().ReduceScatter(absl::MakeConstSpan(isend), absl::MakeSpan(iwant), ReduceOp::kSum).ok());
  DeviceBuffer dis = ToDevice(isend), dir(c * 4);
  absl::StatusOr<std::unique_ptr<Work>> w =
      comm().IReduceScatter(dis.get(), dir.get(), c, CommType::kI32, ReduceOp::kSum);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE((*w)->Wait().ok());
  EXPECT_EQ(dir.Download<int32_t>(c), iwant);
}

TEST_F(DeviceCommTest, AllGatherOutOfPlaceInPlaceAndSixteenBitTypes) {
  const int p = size(), r = rank();
  const int c = 129;
  std::vector<float> send(c);
  for (int k = 0; k < c; ++k) send[k] = Value(r, k);
  std::vector<float> want(static_cast<size_t>(p * c));
  EXPECT_TRUE(host().AllGather(absl::MakeConstSpan(send), absl::MakeSpan(want)).ok());
  DeviceBuffer ds = ToDevice(send), dr(static_cast<size_t>(p * c) * 4);
  EXPECT_TRUE(comm().AllGather(ds.get(), dr.get(), c, CommType::kF32).ok());
  EXPECT_EQ(dr.Download<float>(static_cast<size_t>(p * c)), want);
  // In place: this rank's shard already at its place.
  DeviceBuffer full(static_cast<size_t>(p * c) * 4);
  full.Upload(send, static_cast<size_t>(r) * c);
  EXPECT_TRUE(comm().AllGather(full.as<float>(static_cast<size_t>(r) * c), full.get(), c,
                               CommType::kF32).ok());
  EXPECT_EQ(full.Download<float>(static_cast<size_t>(p * c)), want);
  // 16-bit types are moved bit for bit (u16 travels as bytes on NCCL; bf16 as itself).
  for (CommType t : {CommType::kU16, CommType::kBF16, CommType::kF16}) {
    SCOPED_TRACE(CommTypeName(t));
    std::vector<uint16_t> s16(c);
    for (int k = 0; k < c; ++k) s16[k] = static_cast<uint16_t>(0x3c00 + r * 256 + k);
    std::vector<uint16_t> w16(static_cast<size_t>(p * c));
    EXPECT_TRUE(host().AllGather(s16.data(), w16.data(), c, t).ok());
    DeviceBuffer d16 = ToDevice(s16), o16(static_cast<size_t>(p * c) * 2);
    EXPECT_TRUE(comm().AllGather(d16.get(), o16.get(), c, t).ok());
    EXPECT_EQ(o16.Download<uint16_t>(static_cast<size_t>(p * c)), w16);
  }
}

TEST_F(DeviceCommTest, BroadcastFromEveryRoot) {
  for (int root = 0; root < size(); ++root) {
    SCOPED_TRACE(root);
    std::vector<float> v(333, -1.f);
    if (rank() == root) std::iota(v.begin(), v.end(), static_cast<float>(root * 1000));
    DeviceBuffer d = ToDevice(v);
    std::vector<float> want = v;
    EXPECT_TRUE(host().Broadcast(absl::MakeSpan(want), root).ok());
    EXPECT_TRUE(comm().Broadcast(d.get(), v.size(), CommType::kF32, root).ok());
    EXPECT_EQ(d.Download<float>(v.size()), want);
    std::vector<uint16_t> h(17, rank() == root ? static_cast<uint16_t>(0x4000 + root) : 0);
    DeviceBuffer dh = ToDevice(h);
    absl::StatusOr<std::unique_ptr<Work>> w = comm().IBroadcast(dh.get(), 17, CommType::kBF16, root);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_TRUE((*w)->Wait().ok());
    EXPECT_EQ(dh.Download<uint16_t>(17), std::vector<uint16_t>(17, static_cast<uint16_t>(0x4000 + root)));
  }
}

// A ring exchange in one batch (Megatron's batch_isend_irecv): every rank sends to the next and
// receives from the previous at once, which for NCCL is the deadlock-free form (two messages to
// the same peer, of two types, in one batch; with one rank, a send to itself).
TEST_F(DeviceCommTest, BatchSendRecvRing) {
  const int p = size(), r = rank();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  std::vector<float> out(4099);
  for (size_t k = 0; k < out.size(); ++k) out[k] = Value(r, static_cast<int>(k));
  std::vector<int32_t> ids = {r, r * r, 42};
  DeviceBuffer dout = ToDevice(out), din(out.size() * 4), dids = ToDevice(ids), dids_in(12);
  const std::vector<PeerOp> ops = {
      PeerOp::Send(dout.get(), out.size(), CommType::kF32, next, 0),
      PeerOp::Recv(din.get(), out.size(), CommType::kF32, prev, 0),
      PeerOp::Send(dids.get(), 3, CommType::kI32, next, 1),
      PeerOp::Recv(dids_in.get(), 3, CommType::kI32, prev, 1),
  };
  absl::StatusOr<std::unique_ptr<Work>> w = comm().IBatchSendRecv(ops);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE((*w)->Wait().ok());
  // The host communicator's ring gives the reference.
  std::vector<float> want(out.size());
  std::vector<int32_t> want_ids(3);
  EXPECT_TRUE(host().BatchSendRecv({PeerOp::Send(absl::MakeConstSpan(out), next, 0),
                                    PeerOp::Recv(absl::MakeSpan(want), prev, 0),
                                    PeerOp::Send(absl::MakeConstSpan(ids), next, 1),
                                    PeerOp::Recv(absl::MakeSpan(want_ids), prev, 1)}).ok());
  EXPECT_EQ(din.Download<float>(out.size()), want);
  EXPECT_EQ(dids_in.Download<int32_t>(3), want_ids);
  EXPECT_EQ(comm().counters().send, (OpCounter{2, static_cast<int64_t>(out.size()) * 4 + 12}));
  EXPECT_EQ(comm().counters().recv, comm().counters().send);

  // A pipeline step: activations forward, gradients back, one batch per stage; then blocking
  // pairs along the chain (a receive posted by the peer's blocking call, so no deadlock).
  if (p >= 2) {
    DeviceBuffer act = ToDevice(std::vector<uint8_t>(64, static_cast<uint8_t>(r)));
    DeviceBuffer grad = ToDevice(std::vector<uint8_t>(64, static_cast<uint8_t>(100 + r)));
    DeviceBuffer act_in(64), grad_in(64);
    std::vector<PeerOp> step;
    if (r + 1 < p) {
      step.push_back(PeerOp::Send(act.get(), 64, CommType::kU8, r + 1, 5));
      step.push_back(PeerOp::Recv(grad_in.get(), 64, CommType::kU8, r + 1, 6));
    }
    if (r > 0) {
      step.push_back(PeerOp::Recv(act_in.get(), 64, CommType::kU8, r - 1, 5));
      step.push_back(PeerOp::Send(grad.get(), 64, CommType::kU8, r - 1, 6));
    }
    EXPECT_TRUE(comm().BatchSendRecv(step).ok());
    if (r + 1 < p) {
      EXPECT_EQ(grad_in.Download<uint8_t>(64), std::vector<uint8_t>(64, static_cast<uint8_t>(101 + r)));
    }
    if (r > 0) {
      EXPECT_EQ(act_in.Download<uint8_t>(64), std::vector<uint8_t>(64, static_cast<uint8_t>(r - 1)));
    }
    act_in.Poison();
    if (r % 2 == 0 && r + 1 < p) {
      EXPECT_TRUE(comm().Send(act.get(), 64, CommType::kU8, r + 1, 7).ok());
    }
    if (r % 2 == 1) {
      EXPECT_TRUE(comm().Recv(act_in.get(), 64, CommType::kU8, r - 1, 7).ok());
      EXPECT_EQ(act_in.Download<uint8_t>(64), std::vector<uint8_t>(64, static_cast<uint8_t>(r - 1)));
    }
  }
}

// The data-parallel pattern: buckets in flight at once, waited in issue order; and a Work handed
// to a compute stream, which reads the result without the host waiting.
TEST_F(DeviceCommTest, NonBlockingBucketsAndStreamWaits) {
  const int p = size();
  std::vector<DeviceBuffer> buckets;
  std::vector<std::vector<float>> want;
  std::vector<std::unique_ptr<Work>> works;
  for (int b = 0; b < 4; ++b) {
    std::vector<float> x(1000 + 500 * b);
    for (size_t k = 0; k < x.size(); ++k) x[k] = Value(rank() + b, static_cast<int>(k));
    buckets.push_back(ToDevice(x));
    want.push_back(x);
    EXPECT_TRUE(host().AllReduce(absl::MakeSpan(want.back()), ReduceOp::kSum).ok());
  }
  for (int b = 0; b < 4; ++b) {
    absl::StatusOr<std::unique_ptr<Work>> w =
        comm().IAllReduce(buckets[b].get(), want[b].size(), CommType::kF32, ReduceOp::kSum);
    ASSERT_TRUE(w.ok()) << w.status();
    works.push_back(std::move(w).value());
  }
  EXPECT_TRUE(WaitAll(works).ok());
  for (int b = 0; b < 4; ++b) EXPECT_EQ(buckets[b].Download<float>(want[b].size()), want[b]) << b;

  cudaStream_t compute = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), cudaSuccess);
  std::vector<float> x(2048, 1.5f);
  DeviceBuffer d = ToDevice(x);
  absl::StatusOr<std::unique_ptr<Work>> w = comm().IAllReduce(d.get(), x.size(), CommType::kF32, ReduceOp::kSum);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE((*w)->WaitOnStream(compute).ok());
  // Pinned, so the copy is ordered on `compute` after the all-reduce, not on the host.
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), x.size() * 4), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(pinned, d.get(), x.size() * 4, cudaMemcpyDeviceToHost, compute), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(compute), cudaSuccess);
  int bad = 0;
  for (size_t k = 0; k < x.size(); ++k) bad += pinned[k] == 1.5f * p ? 0 : 1;
  EXPECT_EQ(bad, 0);
  EXPECT_TRUE((*w)->Wait().ok());  // still allowed, and complete
  cudaFreeHost(pinned);

  // The other direction: the compute stream writes the buffer, the communicator waits for it.
  DeviceBuffer bytes(4096);
  EXPECT_EQ(cudaMemsetAsync(bytes.get(), 3, 4096, compute), cudaSuccess);
  EXPECT_TRUE(comm().WaitForStream(compute).ok());
  EXPECT_TRUE(comm().AllReduce(bytes.get(), 4096, CommType::kU8, ReduceOp::kSum).ok());
  EXPECT_EQ(bytes.Download<uint8_t>(4096), std::vector<uint8_t>(4096, static_cast<uint8_t>(3 * p)));
  EXPECT_EQ(cudaStreamDestroy(compute), cudaSuccess);
}

// The byte counters follow communicator.h's convention: the same calls on the host communicator
// count the same, and the numbers are the formulas'.
TEST_F(DeviceCommTest, CountersMatchTheHostCommunicator) {
  const int p = size();
  DeviceBuffer a(4000), g(static_cast<size_t>(p) * 400), s(static_cast<size_t>(p) * 400), m(64);
  std::vector<uint8_t> ha(4000), hg(static_cast<size_t>(p) * 400), hs(static_cast<size_t>(p) * 400), hm(64);
  const int next = (rank() + 1) % p, prev = (rank() + p - 1) % p;
  auto run = [&](Communicator& c, void* pa, void* pg, void* ps, void* pm, void* pm_in) {
    EXPECT_TRUE(c.AllReduce(pa, 1000, CommType::kF32, ReduceOp::kSum).ok());
    EXPECT_TRUE(c.AllGather(nullptr, nullptr, 0, CommType::kF32).ok());  // counted, 0 bytes
    EXPECT_TRUE(c.AllGather(static_cast<uint8_t*>(pg) + rank() * 400, pg, 100, CommType::kF32).ok());
    EXPECT_TRUE(c.ReduceScatter(ps, static_cast<uint8_t*>(ps) + rank() * 400, 100, CommType::kF32,
                                ReduceOp::kMax).ok());
    EXPECT_TRUE(c.Broadcast(pa, 1000, CommType::kF32, 0).ok());
    EXPECT_TRUE(c.BatchSendRecv({PeerOp::Send(pm, 8, CommType::kU8, next, 0),
                                 PeerOp::Recv(pm_in, 8, CommType::kU8, prev, 0)}).ok());
    EXPECT_TRUE(c.Barrier().ok());
  };
  std::vector<uint8_t> hm_in(8);
  DeviceBuffer m_in(8);
  run(comm(), a.get(), g.get(), s.get(), m.get(), m_in.get());
  run(host(), ha.data(), hg.data(), hs.data(), hm.data(), hm_in.data());
  EXPECT_EQ(comm().counters(), host().counters())
      << comm().counters().ToString() << " vs " << host().counters().ToString();
  const CommCounters& k = comm().counters();
  EXPECT_EQ(k.all_reduce, (OpCounter{1, AllReduceWireBytes(4000, p)}));
  EXPECT_EQ(k.all_gather, (OpCounter{2, AllGatherWireBytes(p * 400, p)}));
  EXPECT_EQ(k.reduce_scatter, (OpCounter{1, ReduceScatterWireBytes(p * 400, p)}));
  EXPECT_EQ(k.broadcast, (OpCounter{1, BroadcastWireBytes(4000, p)}));
  EXPECT_EQ(k.send, (OpCounter{1, 8}));
  EXPECT_EQ(k.recv, (OpCounter{1, 8}));
  EXPECT_EQ(k.barrier_calls, 1);
}

// Split and SplitByNode give device communicators of the same kind, ordered as the host's.
TEST_F(DeviceCommTest, SplitsMatchTheHostSplits) {
  const int r = rank();
  const int color = r % 3 == 2 ? Communicator::kNoColor : r % 2;
  const int key = -r;  // reversed order within each group
  absl::StatusOr<std::unique_ptr<Communicator>> child = comm().Split(color, key);
  absl::StatusOr<std::unique_ptr<Communicator>> want = host().Split(color, key);
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_TRUE(want.ok()) << want.status();
  if (color == Communicator::kNoColor) {
    EXPECT_EQ(*child, nullptr);
  } else {
    ASSERT_NE(*child, nullptr);
    DeviceCommunicator* d = AsDeviceCommunicator(child->get());
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(d->kind(), comm().kind());
    EXPECT_EQ(d->rank(), (*want)->rank());
    EXPECT_EQ(d->size(), (*want)->size());
    EXPECT_EQ(d->name(), absl::StrCat(comm().name(), "/split"));
    EXPECT_EQ(d->device(), device());
    std::vector<int32_t> ids(5, r + 1);
    DeviceBuffer di = ToDevice(ids);
    EXPECT_TRUE(d->AllReduce(di.get(), 5, CommType::kI32, ReduceOp::kSum).ok());
    EXPECT_TRUE((*want)->AllReduce(absl::MakeSpan(ids), ReduceOp::kSum).ok());
    EXPECT_EQ(di.Download<int32_t>(5), ids);
  }
  absl::StatusOr<std::unique_ptr<Communicator>> node = comm().SplitByNode();
  absl::StatusOr<std::unique_ptr<Communicator>> want_node = host().SplitByNode();
  ASSERT_TRUE(node.ok()) << node.status();
  ASSERT_TRUE(want_node.ok());
  EXPECT_EQ((*node)->rank(), (*want_node)->rank());
  EXPECT_EQ((*node)->size(), (*want_node)->size());
  std::vector<float> one(3, 1.f);
  DeviceBuffer d1 = ToDevice(one);
  EXPECT_TRUE((*node)->AllReduce(d1.get(), 3, CommType::kF32, ReduceOp::kSum).ok());
  EXPECT_EQ(d1.Download<float>(3), std::vector<float>(3, static_cast<float>((*want_node)->size())));
  // The parent still works after its splits.
  EXPECT_TRUE(comm().Barrier().ok());
}

// Argument errors are refused on the calling rank before anything is issued (no peer needed),
// and not counted.
TEST_F(DeviceCommTest, RefusesBadArguments) {
  Tensor host_tensor = Tensor::Zeros({4}, DType::kF32);
  absl::Status s = comm().AllReduce(host_tensor, ReduceOp::kSum);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("lives on cpu but this communicator moves device memory"));
  Tensor in = DeviceTensor({4}, DType::kF32, device());
  Tensor out = DeviceTensor({4 * size()}, DType::kBF16, device());
  s = comm().AllGather(in, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("input is f32 but output is bf16"));
  Tensor out2 = DeviceTensor({4 * size() + 1}, DType::kF32, device());
  EXPECT_EQ(comm().AllGather(in, out2).code(), absl::StatusCode::kInvalidArgument);
  DeviceBuffer d(64);
  s = comm().AllReduce(d.get(), 16, CommType::kI32, ReduceOp::kAvg);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("the average of i32 is not defined"));
  s = comm().AllReduce(d.get(), 16, CommType::kU16, ReduceOp::kSum);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  s = comm().Broadcast(d.get(), 16, CommType::kF32, size());
  EXPECT_THAT(s.message(), HasSubstr("is not a rank of this group"));
  s = comm().IBatchSendRecv({PeerOp::Send(d.get(), 4, CommType::kF32, size(), 0)}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = comm().ReduceScatter(d.get(), d.as<uint8_t>(1), 4 / size() + 1, CommType::kF32, ReduceOp::kSum);
  EXPECT_THAT(s.message(), HasSubstr("overlaps"));
  EXPECT_EQ(comm().counters(), CommCounters());
  // The tensor overloads on device tensors work.
  Tensor t = DeviceTensor({2, 3}, DType::kF32, device());
  EXPECT_EQ(cudaMemset(t.raw(), 0, 24), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(comm().AllReduce(t, ReduceOp::kSum).ok());
}

}  // namespace lattice::testing

#endif  // LATTICE_HAVE_CUDA

#endif  // LATTICE_TESTS_PARALLEL_DEVICE_COMM_TESTING_H_
