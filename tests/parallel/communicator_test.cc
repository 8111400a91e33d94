// SelfCommunicator, argument checking, byte formulas and AgreeOnStatus in a single process.
// The multi-rank behaviour is in communicator_mpi_test.cc.
#include "parallel/communicator.h"

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/mpi_communicator.h"
#include "runtime/tensor.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

TEST(CommTypeTest, SizesNamesAndTensorTypes) {
  EXPECT_EQ(CommTypeSize(CommType::kF32), 4u);
  EXPECT_EQ(CommTypeSize(CommType::kBF16), 2u);
  EXPECT_EQ(CommTypeSize(CommType::kU8), 1u);
  EXPECT_EQ(CommTypeName(CommType::kU8), "u8");
  EXPECT_EQ(CommTypeOf(DType::kF32), CommType::kF32);
  EXPECT_EQ(CommTypeOf(DType::kI32), CommType::kI32);
  EXPECT_EQ(CommTypeOf(DType::kBF16), CommType::kBF16);
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kI32, DType::kU16, DType::kU32}) {
    EXPECT_EQ(CommTypeSize(CommTypeOf(d)), DTypeSize(d)) << DTypeName(d);
    EXPECT_EQ(CommTypeName(CommTypeOf(d)), DTypeName(d));
  }
  EXPECT_TRUE(SupportsReduction(CommType::kF32));
  EXPECT_TRUE(SupportsReduction(CommType::kU8));
  EXPECT_FALSE(SupportsReduction(CommType::kBF16));
}

// The convention of communicator.h, on numbers worked out by hand.
TEST(WireBytesTest, StandardConvention) {
  // All-reduce of 4000 bytes: 2 (p-1)/p n.
  EXPECT_EQ(AllReduceWireBytes(4000, 1), 0);
  EXPECT_EQ(AllReduceWireBytes(4000, 2), 4000);
  EXPECT_EQ(AllReduceWireBytes(4000, 4), 6000);
  EXPECT_EQ(AllReduceWireBytes(4000, 8), 7000);
  EXPECT_EQ(AllReduceWireBytes(10, 3), 13);  // 40/3 rounded down
  // Reduce-scatter / all-gather of a 4000-byte full buffer: (p-1)/p n.
  EXPECT_EQ(ReduceScatterWireBytes(4000, 1), 0);
  EXPECT_EQ(ReduceScatterWireBytes(4000, 4), 3000);
  EXPECT_EQ(AllGatherWireBytes(4000, 2), 2000);
  EXPECT_EQ(AllGatherWireBytes(4000, 8), 3500);
  // Broadcast: n as soon as there is anyone to send to.
  EXPECT_EQ(BroadcastWireBytes(4000, 1), 0);
  EXPECT_EQ(BroadcastWireBytes(4000, 2), 4000);
  EXPECT_EQ(BroadcastWireBytes(4000, 64), 4000);
}

