#include "coordinator/planner.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace chord::coordinator {
namespace {

struct Cost {
  double max = std::numeric_limits<double>::infinity();
  double sum_squares = std::numeric_limits<double>::infinity();
  bool operator<(const Cost& other) const {
    if (std::isinf(max) || std::isinf(other.max)) return max < other.max;
    // Relative tolerance so that float noise does not decide ties.
    const double eps = 1e-12 * std::max(1.0, std::max(max, other.max));
    if (max < other.max - eps) return true;
    if (max > other.max + eps) return false;
    return sum_squares < other.sum_squares - 1e-12 * std::max(1.0, other.sum_squares);
  }
};

// Speeds are the workers' own claims. With a tiny one (1e-307) bytes / speed
// overflows to infinity for every split that gives that worker a layer, and
// with such a worker alone no split has a finite cost: the plan would hold no
// stage at all. So claims are taken as at least kMinSpeed, which keeps stage
// times (at most ~1e25 bytes / kMinSpeed) and their squares finite, and a
// non-finite claim counts as unknown.
constexpr double kMinSpeed = 1e-6;  // bytes per second

std::vector<double> Speeds(const std::vector<PlannerWorker>& workers) {
  const auto known = [](double speed) { return std::isfinite(speed) && speed > 0; };
  double slowest = 0;
  for (const PlannerWorker& w : workers) {
    if (known(w.weight_bytes_per_second) && (slowest == 0 || w.weight_bytes_per_second < slowest)) {
      slowest = w.weight_bytes_per_second;
    }
  }
  if (slowest == 0) slowest = 1;
  std::vector<double> speeds;
  for (const PlannerWorker& w : workers) {
    const double speed = known(w.weight_bytes_per_second) ? w.weight_bytes_per_second : slowest;
    speeds.push_back(std::max(speed, kMinSpeed));
  }
  return speeds;
}

}  // namespace

int LayerPlan::n_stages() const {
  return static_cast<int>(std::count_if(ranges.begin(), ranges.end(), [](const StageRange& r) {
    return r.end_layer > r.first_layer;
  }));
}

absl::StatusOr<LayerPlan> PlanLayers(const std::vector<uint64_t>& layer_bytes, uint64_t head_bytes,
                                     const std::vector<PlannerWorker>& workers) {
  if (workers.empty()) return absl::InvalidArgumentError("no workers to plan for");
  if (layer_bytes.empty()) return absl::InvalidArgumentError("the model has no layers");
  const size_t n_layers = layer_bytes.size();
  const size_t n_workers = workers.size();
  const std::vector<double> speeds = Speeds(workers);
  std::vector<double> prefix(n_layers + 1, 0);
  for (size_t i = 0; i < n_layers; ++i) prefix[i + 1] = prefix[i] + static_cast<double>(layer_bytes[i]);

  // best[j][i]: the best cost of giving layers [0, i) to workers [0, j);
  // take[j][i]: how many layers worker j-1 takes in that split.
  std::vector<std::vector<Cost>> best(n_workers + 1, std::vector<Cost>(n_layers + 1));
  std::vector<std::vector<size_t>> take(n_workers + 1, std::vector<size_t>(n_layers + 1, 0));
  best[0][0] = Cost{0, 0};
  for (size_t j = 1; j <= n_workers; ++j) {
    for (size_t i = 0; i <= n_layers; ++i) {
      for (size_t count = 0; count <= i; ++count) {  // fewer first: ties favour earlier workers
        const Cost& before = best[j - 1][i - count];
        if (before.max == std::numeric_limits<double>::infinity()) continue;
        double bytes = prefix[i] - prefix[i - count];
        if (count > 0 && i == n_layers) bytes += static_cast<double>(head_bytes);
        const double seconds = bytes / speeds[j - 1];
        const Cost candidate{std::max(before.max, seconds), before.sum_squares + seconds * seconds};
        if (candidate < best[j][i]) {
          best[j][i] = candidate;
          take[j][i] = count;
        }
      }
    }
  }
  if (!std::isfinite(best[n_workers][n_layers].max)) {
    // Cannot happen with speeds of at least kMinSpeed; a plan without stages would.
    return absl::InternalError("no split of the layers has a finite cost");
  }
  LayerPlan plan;
  plan.slowest_stage_seconds = best[n_workers][n_layers].max;
  plan.ranges.resize(n_workers);
  size_t end = n_layers;
  for (size_t j = n_workers; j > 0; --j) {
    const size_t count = take[j][end];
    plan.ranges[j - 1] = StageRange{workers[j - 1].id, static_cast<int>(end - count), static_cast<int>(end)};
    end -= count;
  }
  // Spares hold nothing; give them an empty range at 0 so that they read as such.
  for (StageRange& range : plan.ranges) {
    if (range.first_layer == range.end_layer) range.first_layer = range.end_layer = 0;
  }
  return plan;
}

}  // namespace chord::coordinator
