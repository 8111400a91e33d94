// The host-side logic of the device communicators, which runs without a GPU: the CommType ->
// ncclDataType_t and ReduceOp -> ncclRedOp_t mappings, NCCL results as Status codes, what NCCL
// reduces, the base class's checks and counters on a device communicator, and the factories'
// errors on a machine without a GPU. The device behaviour is in nccl_communicator_mpi_test.cc
// and staged_device_communicator_mpi_test.cc (label gpu).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "kernels/cuda/cuda_backend.h"
#include "parallel/communicator.h"
#include "parallel/device_communicator.h"
#include "parallel/nccl_communicator.h"
#include "parallel/staged_device_communicator.h"

#ifdef LATTICE_HAVE_NCCL
#include <nccl.h>
#endif
#ifdef LATTICE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lattice {
namespace {

using ::testing::HasSubstr;

constexpr CommType kAllTypes[] = {CommType::kF32, CommType::kBF16, CommType::kF16, CommType::kI32,
                                  CommType::kU16, CommType::kU32,  CommType::kU8};
constexpr ReduceOp kAllOps[] = {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg};

TEST(NcclReductions, EveryTypeButU16AndTheAverageOnFloatsOnly) {
  for (CommType t : kAllTypes) {
    for (ReduceOp op : kAllOps) {
      const bool want = t != CommType::kU16 && (op != ReduceOp::kAvg || IsFloatingPoint(t));
      EXPECT_EQ(NcclSupportsReduction(t, op), want) << CommTypeName(t) << " " << ReduceOpName(op);
      // NCCL reduces everything the host communicators do, and more.
      if (SupportsReduction(t, op)) {
        EXPECT_TRUE(NcclSupportsReduction(t, op));
      }
    }
  }
  EXPECT_TRUE(NcclSupportsReduction(CommType::kBF16, ReduceOp::kSum));
  EXPECT_FALSE(SupportsReduction(CommType::kBF16, ReduceOp::kSum));
}

#ifdef LATTICE_HAVE_NCCL
TEST(NcclMapping, EveryCommTypeTravelsAsItsNcclType) {
  EXPECT_EQ(NcclWireTypeOf(CommType::kF32).type, ncclFloat32);
  EXPECT_EQ(NcclWireTypeOf(CommType::kBF16).type, ncclBfloat16);
  EXPECT_EQ(NcclWireTypeOf(CommType::kF16).type, ncclFloat16);
  EXPECT_EQ(NcclWireTypeOf(CommType::kI32).type, ncclInt32);
  EXPECT_EQ(NcclWireTypeOf(CommType::kU32).type, ncclUint32);
  EXPECT_EQ(NcclWireTypeOf(CommType::kU8).type, ncclUint8);
  // NCCL has no 16-bit integer: bytes, two per element.
  EXPECT_EQ(NcclWireTypeOf(CommType::kU16).type, ncclUint8);
  EXPECT_EQ(NcclWireTypeOf(CommType::kU16).per_element, 2u);
  // Every element's bytes travel: the wire type's size times per_element is the element's.
  auto nccl_size = [](int t) -> size_t {
    switch (t) {
      case ncclInt8: case ncclUint8: return 1;
      case ncclFloat16: case ncclBfloat16: return 2;
      case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
      default: return 8;
    }
  };
  for (CommType t : kAllTypes) {
    const NcclWireType w = NcclWireTypeOf(t);
    EXPECT_EQ(nccl_size(w.type) * w.per_element, CommTypeSize(t)) << CommTypeName(t);
  }
  EXPECT_EQ(NcclRedOpOf(ReduceOp::kSum), ncclSum);
  EXPECT_EQ(NcclRedOpOf(ReduceOp::kMax), ncclMax);
  EXPECT_EQ(NcclRedOpOf(ReduceOp::kMin), ncclMin);
  EXPECT_EQ(NcclRedOpOf(ReduceOp::kAvg), ncclAvg);
}

TEST(NcclMapping, ResultsBecomeStatusCodesThatSayWhatToDo) {
  EXPECT_TRUE(NcclResultStatus(ncclSuccess, "ncclAllReduce").ok());
  const std::pair<ncclResult_t, absl::StatusCode> cases[] = {
      {ncclInvalidArgument, absl::StatusCode::kInvalidArgument},
      {ncclInvalidUsage, absl::StatusCode::kFailedPrecondition},
      {ncclSystemError, absl::StatusCode::kUnavailable},
      {ncclRemoteError, absl::StatusCode::kUnavailable},
      {ncclUnhandledCudaError, absl::StatusCode::kInternal},
      {ncclInternalError, absl::StatusCode::kInternal},
  };
  for (const auto& [r, code] : cases) {
    absl::Status s = NcclResultStatus(r, "ncclAllReduce", "dp rank 1 of 2, device 1");
    EXPECT_EQ(s.code(), code) << r;
    EXPECT_THAT(s.message(), HasSubstr("ncclAllReduce failed: "));
    EXPECT_THAT(s.message(), HasSubstr(ncclGetErrorString(r)));
    EXPECT_THAT(s.message(), HasSubstr("(dp rank 1 of 2, device 1)"));
  }
}

TEST(NcclMapping, RuntimeVersionIsTheHeaders) {
  // ncclGetVersion needs no GPU. The library found at run time is the one linked here.
  EXPECT_EQ(NcclRuntimeVersion(), absl::StrCat(NCCL_MAJOR, ".", NCCL_MINOR, ".", NCCL_PATCH));
}
#endif  // LATTICE_HAVE_NCCL

#ifdef LATTICE_HAVE_CUDA
TEST(CudaStatusTest, NamesTheCallAndTheError) {
  EXPECT_TRUE(CudaStatus(cudaSuccess, "cudaMemcpy").ok());
  absl::Status s = CudaStatus(cudaErrorInvalidValue, "cudaMemcpyAsync on dp rank 0");
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("cudaMemcpyAsync on dp rank 0 failed: cudaErrorInvalidValue"));
}
#endif

