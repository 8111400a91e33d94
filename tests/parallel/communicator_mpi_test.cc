// LATTICE_MPI_NP: 1 2 4
//
// Every collective of the MPI communicator across real processes. Runs under
// `mpirun -np N` (any N >= 1; run by hand without mpirun it exercises SelfCommunicator).
//
// The harness (main below) initialises MPI through MpiRuntime, lets only rank 0 print the usual
// gtest report (other ranks print their failures, prefixed with their rank) and makes all
// ranks agree on the result: a failure on any rank makes every process exit 1. Test bodies use
// EXPECT_* wherever an early return on one rank would leave the others waiting in a collective.
//
// LATTICE_MPI_TEST_FAIL_RANK=r makes Harness.FailsOnRequestedRank fail on rank r only; the
// world abort test uses it to check that such a failure fails the whole run.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_grid.h"
#include "tests/parallel/mpi_harness.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

using lattice::testing::FreshWorld;
using lattice::testing::World;
int Rank() { return World().rank(); }
int Size() { return World().size(); }

TEST(Harness, FailsOnRequestedRank) {
  const char* fail = std::getenv("LATTICE_MPI_TEST_FAIL_RANK");
  const int fail_rank = fail == nullptr ? -1 : std::atoi(fail);
  EXPECT_NE(Rank(), fail_rank) << "failing on purpose (LATTICE_MPI_TEST_FAIL_RANK)";
}

TEST(MpiWorld, MatchesTheLaunch) {
  absl::StatusOr<LaunchEnv> env = ReadLaunchEnv();
  ASSERT_TRUE(env.ok()) << env.status();
  if (env->launched()) {
    EXPECT_EQ(World().kind(), "mpi");
    EXPECT_EQ(env->size, Size());
    EXPECT_EQ(env->rank, Rank());
  } else {
    EXPECT_EQ(World().kind(), "self");
  }
  EXPECT_GE(Rank(), 0);
  EXPECT_LT(Rank(), Size());

  // Every rank is on this machine, so a node split is the whole world, and the local rank
  // from the environment (OMPI_COMM_WORLD_LOCAL_RANK) agrees with it.
  absl::StatusOr<std::unique_ptr<Communicator>> node = World().SplitByNode();
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_EQ((*node)->size(), Size());
  EXPECT_EQ((*node)->rank(), Rank());
  absl::StatusOr<LaunchEnv> found = DiscoverLaunchEnv(World());
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->rank, Rank());
  EXPECT_EQ(found->size, Size());
  EXPECT_EQ(found->local_rank, Rank());
  EXPECT_EQ(found->local_size, Size());
}

TEST(MpiCollectives, AllReduceSumMaxMinOfEveryType) {
  auto comm = FreshWorld();
  const int p = Size(), r = Rank();
  const int n = 37;
  std::vector<float> f(n), fmax(n), fmin(n);
  std::vector<int32_t> i(n);
  std::vector<uint32_t> u(n);
  std::vector<uint8_t> b(n);
  for (int k = 0; k < n; ++k) {
    f[k] = fmax[k] = fmin[k] = static_cast<float>(r * 100 + k) * 0.5f;
    i[k] = (r - 2) * 1000 - k;
    u[k] = 3000000000u + static_cast<uint32_t>(r);
    b[k] = static_cast<uint8_t>(r + 1);
  }
  EXPECT_TRUE(comm->AllReduce(absl::MakeSpan(f), ReduceOp::kSum).ok());
  EXPECT_TRUE(comm->AllReduce(absl::MakeSpan(fmax), ReduceOp::kMax).ok());
  EXPECT_TRUE(comm->AllReduce(absl::MakeSpan(fmin), ReduceOp::kMin).ok());
  EXPECT_TRUE(comm->AllReduce(absl::MakeSpan(i), ReduceOp::kSum).ok());
  EXPECT_TRUE(comm->AllReduce(absl::MakeSpan(u), ReduceOp::kMax).ok());
  EXPECT_TRUE(comm->AllReduce(absl::MakeSpan(b), ReduceOp::kSum).ok());
  const int rank_sum = p * (p - 1) / 2;
  for (int k = 0; k < n; ++k) {
    EXPECT_EQ(f[k], 0.5f * static_cast<float>(100 * rank_sum + p * k)) << k;
    EXPECT_EQ(fmax[k], 0.5f * static_cast<float>(100 * (p - 1) + k));
    EXPECT_EQ(fmin[k], 0.5f * static_cast<float>(k));
    EXPECT_EQ(i[k], 1000 * (rank_sum - 2 * p) - p * k);
    EXPECT_EQ(u[k], 3000000000u + static_cast<uint32_t>(p - 1));  // above INT32_MAX: unsigned
    EXPECT_EQ(b[k], p * (p + 1) / 2);
  }
}

