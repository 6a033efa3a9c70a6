// NCCL groups of a plan, and the coordinator relaying a group's unique id
// from its rank 0 to the other ranks (PROTOCOL.md, "NCCL links").
#include "coordinator/nccl_groups.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "coordinator/model_context.h"
#include "coordinator/worker_pool.h"

namespace chord::coordinator {
namespace {

namespace pb = wire::pb;

std::vector<std::vector<uint32_t>> Describe(const std::vector<NcclPlace>& places) {
  std::vector<std::vector<uint32_t>> out;
  for (const NcclPlace& p : places) out.push_back({p.rank, p.ranks, p.first_stage});
  return out;
}

TEST(PlanNcclGroupsTest, EveryRunOfTwoOrMoreCapableStagesOnDistinctGpusIsOneGroup) {
  using V = std::vector<std::vector<uint32_t>>;
  EXPECT_EQ(Describe(PlanNcclGroups({})), V{});
  EXPECT_EQ(Describe(PlanNcclGroups({"a"})), (V{{0, 0, 0}}));  // alone: nobody to link to
  EXPECT_EQ(Describe(PlanNcclGroups({"a", "b"})), (V{{0, 2, 0}, {1, 2, 0}}));
  EXPECT_EQ(Describe(PlanNcclGroups({"", "a", "b", "c"})),
            (V{{0, 0, 0}, {0, 3, 1}, {1, 3, 1}, {2, 3, 1}}));
  // A CPU stage between GPU ones splits them; a lone GPU stage gets none.
  EXPECT_EQ(Describe(PlanNcclGroups({"a", "b", "", "c", "", "d", "e"})),
            (V{{0, 2, 0}, {1, 2, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 2, 5}, {1, 2, 5}}));
  // Two stages on one GPU never share a group: the run breaks where a GPU repeats.
  EXPECT_EQ(Describe(PlanNcclGroups({"a", "a"})), (V{{0, 0, 0}, {0, 0, 0}}));
  EXPECT_EQ(Describe(PlanNcclGroups({"a", "b", "a", "b"})),
            (V{{0, 2, 0}, {1, 2, 0}, {0, 2, 2}, {1, 2, 2}}));
  EXPECT_EQ(Describe(PlanNcclGroups({"a", "b", "c", "b"})),
            (V{{0, 3, 0}, {1, 3, 0}, {2, 3, 0}, {0, 0, 0}}));
}

class WorkerPoolNcclTest : public ::testing::Test {
 protected:
  WorkerPoolNcclTest() {
    model_.sha256 = "model";
    model_.layer_bytes.assign(8, 1000);
    model_.head_bytes = 100;
    options_.min_workers = 3;
    options_.loader_endpoint = "tcp://127.0.0.1:1";
    pool_ = std::make_unique<WorkerPool>(options_, model_);
  }

  // Says Hello and registers; returns what the pool sent back to anyone.
  std::vector<OutgoingControl> Join(const std::string& id, const std::string& backend, bool nccl,
                                    const std::string& gpu = "") {
    pb::Envelope hello;
    *hello.mutable_hello() = wire::MakeHello("worker", id, "");
    pool_->OnMessage(id, hello, now_);
    pb::Envelope reg;
    pb::RegisterWorker* r = reg.mutable_register_worker();
    r->set_worker_id(id);
    r->set_data_endpoint("tcp://127.0.0.1:" + std::to_string(6000 + id.back()));
    r->set_backend(backend);
    r->set_nccl(nccl);
    r->set_gpu_uuid(gpu.empty() ? "gpu-of-" + id : gpu);
    r->set_weight_bytes_per_second(1e9);
    return pool_->OnMessage(id, reg, now_);
  }

  static std::map<std::string, pb::AssignLayers> Assignments(const std::vector<OutgoingControl>& out) {
    std::map<std::string, pb::AssignLayers> by_worker;
    for (const OutgoingControl& o : out) {
      if (o.envelope.has_assign_layers()) by_worker[o.identity] = o.envelope.assign_layers();
    }
    return by_worker;
  }