// The factories on a machine without a GPU: a Status that says so, on every rank alike (here,
// one), and the communicator given is left usable.
TEST(DeviceCommFactories, WithoutAGpuSaySo) {
  std::string why;
  if (kernels::cuda::DeviceCount(&why) > 0) GTEST_SKIP() << "this machine has a GPU";
  SelfCommunicator host;
  absl::StatusOr<std::unique_ptr<DeviceCommunicator>> nccl = CreateNcclCommunicator(host);
  ASSERT_FALSE(nccl.ok());
  if (NcclCompiledIn()) {
    EXPECT_EQ(nccl.status().code(), absl::StatusCode::kFailedPrecondition) << nccl.status();
    EXPECT_THAT(nccl.status().message(), HasSubstr("no GPU"));
  } else {
    EXPECT_EQ(nccl.status().code(), absl::StatusCode::kUnimplemented) << nccl.status();
    EXPECT_THAT(nccl.status().message(), HasSubstr("without NCCL"));
  }
  absl::StatusOr<std::unique_ptr<DeviceCommunicator>> staged = CreateStagedDeviceCommunicator(host);
  ASSERT_FALSE(staged.ok());
  EXPECT_EQ(staged.status().code(), absl::StatusCode::kFailedPrecondition) << staged.status();
  EXPECT_THAT(staged.status().message(), HasSubstr("no GPU"));
  // Nothing was counted on the host (its private split is not).
  EXPECT_EQ(host.counters(), CommCounters());
  EXPECT_FALSE(ResolveDevice(0).ok());
  EXPECT_FALSE(ResolveDevice(-1).ok());
}

// A device communicator that moves nothing, to check what the base class does for every device
// communicator: it refuses host tensors, lets the implementation's CanReduce admit bf16 while
// the average of integers stays refused, and counts every issued op by communicator.h's
// convention. Pretends to be rank 1 of 4.
class RecordingDeviceCommunicator final : public DeviceCommunicator {
 public:
  int rank() const override { return 1; }
  int size() const override { return 4; }
  absl::string_view kind() const override { return "recording"; }
  int device() const override { return 0; }
  CUstream_st* stream() const override { return nullptr; }
  absl::Status WaitForStream(CUstream_st*) override { return absl::OkStatus(); }
  bool CanReduce(CommType type, ReduceOp op) const override {
    return NcclSupportsReduction(type, op);
  }
  [[noreturn]] void Abort(int exit_code) override { std::_Exit(exit_code); }

  std::vector<std::string> calls;

 protected:
  absl::Status DoAllReduce(void*, size_t n, CommType t, ReduceOp op) override {
    return Record(absl::StrCat("AllReduce ", ReduceOpName(op), " ", CommTypeName(t), " ", n));
  }
  absl::Status DoReduceScatter(const void*, void*, size_t n, CommType t, ReduceOp op) override {
    return Record(absl::StrCat("ReduceScatter ", ReduceOpName(op), " ", CommTypeName(t), " ", n));
  }
  absl::Status DoAllGather(const void*, void*, size_t n, CommType t) override {
    return Record(absl::StrCat("AllGather ", CommTypeName(t), " ", n));
  }
  absl::Status DoBroadcast(void*, size_t n, CommType t, int root) override {
    return Record(absl::StrCat("Broadcast ", CommTypeName(t), " ", n, " from ", root));
  }
  absl::Status DoBarrier() override { return Record("Barrier"); }
  absl::Status DoSend(const void*, size_t n, CommType t, int dst, int) override {
    return Record(absl::StrCat("Send ", CommTypeName(t), " ", n, " to ", dst));
  }
  absl::Status DoRecv(void*, size_t n, CommType t, int src, int) override {
    return Record(absl::StrCat("Recv ", CommTypeName(t), " ", n, " from ", src));
  }
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int, int) override {
    return absl::UnimplementedError("no splits here");
  }
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplitByNode() override {
    return absl::UnimplementedError("no splits here");
  }

 private:
  absl::Status Record(std::string call) {
    calls.push_back(std::move(call));
    return absl::OkStatus();
  }
};

