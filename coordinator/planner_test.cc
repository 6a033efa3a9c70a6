#include "coordinator/planner.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <random>

#include "gtest/gtest.h"

namespace chord::coordinator {
namespace {

// Slowest stage time of a split, computed directly.
double SlowestStage(const std::vector<uint64_t>& layers, uint64_t head, const std::vector<PlannerWorker>& workers,
                    const LayerPlan& plan) {
  double slowest = 0;
  for (size_t i = 0; i < workers.size(); ++i) {
    const StageRange& r = plan.ranges[i];
    double bytes = 0;
    for (int l = r.first_layer; l < r.end_layer; ++l) bytes += static_cast<double>(layers[l]);
    if (r.end_layer == static_cast<int>(layers.size()) && r.end_layer > r.first_layer) bytes += head;
    slowest = std::max(slowest, bytes / workers[i].weight_bytes_per_second);
  }
  return slowest;
}

// Every layer is held exactly once, in contiguous ranges following worker order.
void ExpectCoversAllLayers(const LayerPlan& plan, size_t n_layers) {
  int next = 0;
  for (const StageRange& r : plan.ranges) {
    if (r.end_layer == r.first_layer) continue;
    EXPECT_EQ(r.first_layer, next);
    next = r.end_layer;
  }
  EXPECT_EQ(next, static_cast<int>(n_layers));
}

TEST(PlannerTest, EqualWorkersSplitEvenly) {
  const std::vector<uint64_t> layers(8, 100);
  const std::vector<PlannerWorker> workers = {{"a", 1.0}, {"b", 1.0}};
  auto plan = PlanLayers(layers, 0, workers);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->ranges[0].first_layer, 0);
  EXPECT_EQ(plan->ranges[0].end_layer, 4);
  EXPECT_EQ(plan->ranges[1].first_layer, 4);
  EXPECT_EQ(plan->ranges[1].end_layer, 8);
  EXPECT_DOUBLE_EQ(plan->slowest_stage_seconds, 400.0);
  EXPECT_EQ(plan->n_stages(), 2);
}

TEST(PlannerTest, HeadBytesShiftLayersAwayFromTheLastStage) {
  const std::vector<uint64_t> layers(4, 100);
  auto plan = PlanLayers(layers, 200, {{"a", 1.0}, {"b", 1.0}});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->ranges[0].end_layer, 3);  // 300 vs 100 + 200
  EXPECT_DOUBLE_EQ(plan->slowest_stage_seconds, 300.0);
}

TEST(PlannerTest, FasterWorkerTakesMoreLayers) {
  const std::vector<uint64_t> layers(9, 10);
  const std::vector<PlannerWorker> workers = {{"slow", 1.0}, {"fast", 2.0}};
  auto plan = PlanLayers(layers, 0, workers);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->ranges[0].end_layer, 3);
  EXPECT_EQ(plan->ranges[1].end_layer - plan->ranges[1].first_layer, 6);
  EXPECT_DOUBLE_EQ(plan->slowest_stage_seconds, 30.0);
}

TEST(PlannerTest, OneWorkerHoldsEverything) {
  auto plan = PlanLayers({5, 6, 7}, 4, {{"only", 2.0}});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->ranges[0].first_layer, 0);
  EXPECT_EQ(plan->ranges[0].end_layer, 3);
  EXPECT_DOUBLE_EQ(plan->slowest_stage_seconds, 11.0);
}

TEST(PlannerTest, MoreWorkersThanLayersLeavesSpares) {
  const std::vector<uint64_t> layers(2, 50);
  const std::vector<PlannerWorker> workers = {{"a", 1}, {"b", 1}, {"c", 1}, {"d", 1}};
  auto plan = PlanLayers(layers, 0, workers);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->n_stages(), 2);
  ExpectCoversAllLayers(*plan, layers.size());
  int spares = 0;
  for (const StageRange& r : plan->ranges) spares += r.first_layer == r.end_layer;
  EXPECT_EQ(spares, 2);
}