TEST(MpiCollectives, LargeAllReduce) {
  auto comm = FreshWorld();
  // 4 MiB: large enough that Open MPI switches to its segmented algorithms.
  std::vector<float> v(1 << 20);
  for (size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>((k % 7) + Rank());
  EXPECT_TRUE(comm->AllReduce(absl::MakeSpan(v), ReduceOp::kSum).ok());
  const int p = Size();
  int bad = 0;
  for (size_t k = 0; k < v.size(); ++k) {
    if (v[k] != static_cast<float>(p * static_cast<int>(k % 7) + p * (p - 1) / 2)) ++bad;
  }
  EXPECT_EQ(bad, 0);
}

TEST(MpiCollectives, ReduceScatter) {
  auto comm = FreshWorld();
  const int p = Size(), r = Rank();
  const int c = 5;
  std::vector<int32_t> send(static_cast<size_t>(p * c));
  for (int j = 0; j < p * c; ++j) send[j] = r * 10 + j;
  std::vector<int32_t> recv(c, -1);
  EXPECT_TRUE(comm->ReduceScatter(absl::MakeConstSpan(send), absl::MakeSpan(recv), ReduceOp::kSum).ok());
  for (int k = 0; k < c; ++k) EXPECT_EQ(recv[k], 10 * p * (p - 1) / 2 + p * (r * c + k));

  // In place into this rank's own chunk (the distributed optimizer's layout): the chunk gets
  // the reduction, every other chunk is left alone.
  std::vector<float> buf(static_cast<size_t>(p * c));
  for (int j = 0; j < p * c; ++j) buf[j] = static_cast<float>(j + r);
  float* own = buf.data() + r * c;
  EXPECT_TRUE(comm->ReduceScatter(buf.data(), own, c, CommType::kF32, ReduceOp::kMax).ok());
  for (int j = 0; j < p * c; ++j) {
    const bool mine = j / c == r;
    EXPECT_EQ(buf[j], static_cast<float>(mine ? j + p - 1 : j + r)) << j;
  }
}

TEST(MpiCollectives, AllGather) {
  auto comm = FreshWorld();
  const int p = Size(), r = Rank();
  const int c = 3;
  std::vector<int32_t> send(c), recv(static_cast<size_t>(p * c), -1);
  for (int k = 0; k < c; ++k) send[k] = r * 1000 + k;
  EXPECT_TRUE(comm->AllGather(absl::MakeConstSpan(send), absl::MakeSpan(recv)).ok());
  for (int q = 0; q < p; ++q)
    for (int k = 0; k < c; ++k) EXPECT_EQ(recv[q * c + k], q * 1000 + k);

  // In place: this rank's shard already sits at its place in the full buffer.
  std::vector<uint8_t> full(static_cast<size_t>(p * c), 0);
  for (int k = 0; k < c; ++k) full[r * c + k] = static_cast<uint8_t>(r * 10 + k);
  EXPECT_TRUE(comm->AllGather(full.data() + r * c, full.data(), c, CommType::kU8).ok());
  for (int q = 0; q < p; ++q)
    for (int k = 0; k < c; ++k) EXPECT_EQ(full[q * c + k], q * 10 + k);
}

TEST(MpiCollectives, BroadcastFromEveryRoot) {
  auto comm = FreshWorld();
  for (int root = 0; root < Size(); ++root) {
    std::vector<float> v(9, -1.f);
    if (Rank() == root) std::iota(v.begin(), v.end(), static_cast<float>(root * 100));
    EXPECT_TRUE(comm->Broadcast(absl::MakeSpan(v), root).ok());
    for (int k = 0; k < 9; ++k) EXPECT_EQ(v[k], static_cast<float>(root * 100 + k));

    std::string bytes = Rank() == root ? "hello from " + std::to_string(root) : std::string(12, '?');
    bytes.resize(12, '\0');
    EXPECT_TRUE(comm->Broadcast(bytes.data(), bytes.size(), CommType::kU8, root).ok());
    EXPECT_EQ(std::string(bytes.c_str()), "hello from " + std::to_string(root));
  }
  EXPECT_TRUE(comm->Barrier().ok());
}

TEST(MpiPointToPoint, RingOfBlockingAndNonBlockingMessages) {
  auto comm = FreshWorld();
  const int p = Size(), r = Rank();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;

  // Non-blocking send, blocking receive: no ordering constraints, works for p = 1 too.
  std::vector<int32_t> out = {r, r * r, 42};
  std::vector<int32_t> in(3, -1);
  absl::StatusOr<std::unique_ptr<Work>> s = comm->ISend(out.data(), 3, CommType::kI32, next, 11);
  EXPECT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(comm->Recv(absl::MakeSpan(in), prev, 11).ok());
  if (s.ok()) {
    EXPECT_TRUE((*s)->Wait().ok());
  }
  EXPECT_EQ(in, (std::vector<int32_t>{prev, prev * prev, 42}));

  // Both sides non-blocking, receive posted first, two tags crossing.
  std::vector<float> a_in(4, 0.f), b_in(2, 0.f);
  std::vector<float> a_out(4, static_cast<float>(r) + 0.25f), b_out(2, static_cast<float>(-r));
  std::vector<std::unique_ptr<Work>> works;
  auto keep = [&](absl::StatusOr<std::unique_ptr<Work>> w) {
    EXPECT_TRUE(w.ok()) << w.status();
    if (w.ok()) works.push_back(std::move(w).value());
  };
  keep(comm->IRecv(b_in.data(), 2, CommType::kF32, prev, 2));
  keep(comm->IRecv(a_in.data(), 4, CommType::kF32, prev, 1));
  keep(comm->ISend(a_out.data(), 4, CommType::kF32, next, 1));
  keep(comm->ISend(b_out.data(), 2, CommType::kF32, next, 2));
  EXPECT_TRUE(WaitAll(works).ok());
  EXPECT_EQ(a_in, std::vector<float>(4, static_cast<float>(prev) + 0.25f));
  EXPECT_EQ(b_in, std::vector<float>(2, static_cast<float>(-prev)));

  // Blocking pairs (the pipeline's pattern): even ranks send first, odd ranks receive first.
  if (p >= 2 && !(p % 2 == 1 && r == p - 1)) {
    const int peer = r % 2 == 0 ? r + 1 : r - 1;
    std::vector<uint8_t> mine(100, static_cast<uint8_t>(r)), theirs(100, 255);
    if (r % 2 == 0) {
      EXPECT_TRUE(comm->Send(absl::MakeConstSpan(mine), peer, 3).ok());
      EXPECT_TRUE(comm->Recv(absl::MakeSpan(theirs), peer, 3).ok());
    } else {
      EXPECT_TRUE(comm->Recv(absl::MakeSpan(theirs), peer, 3).ok());
      EXPECT_TRUE(comm->Send(absl::MakeConstSpan(mine), peer, 3).ok());
    }
    EXPECT_EQ(theirs, std::vector<uint8_t>(100, static_cast<uint8_t>(peer)));
  }
}

// The average is the sum divided by the group size, after the sum: values chosen so that every
// sum is exact in f32 make every average the correctly rounded quotient, which is what the
// division gives (exact for powers of two).
TEST(MpiCollectives, AverageIsTheSumOverTheGroupSize) {
  auto comm = FreshWorld();
  const int p = Size(), r = Rank();
  const int n = 11, c = 4;
  const int rank_sum = p * (p - 1) / 2;
  auto expected = [&](int k) {
    return static_cast<float>(100 * rank_sum + p * k) * 0.25f / static_cast<float>(p);
  };
  std::vector<float> v(n), iv(n);
  for (int k = 0; k < n; ++k) v[k] = iv[k] = static_cast<float>(r * 100 + k) * 0.25f;
  EXPECT_TRUE(comm->AllReduce(absl::MakeSpan(v), ReduceOp::kAvg).ok());
  absl::StatusOr<std::unique_ptr<Work>> w =
      comm->IAllReduce(iv.data(), n, CommType::kF32, ReduceOp::kAvg);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE((*w)->Wait().ok());
  for (int k = 0; k < n; ++k) {
    EXPECT_EQ(v[k], expected(k)) << k;
    EXPECT_EQ(iv[k], expected(k)) << k;
  }

  // Reduce-scatter: out of place, and in place into the own chunk (the scratch path).
  std::vector<float> send(static_cast<size_t>(p * c)), recv(c, -1.f);
  for (int j = 0; j < p * c; ++j) send[j] = static_cast<float>(r * 100 + j) * 0.25f;
  std::vector<float> inplace = send;
  EXPECT_TRUE(comm->ReduceScatter(absl::MakeConstSpan(send), absl::MakeSpan(recv), ReduceOp::kAvg).ok());
  absl::StatusOr<std::unique_ptr<Work>> rs = comm->IReduceScatter(
      inplace.data(), inplace.data() + r * c, c, CommType::kF32, ReduceOp::kAvg);
  ASSERT_TRUE(rs.ok()) << rs.status();
  EXPECT_TRUE((*rs)->Wait().ok());
  for (int k = 0; k < c; ++k) {
    EXPECT_EQ(recv[k], expected(r * c + k)) << k;
    EXPECT_EQ(inplace[r * c + k], expected(r * c + k)) << k;
  }

  // Integers refuse it on every rank, before any communication.
  std::vector<int32_t> ints(3, r);
  absl::Status s = comm->AllReduce(absl::MakeSpan(ints), ReduceOp::kAvg);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("the average of i32 is not defined"));
  EXPECT_EQ(comm->counters().all_reduce.calls, 2);
  EXPECT_EQ(comm->counters().all_reduce.bytes, 2 * AllReduceWireBytes(n * 4, p));
  EXPECT_EQ(comm->counters().reduce_scatter.bytes, 2 * ReduceScatterWireBytes(p * c * 4, p));
}