TEST(SelfCommunicatorTest, CollectivesAreIdentities) {
  SelfCommunicator c;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  EXPECT_EQ(c.kind(), "self");

  std::vector<float> v = {1.5f, -2.f, 3.f};
  ASSERT_TRUE(c.AllReduce(absl::MakeSpan(v), ReduceOp::kSum).ok());
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.f, 3.f}));
  ASSERT_TRUE(c.AllReduce(absl::MakeSpan(v), ReduceOp::kMax).ok());
  ASSERT_TRUE(c.Broadcast(absl::MakeSpan(v), 0).ok());
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.f, 3.f}));

  std::vector<int32_t> in = {4, 5, 6}, out(3, -1);
  ASSERT_TRUE(c.AllGather(absl::MakeConstSpan(in), absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, in);
  std::vector<int32_t> rs(3, -1);
  ASSERT_TRUE(c.ReduceScatter(absl::MakeConstSpan(in), absl::MakeSpan(rs), ReduceOp::kSum).ok());
  EXPECT_EQ(rs, in);
  // The own-chunk aliases (the only overlap allowed) are no-ops for a world of one.
  ASSERT_TRUE(c.ReduceScatter(in.data(), in.data(), 3, CommType::kI32, ReduceOp::kSum).ok());
  ASSERT_TRUE(c.AllGather(in.data(), in.data(), 3, CommType::kI32).ok());
  EXPECT_EQ(in, (std::vector<int32_t>{4, 5, 6}));
  ASSERT_TRUE(c.Barrier().ok());

  // Split and SplitByNode give fresh worlds of one; kNoColor gives none.
  absl::StatusOr<std::unique_ptr<Communicator>> s = c.Split(3, 0);
  ASSERT_TRUE(s.ok());
  ASSERT_NE(*s, nullptr);
  EXPECT_EQ((*s)->size(), 1);
  absl::StatusOr<std::unique_ptr<Communicator>> none = c.Split(Communicator::kNoColor, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr);
  absl::StatusOr<std::unique_ptr<Communicator>> node = c.SplitByNode();
  ASSERT_TRUE(node.ok());
  EXPECT_EQ((*node)->size(), 1);
}

TEST(SelfCommunicatorTest, SendRecvToSelfIsFifoPerTag) {
  SelfCommunicator c;
  const std::vector<int32_t> a = {1, 2}, b = {3, 4}, t = {9};
  ASSERT_TRUE(c.Send(absl::MakeConstSpan(a), 0, /*tag=*/5).ok());
  ASSERT_TRUE(c.Send(absl::MakeConstSpan(t), 0, /*tag=*/6).ok());
  ASSERT_TRUE(c.Send(absl::MakeConstSpan(b), 0, /*tag=*/5).ok());
  std::vector<int32_t> got(2), got_t(1);
  ASSERT_TRUE(c.Recv(absl::MakeSpan(got_t), 0, 6).ok());
  EXPECT_EQ(got_t, t);
  ASSERT_TRUE(c.Recv(absl::MakeSpan(got), 0, 5).ok());
  EXPECT_EQ(got, a);
  ASSERT_TRUE(c.Recv(absl::MakeSpan(got), 0, 5).ok());
  EXPECT_EQ(got, b);

  // Nothing left: an error, not a hang.
  absl::Status empty = c.Recv(absl::MakeSpan(got), 0, 5);
  EXPECT_EQ(empty.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(empty.message(), HasSubstr("tag 5"));
  EXPECT_THAT(empty.message(), HasSubstr("Recv(i32 x 2) from 0 tag 5 on rank 0 of 1 (self)"));

  // A message of another length than the receive expects.
  ASSERT_TRUE(c.Send(absl::MakeConstSpan(t), 0, 7).ok());
  absl::Status wrong = c.Recv(absl::MakeSpan(got), 0, 7);
  EXPECT_EQ(wrong.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong.message(), HasSubstr("received a message of 1 elements but expected 2"));
}

TEST(SelfCommunicatorTest, NonBlockingRecvMayBePostedFirst) {
  SelfCommunicator c;
  std::vector<float> got(3, 0.f);
  const std::vector<float> sent = {7.f, 8.f, 9.f};
  absl::StatusOr<std::unique_ptr<Work>> r = c.IRecv(got.data(), 3, CommType::kF32, 0, 1);
  ASSERT_TRUE(r.ok());
  absl::StatusOr<std::unique_ptr<Work>> s = c.ISend(sent.data(), 3, CommType::kF32, 0, 1);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->Wait().ok());
  ASSERT_TRUE((*r)->Wait().ok());
  EXPECT_EQ(got, sent);
  EXPECT_TRUE((*r)->Wait().ok());  // idempotent

  // Non-blocking collectives complete, and an IRecv that can never match reports it at Wait,
  // naming the call.
  std::vector<float> v = {1.f};
  absl::StatusOr<std::unique_ptr<Work>> ar = c.IAllReduce(v.data(), 1, CommType::kF32, ReduceOp::kSum);
  ASSERT_TRUE(ar.ok());
  EXPECT_TRUE((*ar)->Wait().ok());
  absl::StatusOr<std::unique_ptr<Work>> orphan = c.IRecv(got.data(), 3, CommType::kF32, 0, 2);
  ASSERT_TRUE(orphan.ok());
  absl::Status st = (*orphan)->Wait();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("IRecv(f32 x 3) from 0 tag 2"));
  EXPECT_EQ((*orphan)->Wait(), st);
}