TEST(PlannerTest, SlowWorkerIsLeftSpareWhenItWouldBeTheBottleneck) {
  auto plan = PlanLayers({10, 10}, 0, {{"fast", 100.0}, {"crawl", 0.01}});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->ranges[0].end_layer, 2);
  EXPECT_EQ(plan->ranges[1].first_layer, plan->ranges[1].end_layer);
}

TEST(PlannerTest, TiesAreDeterministic) {
  const std::vector<uint64_t> layers(3, 100);
  const std::vector<PlannerWorker> workers = {{"a", 1}, {"b", 1}};
  auto first = PlanLayers(layers, 0, workers);
  ASSERT_TRUE(first.ok());
  for (int i = 0; i < 5; ++i) {
    auto again = PlanLayers(layers, 0, workers);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->ranges[0].end_layer, first->ranges[0].end_layer);
  }
  EXPECT_EQ(first->ranges[0].end_layer, 2);  // earlier workers take the extra layer
}

TEST(PlannerTest, MatchesExhaustiveSearchOnRandomInputs) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t n_layers = 1 + rng() % 7;
    std::vector<uint64_t> layers(n_layers);
    for (uint64_t& b : layers) b = 1 + rng() % 1000;
    const uint64_t head = rng() % 500;
    std::vector<PlannerWorker> workers(2 + rng() % 2);
    for (size_t i = 0; i < workers.size(); ++i) workers[i] = {std::string(1, 'a' + i), 0.5 + (rng() % 100) / 25.0};
    auto plan = PlanLayers(layers, head, workers);
    ASSERT_TRUE(plan.ok());
    ExpectCoversAllLayers(*plan, n_layers);
    // Brute force over all cut points (0 or more layers per worker).
    double best = 1e300;
    std::vector<int> cuts(workers.size() + 1, 0);
    cuts.back() = static_cast<int>(n_layers);
    std::function<void(size_t)> search = [&](size_t k) {
      if (k == workers.size()) {
        LayerPlan candidate;
        for (size_t i = 0; i < workers.size(); ++i) candidate.ranges.push_back({workers[i].id, cuts[i], cuts[i + 1]});
        best = std::min(best, SlowestStage(layers, head, workers, candidate));
        return;
      }
      for (int c = cuts[k - 1]; c <= static_cast<int>(n_layers); ++c) {
        cuts[k] = c;
        search(k + 1);
      }
    };
    search(1);
    EXPECT_NEAR(SlowestStage(layers, head, workers, *plan), best, best * 1e-9);
    EXPECT_NEAR(plan->slowest_stage_seconds, best, best * 1e-9);
  }
}

// Speeds come from the workers: an absurd claim must still give a plan that
// holds every layer (a worker once claimed 1e-307 bytes/s, and the plan it got
// had no stage at all).
TEST(PlannerTest, AbsurdSpeedsStillPlaceEveryLayer) {
  const std::vector<uint64_t> layers = {1000, 1000, 1000};
  for (double speed : {1e-307, -1.0, std::numeric_limits<double>::infinity(),
                       std::numeric_limits<double>::quiet_NaN()}) {
    absl::StatusOr<LayerPlan> alone = PlanLayers(layers, 500, {{"a", speed}});
    ASSERT_TRUE(alone.ok()) << speed << ": " << alone.status();
    ExpectCoversAllLayers(*alone, layers.size());
    absl::StatusOr<LayerPlan> with_others = PlanLayers(layers, 500, {{"a", 1e9}, {"b", speed}, {"c", 1e-300}});
    ASSERT_TRUE(with_others.ok()) << speed << ": " << with_others.status();
    ExpectCoversAllLayers(*with_others, layers.size());
    EXPECT_GT(with_others->n_stages(), 0);
  }
}

TEST(PlannerTest, RejectsEmptyInputs) {
  EXPECT_EQ(PlanLayers({}, 0, {{"a", 1}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanLayers({1}, 0, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chord::coordinator
