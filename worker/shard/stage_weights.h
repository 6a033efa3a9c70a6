// A stage's weights, fetched from a loader: every tensor of the layer range
// when it fits in the memory budget; otherwise the stage tensors (embeddings,
// output) in memory and the layers in a shard cache, filled before the stage
// starts, that streams the rest ahead of demand.
//
// A GPU stage whose weights do not fit its GPU budget (device_split.h) has two
// tiers: the stage tensors and the layers that stay in GPU memory are fetched
// once (and may be dropped once copied there); the layers that stream to the
// GPU are the host tier, in pinned memory: all of them held when the memory
// budget allows, otherwise a shard cache over just those layers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/gguf/gguf_file.h"
#include "common/model/model_config.h"
#include "loader/client/loader_client.h"
#include "worker/memory_pinner.h"
#include "worker/models/llama.h"
#include "worker/models/tensor_source.h"
#include "worker/shard/shard_cache.h"

namespace chord {

// Layers held whole in memory, handed out as a LayerSource.
class HeldLayers final : public LayerSource {
 public:
  explicit HeldLayers(std::unique_ptr<TensorSource> tensors) : tensors_(std::move(tensors)) {}
  absl::StatusOr<const TensorSource*> Acquire(int64_t) override { return tensors_.get(); }
  void Release(int64_t) override {}

 private:
  std::unique_ptr<TensorSource> tensors_;
};

struct StageWeights {
  std::unique_ptr<TensorSource> tensors;
  std::unique_ptr<ShardCache> layers;  // null: every layer is in `tensors` (or `held_layers`)
  uint64_t bytes = 0;                  // what they may take: held tensors plus cache capacity
  // A GPU stage over its GPU budget: layers [device_streamed_first, range.end)
  // stream to the GPU through two buffers of `device_buffer_bytes` from
  // `layers` or, when the memory budget holds them all, `held_layers`.
  // -1: no layer streams to the GPU.
  int64_t device_streamed_first = -1;
  uint64_t device_buffer_bytes = 0;
  std::unique_ptr<HeldLayers> held_layers;
  LayerSource* device_streamed() const {
    return layers != nullptr ? static_cast<LayerSource*>(layers.get()) : held_layers.get();
  }
};

struct StageWeightsOptions {
  std::string label = "stage";       // how log lines name the owner, e.g. "worker w0"
  std::string loader_endpoint;       // for log lines
  uint64_t memory_budget_bytes = 0;  // 0: unlimited
  int prefetch_depth = -1;           // see ShardCacheOptions
  std::function<void()> wait_hook;   // see ShardCacheOptions
  // GPU stages: bytes for weights in GPU memory (0: unlimited), and what pins
  // the host tier's memory (null: pageable).
  uint64_t device_budget_bytes = 0;
  const MemoryPinner* pinner = nullptr;
};

// "12.3 MiB"
std::string Mib(uint64_t bytes);

// Fetches the weights of `range` through `client` (for a GPU stage over its
// GPU budget, as described at the top). When the range streams,
// the cache's fetch thread uses a client of its own from `connect`.
// RESOURCE_EXHAUSTED, naming the minimum, for a budget below the stage
// tensors plus the largest layer.
absl::StatusOr<StageWeights> FetchStageWeights(
    const ModelConfig& config, std::shared_ptr<const gguf::GgufFile> header, LayerRange range,
    LoaderClient& client,
    const std::function<absl::StatusOr<std::unique_ptr<LoaderClient>>()>& connect,
    const StageWeightsOptions& options);

}  // namespace chord