TEST(CommunicatorTest, RejectsBadArguments) {
  SelfCommunicator c;
  std::vector<float> v(4, 1.f);
  std::vector<uint16_t> h(4, 0);

  absl::Status s = c.Broadcast(v.data(), 4, CommType::kF32, /*root=*/1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("root 1 is not a rank of this group of 1"));
  EXPECT_THAT(s.message(), HasSubstr("Broadcast(f32 x 4) from 1"));

  s = c.Send(v.data(), 4, CommType::kF32, 0, /*tag=*/-1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tag -1"));
  s = c.Send(v.data(), 4, CommType::kF32, 0, Communicator::kMaxTag + 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = c.Send(v.data(), 4, CommType::kF32, /*dst=*/2, 0);
  EXPECT_THAT(s.message(), HasSubstr("peer rank 2"));

  s = c.AllReduce(nullptr, 4, CommType::kF32, ReduceOp::kSum);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("null"));
  EXPECT_TRUE(c.AllReduce(nullptr, 0, CommType::kF32, ReduceOp::kSum).ok());

  s = c.AllReduce(h.data(), 4, CommType::kBF16, ReduceOp::kSum);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("sum of bf16"));
  // bf16 is still moved.
  EXPECT_TRUE(c.Broadcast(h.data(), 4, CommType::kBF16, 0).ok());

  // Overlaps other than the own chunk.
  std::vector<float> big(8, 0.f);
  s = c.AllGather(big.data() + 1, big.data(), 4, CommType::kF32);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("overlaps"));
  s = c.ReduceScatter(big.data(), big.data() + 2, 4, CommType::kF32, ReduceOp::kSum);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);

  // Span sizes that do not fit the group.
  std::vector<float> out(3);
  s = c.AllGather(absl::MakeConstSpan(v), absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("1 x 4 = 4"));

  s = c.Split(-7, 0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("Split(color -7"));

  // Rejected calls are not counted.
  EXPECT_EQ(c.counters().BytesSent(), 0);
  EXPECT_EQ(c.counters().all_reduce.calls, 1);  // the empty one
  EXPECT_EQ(c.counters().broadcast.calls, 1);   // the bf16 one
}