TEST(DeviceCommunicatorBase, ChecksAndCountsLikeEveryCommunicator) {
  RecordingDeviceCommunicator c;
  EXPECT_EQ(c.buffer_device(), DeviceType::kCuda);
  EXPECT_EQ(AsDeviceCommunicator(&c), &c);
  SelfCommunicator self;
  EXPECT_EQ(AsDeviceCommunicator(&self), nullptr);
  EXPECT_EQ(AsDeviceCommunicator(nullptr), nullptr);
  EXPECT_EQ(c.pinned_allocations(), 0);

  // Buffers are never dereferenced here, so any distinct addresses do.
  std::vector<uint8_t> mem(1 << 16);
  uint8_t* a = mem.data();
  uint8_t* b = mem.data() + 32768;

  EXPECT_TRUE(c.AllReduce(a, 1000, CommType::kBF16, ReduceOp::kAvg).ok());  // NCCL's types
  absl::Status s = c.AllReduce(a, 10, CommType::kI32, ReduceOp::kAvg);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("the average of i32 is not defined"));
  s = c.AllReduce(a, 10, CommType::kU16, ReduceOp::kMax);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("max of u16 is not supported by this communicator (recording"));
  Tensor host_tensor = Tensor::Zeros({8}, DType::kBF16);
  s = c.AllReduce(host_tensor, ReduceOp::kSum);
  EXPECT_THAT(s.message(), HasSubstr("lives on cpu but this communicator moves device memory"));

  // In place into the own chunk (rank 1) is allowed; overlapping elsewhere is not.
  EXPECT_TRUE(c.ReduceScatter(a, a + 1 * 100 * 2, 100, CommType::kF16, ReduceOp::kSum).ok());
  EXPECT_FALSE(c.ReduceScatter(a, a + 2, 100, CommType::kF16, ReduceOp::kSum).ok());
  EXPECT_TRUE(c.AllGather(b + 1 * 50 * 4, b, 50, CommType::kF32).ok());
  EXPECT_TRUE(c.Broadcast(a, 7, CommType::kU8, 3).ok());
  EXPECT_TRUE(c.Send(a, 16, CommType::kF32, 2, 0).ok());
  EXPECT_TRUE(c.Recv(b, 16, CommType::kF32, 0, 0).ok());
  // The default batch issues its ops one by one (a device communicator overrides it: NCCL's
  // group), counted as ISend and IRecv.
  EXPECT_TRUE(c.BatchSendRecv({PeerOp::Send(a, 4, CommType::kBF16, 2, 1),
                               PeerOp::Recv(b, 4, CommType::kBF16, 0, 1)}).ok());
  EXPECT_TRUE(c.Barrier().ok());

  EXPECT_EQ(c.calls, (std::vector<std::string>{
                         "AllReduce avg bf16 1000", "ReduceScatter sum f16 100",
                         "AllGather f32 50", "Broadcast u8 7 from 3", "Send f32 16 to 2",
                         "Recv f32 16 from 0", "Send bf16 4 to 2", "Recv bf16 4 from 0",
                         "Barrier"}));
  const CommCounters& k = c.counters();
  EXPECT_EQ(k.all_reduce, (OpCounter{1, AllReduceWireBytes(2000, 4)}));  // 3000
  EXPECT_EQ(k.all_reduce.bytes, 3000);
  EXPECT_EQ(k.reduce_scatter, (OpCounter{1, ReduceScatterWireBytes(4 * 100 * 2, 4)}));  // 600
  EXPECT_EQ(k.all_gather, (OpCounter{1, AllGatherWireBytes(4 * 50 * 4, 4)}));  // 600
  EXPECT_EQ(k.broadcast, (OpCounter{1, 7}));
  EXPECT_EQ(k.send, (OpCounter{2, 64 + 8}));
  EXPECT_EQ(k.recv, (OpCounter{2, 64 + 8}));
  EXPECT_EQ(k.barrier_calls, 1);
  EXPECT_EQ(k.BytesSent(), 3000 + 600 + 600 + 7 + 72);
}

}  // namespace
}  // namespace lattice