// Megatron's batch_isend_irecv on MPI: a ring exchange in one batch (sends first, as a pipeline
// stage issues them: with one batch the order cannot deadlock), then a pipeline-style batch of
// a send forward and a receive backward, counted as the ISends and IRecvs they are.
TEST(MpiPointToPoint, BatchSendRecvRing) {
  auto comm = FreshWorld();
  const int p = Size(), r = Rank();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  std::vector<float> out(1000, static_cast<float>(r) + 0.5f), in(1000, -1.f);
  std::vector<int32_t> tag_out = {r, 7}, tag_in(2, -1);
  const std::vector<PeerOp> ring = {
      PeerOp::Send(absl::MakeConstSpan(out), next, 0),
      PeerOp::Send(absl::MakeConstSpan(tag_out), next, 1),
      PeerOp::Recv(absl::MakeSpan(in), prev, 0),
      PeerOp::Recv(absl::MakeSpan(tag_in), prev, 1),
  };
  EXPECT_TRUE(comm->BatchSendRecv(ring).ok());
  EXPECT_EQ(in, std::vector<float>(1000, static_cast<float>(prev) + 0.5f));
  EXPECT_EQ(tag_in, (std::vector<int32_t>{prev, 7}));
  EXPECT_EQ(comm->counters().send, (OpCounter{2, 4000 + 8}));
  EXPECT_EQ(comm->counters().recv, (OpCounter{2, 4000 + 8}));

  // 1F1B's steady state: activations forward to the next stage, gradients back from it, in
  // one non-blocking batch per stage (the last stage receives and sends in the other order).
  if (p >= 2) {
    std::vector<uint8_t> act(64, static_cast<uint8_t>(r)), grad_in(64, 255);
    std::vector<uint8_t> act_in(64, 255), grad(64, static_cast<uint8_t>(100 + r));
    std::vector<PeerOp> ops;
    if (r + 1 < p) {
      ops.push_back(PeerOp::Send(absl::MakeConstSpan(act), r + 1, 5));
      ops.push_back(PeerOp::Recv(absl::MakeSpan(grad_in), r + 1, 6));
    }
    if (r > 0) {
      ops.push_back(PeerOp::Recv(absl::MakeSpan(act_in), r - 1, 5));
      ops.push_back(PeerOp::Send(absl::MakeConstSpan(grad), r - 1, 6));
    }
    absl::StatusOr<std::unique_ptr<Work>> w = comm->IBatchSendRecv(ops);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_TRUE((*w)->Wait().ok());
    if (r + 1 < p) EXPECT_EQ(grad_in, std::vector<uint8_t>(64, static_cast<uint8_t>(100 + r + 1)));
    if (r > 0) EXPECT_EQ(act_in, std::vector<uint8_t>(64, static_cast<uint8_t>(r - 1)));
  }
}

