// Splits a model's layers into contiguous stages, one per worker, so that the
// slowest stage's time per token is as small as possible. A stage's time is
// the bytes its layers read per token divided by its worker's measured
// weight_bytes_per_second; the last stage also reads the output head.
//
// Pure function, thread-compatible. Deterministic: among splits with the same
// slowest stage, the one with the smallest sum of squared stage times (the most
// even) wins, and remaining ties go to the split that gives earlier workers more layers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace chord::coordinator {

struct PlannerWorker {
  std::string id;
  // <= 0 or not finite: unknown, taken as the slowest known speed; at least 1e-6 bytes/s.
  double weight_bytes_per_second = 0;
};

struct StageRange {
  std::string worker_id;
  int first_layer = 0;
  int end_layer = 0;  // exclusive; == first_layer for a spare
};

struct LayerPlan {
  // One entry per input worker, in input order. Workers holding layers are the
  // stages, in pipeline order; the others are spares.
  std::vector<StageRange> ranges;
  double slowest_stage_seconds = 0;  // per token
  int n_stages() const;
};

// INVALID_ARGUMENT when there are no workers or no layers.
absl::StatusOr<LayerPlan> PlanLayers(const std::vector<uint64_t>& layer_bytes, uint64_t head_bytes,
                                     const std::vector<PlannerWorker>& workers);

}  // namespace chord::coordinator