  ModelContext model_;
  WorkerPoolOptions options_;
  std::unique_ptr<WorkerPool> pool_;
  Clock::time_point now_ = Clock::now();
};

TEST_F(WorkerPoolNcclTest, AssignmentsCarryTheKvCacheTypeAndExactMode) {
  options_.min_workers = 2;
  options_.kv_type = "f16";
  options_.exact = true;
  pool_ = std::make_unique<WorkerPool>(options_, model_);
  Join("w1", "cuda", true);
  const std::map<std::string, pb::AssignLayers> plan = Assignments(Join("w2", "cuda", true));
  ASSERT_EQ(plan.size(), 2u);
  for (const auto& [id, a] : plan) {
    EXPECT_EQ(a.kv_type(), "f16") << id;
    EXPECT_TRUE(a.exact()) << id;
  }
}

TEST_F(WorkerPoolNcclTest, GroupsConsecutiveGpuStagesAndRelaysTheUniqueId) {
  Join("w1", "cuda", true);
  Join("w2", "cuda", true);
  const std::map<std::string, pb::AssignLayers> plan = Assignments(Join("w3", "cpu", false));
  ASSERT_EQ(plan.size(), 3u);
  // Stages in pipeline order by first layer; find which worker is which.
  std::map<uint32_t, std::string> by_stage;
  for (const auto& [id, a] : plan) by_stage[a.stage_index()] = id;
  ASSERT_EQ(by_stage.size(), 3u);
  int grouped = 0;
  std::string rank0, rank1;
  for (const auto& [id, a] : plan) {
    if (a.nccl_ranks() == 0) continue;
    ++grouped;
    EXPECT_EQ(a.nccl_ranks(), 2u);
    (a.nccl_rank() == 0 ? rank0 : rank1) = id;
  }
  // The two GPU workers are consecutive only when the CPU one is not between them.
  const bool cpu_in_middle = by_stage[1] == "w3";
  if (cpu_in_middle) {
    EXPECT_EQ(grouped, 0);
    return;
  }
  ASSERT_EQ(grouped, 2);
  ASSERT_EQ(plan.at(rank1).stage_index(), plan.at(rank0).stage_index() + 1);

  pb::Envelope id;
  id.mutable_nccl_unique_id()->set_plan_version(pool_->plan_version());
  id.mutable_nccl_unique_id()->set_first_stage(plan.at(rank0).stage_index());
  id.mutable_nccl_unique_id()->set_unique_id(std::string(kNcclUniqueIdBytes, 'u'));
  std::vector<OutgoingControl> relayed = pool_->OnMessage(rank0, id, now_);
  ASSERT_EQ(relayed.size(), 1u);
  EXPECT_EQ(relayed[0].identity, rank1);
  EXPECT_EQ(relayed[0].envelope.nccl_unique_id().unique_id(), std::string(kNcclUniqueIdBytes, 'u'));

  // Not from rank 0, a stale plan, or the wrong size: not relayed.
  EXPECT_TRUE(pool_->OnMessage(rank1, id, now_).empty());
  pb::Envelope stale = id;
  stale.mutable_nccl_unique_id()->set_plan_version(pool_->plan_version() - 1);
  EXPECT_TRUE(pool_->OnMessage(rank0, stale, now_).empty());
  pb::Envelope short_id = id;
  short_id.mutable_nccl_unique_id()->set_unique_id("short");
  EXPECT_TRUE(pool_->OnMessage(rank0, short_id, now_).empty());
}

TEST_F(WorkerPoolNcclTest, CpuWorkersAndWorkersWithoutNcclGetNoGroup) {
  Join("w1", "cuda", false);
  Join("w2", "cpu", false);
  const std::map<std::string, pb::AssignLayers> plan = Assignments(Join("w3", "cuda", true));
  ASSERT_EQ(plan.size(), 3u);
  for (const auto& [id, a] : plan) EXPECT_EQ(a.nccl_ranks(), 0u) << id;
}

TEST_F(WorkerPoolNcclTest, WorkersSharingAGpuGetNoGroup) {
  Join("w1", "cuda", true, "gpu0");
  Join("w2", "cuda", true, "gpu0");
  const std::map<std::string, pb::AssignLayers> plan = Assignments(Join("w3", "cpu", false));
  ASSERT_EQ(plan.size(), 3u);
  for (const auto& [id, a] : plan) EXPECT_EQ(a.nccl_ranks(), 0u) << id;
}

}  // namespace
}  // namespace chord::coordinator