TEST(MpiPointToPoint, ShortMessageIsAnError) {
  auto comm = FreshWorld();
  const int p = Size(), r = Rank();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  std::vector<int32_t> out = {1, 2, 3};
  std::vector<int32_t> in(5, 0);
  absl::StatusOr<std::unique_ptr<Work>> s = comm->ISend(out.data(), 3, CommType::kI32, next, 9);
  EXPECT_TRUE(s.ok());
  absl::Status got = comm->Recv(absl::MakeSpan(in), prev, 9);
  EXPECT_EQ(got.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(got.message(), HasSubstr("received a message of 3 elements but expected 5"));
  EXPECT_THAT(got.message(), HasSubstr(absl::StrCat("Recv(i32 x 5) from ", prev, " tag 9 on rank ", r)));
  if (s.ok()) {
    EXPECT_TRUE((*s)->Wait().ok());
  }
}

// The data-parallel pattern: several gradient buckets in flight at once, waited in issue order.
TEST(MpiNonBlocking, OverlappingBucketsAndEveryCollective) {
  auto comm = FreshWorld();
  const int p = Size(), r = Rank();
  constexpr int kBuckets = 4;
  std::vector<std::vector<float>> buckets(kBuckets);
  std::vector<std::unique_ptr<Work>> works;
  for (int b = 0; b < kBuckets; ++b) {
    buckets[b].assign(1000 + 517 * b, static_cast<float>(r + b));
    absl::StatusOr<std::unique_ptr<Work>> w =
        comm->IAllReduce(buckets[b].data(), buckets[b].size(), CommType::kF32, ReduceOp::kSum);
    EXPECT_TRUE(w.ok()) << w.status();
    if (w.ok()) works.push_back(std::move(w).value());
  }
  // Other work may go on here (the backward pass); then wait.
  for (auto& w : works) EXPECT_TRUE(w->Wait().ok());
  for (auto& w : works) EXPECT_TRUE(w->Wait().ok());  // a second Wait is harmless
  for (int b = 0; b < kBuckets; ++b) {
    EXPECT_EQ(buckets[b].front(), static_cast<float>(p * (p - 1) / 2 + p * b));
    EXPECT_EQ(buckets[b].back(), static_cast<float>(p * (p - 1) / 2 + p * b));
  }

  // IReduceScatter (plain and own-chunk) and IAllGather in flight together.
  const int c = 6;
  std::vector<int32_t> rs_send(static_cast<size_t>(p * c)), rs_recv(c, -1);
  for (int j = 0; j < p * c; ++j) rs_send[j] = j * (r + 1);
  std::vector<int32_t> own(static_cast<size_t>(p * c));
  for (int j = 0; j < p * c; ++j) own[j] = 1;
  std::vector<int32_t> ag_send(c, r), ag_recv(static_cast<size_t>(p * c), -1);
  std::vector<float> bc(3, Rank() == p - 1 ? 6.5f : 0.f);
  auto w1 = comm->IReduceScatter(rs_send.data(), rs_recv.data(), c, CommType::kI32, ReduceOp::kSum);
  auto w2 = comm->IReduceScatter(own.data(), own.data() + r * c, c, CommType::kI32, ReduceOp::kSum);
  auto w3 = comm->IAllGather(ag_send.data(), ag_recv.data(), c, CommType::kI32);
  auto w4 = comm->IBroadcast(bc.data(), 3, CommType::kF32, p - 1);
  EXPECT_TRUE(w1.ok() && w2.ok() && w3.ok() && w4.ok());
  if (w1.ok() && w2.ok() && w3.ok() && w4.ok()) {
    EXPECT_TRUE((*w4)->Wait().ok());
    EXPECT_TRUE((*w3)->Wait().ok());
    EXPECT_TRUE((*w2)->Wait().ok());
    EXPECT_TRUE((*w1)->Wait().ok());
  }
  for (int k = 0; k < c; ++k) {
    EXPECT_EQ(rs_recv[k], (r * c + k) * p * (p + 1) / 2);
    EXPECT_EQ(own[r * c + k], p);
  }
  for (int j = 0; j < p * c; ++j) {
    if (j / c != r) {
      EXPECT_EQ(own[j], 1) << "chunk of another rank was modified";
    }
    EXPECT_EQ(ag_recv[j], j / c);
  }
  EXPECT_EQ(bc, std::vector<float>(3, 6.5f));

  // A Work dropped without Wait completes before its destructor returns.
  std::vector<float> dropped(64, 1.f);
  {
    auto w = comm->IAllReduce(dropped.data(), dropped.size(), CommType::kF32, ReduceOp::kSum);
    EXPECT_TRUE(w.ok());
  }
  EXPECT_EQ(dropped[63], static_cast<float>(p));
}

TEST(MpiSplit, GroupsOfEveryGridShape) {
  const int p = Size(), r = Rank();
  int shapes = 0;
  for (int tp = 1; tp <= p; ++tp) {
    for (int pp = 1; pp <= p; ++pp) {
      if (p % (tp * pp) != 0) continue;
      ++shapes;
      absl::StatusOr<ProcessGrid> grid = ProcessGrid::Create(p, r, tp, pp);
      ASSERT_TRUE(grid.ok()) << grid.status();
      SCOPED_TRACE(grid->ToString());
      absl::StatusOr<GridCommunicators> comms = SplitGrid(World(), *grid);
      ASSERT_TRUE(comms.ok()) << comms.status();
      EXPECT_EQ(comms->tp->size(), tp);
      EXPECT_EQ(comms->tp->rank(), grid->tp_rank());
      EXPECT_EQ(comms->dp->size(), grid->dp_size());
      EXPECT_EQ(comms->dp->rank(), grid->dp_rank());
      EXPECT_EQ(comms->pp->size(), pp);
      EXPECT_EQ(comms->pp->rank(), grid->pp_rank());
      EXPECT_EQ(comms->model_parallel->size(), tp * pp);
      EXPECT_EQ(comms->embedding != nullptr, grid->InEmbeddingGroup());

      // Traffic stays inside each group: the sum of world ranks over a group is the sum of
      // the grid's list for it.
      auto check_sum = [&](Communicator* c, const std::vector<int>& members, const char* name) {
        int32_t v = r;
        EXPECT_TRUE(c->AllReduce(&v, 1, CommType::kI32, ReduceOp::kSum).ok());
        EXPECT_EQ(v, std::accumulate(members.begin(), members.end(), 0)) << name;
      };
      check_sum(comms->tp.get(), grid->TpGroup(), "tp");
      check_sum(comms->dp.get(), grid->DpGroup(), "dp");
      check_sum(comms->pp.get(), grid->PpGroup(), "pp");
      check_sum(comms->model_parallel.get(), grid->ModelParallelGroup(), "mp");
      if (comms->embedding != nullptr) {
        check_sum(comms->embedding.get(), grid->EmbeddingGroup(), "embedding");
      }
      // Pipeline neighbours by world rank: send to the next stage through the world.
      if (pp > 1) {
        int32_t token = r, from_prev = -1;
        auto w = World().ISend(&token, 1, CommType::kI32, grid->NextStageRank(), 100);
        EXPECT_TRUE(w.ok());
        EXPECT_TRUE(World().Recv(&from_prev, 1, CommType::kI32, grid->PrevStageRank(), 100).ok());
        if (w.ok()) {
          EXPECT_TRUE((*w)->Wait().ok());
        }
        EXPECT_EQ(from_prev, grid->PrevStageRank());
      }
    }
  }
  const int want_shapes[] = {0, 1, 3, 2, 6};  // (tp, pp) pairs with tp * pp dividing p
  EXPECT_EQ(shapes, want_shapes[std::min(p, 4)]);
}

// The counters follow the convention of communicator.h. The expected numbers are written out
// from the formulas, not computed with the library's helpers.
TEST(MpiCounters, MatchTheStandardFormulas) {
  auto comm = FreshWorld();
  const int64_t p = Size();
  std::vector<float> v(1000, 1.f);                  // 4000 bytes
  std::vector<float> chunk(250), full(250 * p);     // 1000-byte chunks
  EXPECT_TRUE(comm->AllReduce(absl::MakeSpan(v), ReduceOp::kSum).ok());
  EXPECT_TRUE(comm->ReduceScatter(absl::MakeConstSpan(full), absl::MakeSpan(chunk), ReduceOp::kSum).ok());
  EXPECT_TRUE(comm->AllGather(absl::MakeConstSpan(chunk), absl::MakeSpan(full)).ok());
  EXPECT_TRUE(comm->Broadcast(v.data(), 100, CommType::kF32, 0).ok());  // 400 bytes
  auto w = comm->IAllReduce(v.data(), 500, CommType::kF32, ReduceOp::kMax);  // 2000 bytes
  EXPECT_TRUE(w.ok() && (*w)->Wait().ok());
  EXPECT_TRUE(comm->Barrier().ok());

  const CommCounters& k = comm->counters();
  EXPECT_EQ(k.all_reduce.calls, 2);
  EXPECT_EQ(k.all_reduce.bytes, 2 * (p - 1) * 4000 / p + 2 * (p - 1) * 2000 / p);
  EXPECT_EQ(k.reduce_scatter, (OpCounter{1, (p - 1) * 1000}));
  EXPECT_EQ(k.all_gather, (OpCounter{1, (p - 1) * 1000}));
  EXPECT_EQ(k.broadcast, (OpCounter{1, p > 1 ? 400 : 0}));
  EXPECT_EQ(k.barrier_calls, 1);
  if (p == 4) {  // the same, as plain numbers
    EXPECT_EQ(k.all_reduce.bytes, 6000 + 3000);
    EXPECT_EQ(k.reduce_scatter.bytes, 3000);
    EXPECT_EQ(k.BytesSent(), 9000 + 3000 + 3000 + 400);
  }

  // Point to point: a ring of 10 floats; bytes sent and received balance across the world.
  comm->ResetCounters();
  EXPECT_EQ(comm->counters(), CommCounters());
  const int r = Rank(), next = (r + 1) % Size(), prev = (r + Size() - 1) % Size();
  const CommCounters world_before = World().counters();
  auto s = comm->ISend(v.data(), 10, CommType::kF32, next, 0);
  EXPECT_TRUE(comm->Recv(chunk.data(), 10, CommType::kF32, prev, 0).ok());
  EXPECT_TRUE(s.ok() && (*s)->Wait().ok());
  EXPECT_EQ(comm->counters().send, (OpCounter{1, 40}));
  EXPECT_EQ(comm->counters().recv, (OpCounter{1, 40}));
  EXPECT_EQ(comm->counters().BytesSent(), 40);
  // The other communicators keep their own counts: the world did not see the ring.
  EXPECT_EQ(World().counters(), world_before);
}

TEST(MpiAgreeOnStatus, EveryRankNamesTheFailingRank) {
  auto comm = FreshWorld();
  const int p = Size(), r = Rank();
  EXPECT_TRUE(AgreeOnStatus(*comm, absl::OkStatus()).ok());

  // Rank 1 (rank 0 in a world of one) fails; everybody gets its code and message.
  const int failing = p > 1 ? 1 : 0;
  absl::Status local = r == failing ? absl::DataLossError("shard 7 of train.bin is truncated")
                                    : absl::OkStatus();
  absl::Status agreed = AgreeOnStatus(*comm, local);
  EXPECT_EQ(agreed.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(agreed.message(),
            absl::StrCat("rank ", failing, ": shard 7 of train.bin is truncated"));

  // Several failures: the lowest rank's error, and the list.
  if (p >= 4) {
    absl::Status l = (r == 3 || r == 1) ? absl::InvalidArgumentError(absl::StrCat("bad on ", r))
                                        : absl::OkStatus();
    absl::Status a = AgreeOnStatus(*comm, l);
    EXPECT_EQ(a.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(a.message(), "rank 1: bad on 1 (2 ranks failed: 1, 3)");
  }

  // An empty message and a very long one (cut to 64 KiB).
  absl::Status e = AgreeOnStatus(*comm, r == p - 1 ? absl::InternalError("") : absl::OkStatus());
  EXPECT_EQ(e.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(e.message(), absl::StrCat("rank ", p - 1, ": "));
  const std::string huge(100000, 'x');
  absl::Status h = AgreeOnStatus(*comm, r == 0 ? absl::UnavailableError(huge) : absl::OkStatus());
  EXPECT_EQ(h.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(h.message().size(), std::string("rank 0: ").size() + 64 * 1024);

  // Cost: one all-gather of an i32 per call, plus two broadcasts when something failed.
  EXPECT_EQ(comm->counters().all_gather.calls, p >= 4 ? 5 : 4);
  EXPECT_EQ(comm->counters().broadcast.calls, p >= 4 ? 8 : 6);
}

TEST(MpiErrors, RejectedArgumentsNeedNoPeer) {
  auto comm = FreshWorld();
  std::vector<float> v(4, 0.f);
  absl::Status s = comm->Broadcast(v.data(), 4, CommType::kF32, Size());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("(", comm->kind(), ")")));
  s = comm->AllReduce(v.data(), 2, CommType::kF16, ReduceOp::kSum);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  s = comm->Send(v.data(), 4, CommType::kF32, -1, 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm->counters(), CommCounters());
}

TEST(MpiTensor, AllReduceAndGatherTensors) {
  auto comm = FreshWorld();
  Tensor t = Tensor::Zeros({4, 2}, DType::kF32);
  t.Fill(static_cast<float>(Rank() + 1));
  EXPECT_TRUE(comm->AllReduce(t, ReduceOp::kSum).ok());
  EXPECT_EQ(t.f32()[7], static_cast<float>(Size() * (Size() + 1) / 2));
  Tensor ids = Tensor::Zeros({3}, DType::kI32);
  for (int k = 0; k < 3; ++k) ids.i32()[k] = Rank() * 3 + k;
  Tensor all = Tensor::Zeros({3 * Size()}, DType::kI32);
  EXPECT_TRUE(comm->AllGather(ids, all).ok());
  for (int k = 0; k < 3 * Size(); ++k) EXPECT_EQ(all.i32()[k], k);
}

}  // namespace
}  // namespace lattice

LATTICE_MPI_TEST_MAIN(communicator_mpi_test)
