// A stage's weights, fetched from a loader: every tensor of the layer range
// when it fits in the memory budget; otherwise the stage tensors (embeddings,
// output) in memory and the layers in a shard cache, filled before the stage
// starts, that streams the rest ahead of demand.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/gguf/gguf_file.h"
#include "common/model/model_config.h"
#include "loader/client/loader_client.h"
#include "worker/models/llama.h"
#include "worker/models/tensor_source.h"
#include "worker/shard/shard_cache.h"

namespace chord {

struct StageWeights {
  std::unique_ptr<TensorSource> tensors;
  std::unique_ptr<ShardCache> layers;  // null: every layer is in `tensors`
  uint64_t bytes = 0;                  // what they may take: held tensors plus cache capacity
};

struct StageWeightsOptions {
  std::string label = "stage";       // how log lines name the owner, e.g. "worker w0"
  std::string loader_endpoint;       // for log lines
  uint64_t memory_budget_bytes = 0;  // 0: unlimited
  int prefetch_depth = -1;           // see ShardCacheOptions
  std::function<void()> wait_hook;   // see ShardCacheOptions
};

// "12.3 MiB"
std::string Mib(uint64_t bytes);

// Fetches the weights of `range` through `client`. When the range streams,
// the cache's fetch thread uses a client of its own from `connect`.
// RESOURCE_EXHAUSTED, naming the minimum, for a budget below the stage
// tensors plus the largest layer.
absl::StatusOr<StageWeights> FetchStageWeights(
    const ModelConfig& config, std::shared_ptr<const gguf::GgufFile> header, LayerRange range,
    LoaderClient& client,
    const std::function<absl::StatusOr<std::unique_ptr<LoaderClient>>()>& connect,
    const StageWeightsOptions& options);

}  // namespace chord