// The average: the sum over the group divided by its size, on floating-point types only. A world
// of one averages to its own values; integers refuse it (an integer mean would round), and the
// 16-bit types stay unreduced on the host communicators.
TEST(CommunicatorTest, AverageRules) {
  EXPECT_EQ(ReduceOpName(ReduceOp::kAvg), "avg");
  EXPECT_TRUE(SupportsReduction(CommType::kF32, ReduceOp::kAvg));
  EXPECT_TRUE(SupportsReduction(CommType::kI32, ReduceOp::kSum));
  EXPECT_FALSE(SupportsReduction(CommType::kI32, ReduceOp::kAvg));
  EXPECT_FALSE(SupportsReduction(CommType::kU8, ReduceOp::kAvg));
  EXPECT_FALSE(SupportsReduction(CommType::kBF16, ReduceOp::kAvg));
  EXPECT_FALSE(SupportsReduction(CommType::kF16, ReduceOp::kMax));
  EXPECT_TRUE(IsFloatingPoint(CommType::kBF16));
  EXPECT_FALSE(IsFloatingPoint(CommType::kU16));

  SelfCommunicator c;
  EXPECT_TRUE(c.CanReduce(CommType::kF32, ReduceOp::kAvg));
  EXPECT_FALSE(c.CanReduce(CommType::kBF16, ReduceOp::kSum));
  std::vector<float> v = {1.5f, -2.f, 3.25f};
  ASSERT_TRUE(c.AllReduce(absl::MakeSpan(v), ReduceOp::kAvg).ok());
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.f, 3.25f}));
  std::vector<float> rs(3, 0.f);
  ASSERT_TRUE(c.ReduceScatter(absl::MakeConstSpan(v), absl::MakeSpan(rs), ReduceOp::kAvg).ok());
  EXPECT_EQ(rs, v);
  absl::StatusOr<std::unique_ptr<Work>> w = c.IAllReduce(v.data(), 3, CommType::kF32, ReduceOp::kAvg);
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE((*w)->Wait().ok());

  std::vector<int32_t> ints = {1, 2};
  absl::Status s = c.AllReduce(absl::MakeSpan(ints), ReduceOp::kAvg);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("the average of i32 is not defined"));
  EXPECT_THAT(s.message(), HasSubstr("AllReduce(avg, i32 x 2)"));
  std::vector<int32_t> one(2);
  s = c.ReduceScatter(absl::MakeConstSpan(ints), absl::MakeSpan(one), ReduceOp::kAvg);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint16_t> h(2, 0);
  s = c.AllReduce(h.data(), 2, CommType::kBF16, ReduceOp::kAvg);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("avg of bf16 is not supported by this communicator (self"));
  // Refused calls are not counted.
  EXPECT_EQ(c.counters().all_reduce.calls, 2);
  EXPECT_EQ(c.counters().reduce_scatter.calls, 1);
}

// A batch to self: the receive may come first in the batch, as in a pipeline stage that posts
// its receive from the previous stage before its send to the next.
TEST(CommunicatorTest, BatchSendRecvToSelf) {
  SelfCommunicator c;
  const std::vector<float> a = {1.f, 2.f, 3.f};
  const std::vector<int32_t> b = {7, 8};
  std::vector<float> got_a(3, 0.f);
  std::vector<int32_t> got_b(2, 0);
  const std::vector<PeerOp> ops = {
      PeerOp::Recv(absl::MakeSpan(got_a), 0, /*tag=*/1),
      PeerOp::Send(absl::MakeConstSpan(a), 0, /*tag=*/1),
      PeerOp::Send(absl::MakeConstSpan(b), 0, /*tag=*/2),
      PeerOp::Recv(absl::MakeSpan(got_b), 0, /*tag=*/2),
  };
  absl::StatusOr<std::unique_ptr<Work>> w = c.IBatchSendRecv(ops);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE((*w)->Wait().ok());
  EXPECT_TRUE((*w)->Wait().ok());  // idempotent
  EXPECT_EQ(got_a, a);
  EXPECT_EQ(got_b, b);
  // Counted as the ISends and IRecvs they are.
  EXPECT_EQ(c.counters().send, (OpCounter{2, 12 + 8}));
  EXPECT_EQ(c.counters().recv, (OpCounter{2, 12 + 8}));

  // The blocking form; an empty batch is a no-op.
  std::vector<float> again(3, 0.f);
  const std::vector<PeerOp> pair = {PeerOp::Send(absl::MakeConstSpan(a), 0, 3),
                                    PeerOp::Recv(absl::MakeSpan(again), 0, 3)};
  EXPECT_TRUE(c.BatchSendRecv(pair).ok());
  EXPECT_EQ(again, a);
  EXPECT_TRUE(c.BatchSendRecv({}).ok());

  // One bad op refuses the whole batch before anything is issued or counted, naming the op.
  c.ResetCounters();
  const std::vector<PeerOp> bad = {PeerOp::Send(absl::MakeConstSpan(a), 0, 4),
                                   PeerOp::Recv(absl::MakeSpan(again), /*src=*/3, 4)};
  absl::Status s = c.IBatchSendRecv(bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("IBatchSendRecv(1 sends, 1 receives) op 1 (recv(f32 x 3) "
                                     "from 3 tag 4) on rank 0 of 1 (self)"));
  EXPECT_THAT(s.message(), HasSubstr("peer rank 3"));
  EXPECT_EQ(c.counters(), CommCounters());
  std::vector<float> none(3);
  EXPECT_FALSE(c.Recv(absl::MakeSpan(none), 0, 4).ok());  // the send was not issued either

  // An unmatched receive fails at Wait, named by the batch.
  const std::vector<PeerOp> orphan = {PeerOp::Recv(absl::MakeSpan(none), 0, 9)};
  absl::StatusOr<std::unique_ptr<Work>> o = c.IBatchSendRecv(orphan);
  ASSERT_TRUE(o.ok());
  s = (*o)->Wait();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("IBatchSendRecv(0 sends, 1 receives) on rank 0 of 1"));
}

// A host Work has no device work to order a stream after: WaitOnStream waits on the host.
TEST(CommunicatorTest, HostWorkWaitOnStreamWaits) {
  SelfCommunicator c;
  std::vector<float> got(1, 0.f);
  const std::vector<float> sent = {4.f};
  absl::StatusOr<std::unique_ptr<Work>> r = c.IRecv(got.data(), 1, CommType::kF32, 0, 1);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(c.Send(absl::MakeConstSpan(sent), 0, 1).ok());
  EXPECT_TRUE((*r)->WaitOnStream(nullptr).ok());
  EXPECT_EQ(got, sent);
  absl::StatusOr<std::unique_ptr<Work>> orphan = c.IRecv(got.data(), 1, CommType::kF32, 0, 2);
  ASSERT_TRUE(orphan.ok());
  absl::Status s = (*orphan)->WaitOnStream(nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("IRecv(f32 x 1) from 0 tag 2"));
}

TEST(CommunicatorTest, TensorOverloads) {
  SelfCommunicator c;
  Tensor t = Tensor::Zeros({2, 3}, DType::kF32);
  t.Fill(2.f);
  ASSERT_TRUE(c.AllReduce(t, ReduceOp::kSum).ok());
  EXPECT_EQ(t.f32()[5], 2.f);
  Tensor out = Tensor::Zeros({6}, DType::kF32);
  ASSERT_TRUE(c.AllGather(t, out).ok());
  EXPECT_EQ(out.f32()[0], 2.f);
  ASSERT_TRUE(c.ReduceScatter(t, out, ReduceOp::kSum).ok());
  absl::StatusOr<std::unique_ptr<Work>> w = c.IAllReduce(t, ReduceOp::kMax);
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE((*w)->Wait().ok());

  Tensor wrong = Tensor::Zeros({5}, DType::kF32);
  absl::Status s = c.AllGather(t, wrong);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  Tensor ints = Tensor::Zeros({6}, DType::kI32);
  s = c.AllGather(t, ints);
  EXPECT_THAT(s.message(), HasSubstr("input is f32 but output is i32"));
  s = c.AllReduce(Tensor(), ReduceOp::kSum);
  EXPECT_THAT(s.message(), HasSubstr("undefined"));
}

TEST(CommunicatorTest, CountersAndReset) {
  SelfCommunicator c;
  std::vector<float> v(10, 1.f);
  ASSERT_TRUE(c.AllReduce(absl::MakeSpan(v), ReduceOp::kSum).ok());
  ASSERT_TRUE(c.Send(absl::MakeConstSpan(v), 0, 0).ok());
  ASSERT_TRUE(c.Recv(absl::MakeSpan(v), 0, 0).ok());
  ASSERT_TRUE(c.Barrier().ok());
  const CommCounters& k = c.counters();
  EXPECT_EQ(k.all_reduce, (OpCounter{1, 0}));  // a world of one sends nothing
  EXPECT_EQ(k.send, (OpCounter{1, 40}));       // a message to self still counts its bytes
  EXPECT_EQ(k.recv, (OpCounter{1, 40}));
  EXPECT_EQ(k.barrier_calls, 1);
  EXPECT_EQ(k.BytesSent(), 40);
  EXPECT_THAT(k.ToString(), HasSubstr("sent 40 B"));
  c.ResetCounters();
  EXPECT_EQ(c.counters(), CommCounters());
}

TEST(AgreeOnStatusTest, WorldOfOne) {
  SelfCommunicator c;
  EXPECT_TRUE(AgreeOnStatus(c, absl::OkStatus()).ok());
  absl::Status s = AgreeOnStatus(c, absl::DataLossError("shard 3 is truncated"));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), "rank 0: shard 3 is truncated");
}

TEST(AbortWorldTest, WorldOfOnePrintsRankAndExitsNonZero) {
  EXPECT_EXIT(
      {
        SelfCommunicator c;
        AbortWorld(c, absl::InvalidArgumentError("config key lr is negative"));
      },
      ::testing::ExitedWithCode(1), "lattice: rank 0: config key lr is negative");
}

TEST(WorldCommunicatorTest, ByHandIsAWorldOfOne) {
  // This binary is run by ctest, not by mpirun.
  absl::StatusOr<std::unique_ptr<MpiRuntime>> mpi = MpiRuntime::Initialize(nullptr, nullptr);
  ASSERT_TRUE(mpi.ok()) << mpi.status();
  EXPECT_FALSE((*mpi)->owns_mpi());
  EXPECT_FALSE((*mpi)->active());
  absl::StatusOr<std::unique_ptr<Communicator>> world = CreateWorldCommunicator();
  ASSERT_TRUE(world.ok()) << world.status();
  EXPECT_EQ((*world)->kind(), "self");
  EXPECT_EQ((*world)->size(), 1);
  absl::StatusOr<std::unique_ptr<Communicator>> mpi_world = CreateMpiWorldCommunicator();
  EXPECT_FALSE(mpi_world.ok());
}

// Names and timeouts pass from a communicator to the ones split from it (SplitGrid then names
// the grid's groups "tp", "dp", ...).
TEST(CommTimeoutTest, SplitsInheritNameAndTimeout) {
  SelfCommunicator c;
  EXPECT_EQ(c.name(), "world");
  EXPECT_EQ(c.timeout().seconds, kDefaultCommTimeoutSeconds);
  EXPECT_TRUE(c.timeout().abort);
  CommTimeout t;
  t.seconds = 7.5;
  t.abort = false;
  t.abort_watchdog_seconds = 3;
  c.set_timeout(t);
  c.set_name("dp");
  absl::StatusOr<std::unique_ptr<Communicator>> s = c.Split(0, 0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->name(), "dp/split");
  EXPECT_EQ((*s)->timeout(), t);
  absl::StatusOr<std::unique_ptr<Communicator>> node = c.SplitByNode();
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_EQ((*node)->name(), "dp/node");
  EXPECT_EQ((*node)->timeout(), t);
}

TEST(CommTimeoutTest, EnvironmentOverridesTheConfiguredSeconds) {
  CommTimeout configured;
  configured.seconds = 600;
  configured.abort_watchdog_seconds = 12;
  absl::StatusOr<CommTimeout> unset = ApplyCommTimeoutEnv(configured, nullptr);
  ASSERT_TRUE(unset.ok());
  EXPECT_EQ(*unset, configured);
  absl::StatusOr<CommTimeout> set = ApplyCommTimeoutEnv(configured, " 2.5 ");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->seconds, 2.5);
  EXPECT_EQ(set->abort_watchdog_seconds, 12);  // only the seconds are overridden
  for (const char* bad : {"", "ten", "0", "-3", "inf", "nan"}) {
    absl::StatusOr<CommTimeout> r = ApplyCommTimeoutEnv(configured, bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(),
                HasSubstr(absl::StrCat("LATTICE_COMM_TIMEOUT_S=\"", bad, "\"")));
  }
}

}  // namespace
}  // namespace lattice
