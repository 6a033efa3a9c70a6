#include "worker/shard/stage_weights.h"

#include <algorithm>
#include <vector>

#include "common/base/log.h"
#include "common/base/status.h"
#include "worker/fetched_tensors.h"
#include "worker/shard/device_split.h"
#include "worker/shard/fill_progress.h"

namespace chord {

std::string Mib(uint64_t bytes) { return absl::StrFormat("%.1f MiB", bytes / 1048576.0); }

namespace {

using ConnectFn = std::function<absl::StatusOr<std::unique_ptr<LoaderClient>>()>;

// A shard cache of `capacity` bytes over `range`, fetching through a loader
// connection of its own, filled from the first layer.
absl::StatusOr<std::unique_ptr<ShardCache>> FillShardCache(
    std::shared_ptr<const gguf::GgufFile> header, LayerRange range, std::vector<uint64_t> layer_bytes,
    uint64_t capacity, const ConnectFn& connect, const StageWeightsOptions& options) {
  ASSIGN_OR_RETURN(std::shared_ptr<LoaderClient> layer_client, connect());
  ShardCacheOptions cache_options;
  cache_options.capacity_bytes = capacity;
  cache_options.prefetch_depth = options.prefetch_depth;
  cache_options.wait_hook = options.wait_hook;
  const MemoryPinner* pinner = options.pinner;
  ASSIGN_OR_RETURN(
      std::unique_ptr<ShardCache> cache,
      ShardCache::Create(range, std::move(layer_bytes), cache_options,
                         [layer_client, header, pinner](int64_t layer, const std::atomic<bool>& cancel)
                             -> absl::StatusOr<std::unique_ptr<FetchedTensors>> {
                           if (cancel.load()) return absl::CancelledError("not needed now");
                           return FetchedTensors::FetchBatch(
                               *header, LlamaStage::LayerTensorNames(layer),
                               [&](std::span<const gguf::TensorRead> reads) {
                                 return layer_client->FetchTensors(reads, &cancel);
                               },
                               pinner);
                         }));
  FillProgress progress(absl::StrCat(options.label, ": filling shard cache"));
  RETURN_IF_ERROR(cache->Fill([&progress](int64_t done, int64_t total) { progress.Update(done, total); }));
  return cache;
}

std::vector<std::string> LayerNames(LayerRange range) {
  std::vector<std::string> names;
  for (int64_t l = range.first; l < range.end; ++l) {
    for (std::string& name : LlamaStage::LayerTensorNames(l)) names.push_back(std::move(name));
  }
  return names;
}

}  // namespace

absl::StatusOr<StageWeights> FetchStageWeights(
    const ModelConfig& config, std::shared_ptr<const gguf::GgufFile> header, LayerRange range,
    LoaderClient& client, const ConnectFn& connect, const StageWeightsOptions& options) {
  const std::vector<std::string> stage_names = LlamaStage::StageTensorNames(config, range);
  ASSIGN_OR_RETURN(const uint64_t stage_bytes, FetchedTensors::BytesNeeded(*header, stage_names));
  std::vector<uint64_t> layer_bytes;
  for (int64_t l = range.first; l < range.end; ++l) {
    ASSIGN_OR_RETURN(const uint64_t bytes,
                     FetchedTensors::BytesNeeded(*header, LlamaStage::LayerTensorNames(l)));
    layer_bytes.push_back(bytes);
  }
  uint64_t needed = stage_bytes;
  for (const uint64_t bytes : layer_bytes) needed += bytes;
  const uint64_t budget = options.memory_budget_bytes;
  const auto fetch_tensors = [&client](std::span<const gguf::TensorRead> reads) {
    return client.FetchTensors(reads);
  };
  StageWeights weights;
  if (options.device_budget_bytes > 0) {
    ASSIGN_OR_RETURN(const DeviceSplit split,
                     SplitForDevice(range, stage_bytes, layer_bytes, options.device_budget_bytes));
    if (split.streamed_first < range.end) {
      const LayerRange streamed{split.streamed_first, range.end};
      const std::vector<uint64_t> streamed_bytes(layer_bytes.begin() + (streamed.first - range.first),
                                                 layer_bytes.end());
      uint64_t host_tier = 0;
      for (const uint64_t bytes : streamed_bytes) host_tier += bytes;
      log::Info(
          "%s: layers [%d, %d) take %s, over the GPU budget of %s: [%d, %d) stay in GPU memory, "
          "[%d, %d) (%s) stream to it through two %s buffers",
          options.label, range.first, range.end, Mib(needed), Mib(options.device_budget_bytes), range.first,
          streamed.first, streamed.first, streamed.end, Mib(host_tier), Mib(split.buffer_bytes));
      std::vector<std::string> resident = stage_names;
      for (std::string& name : LayerNames({range.first, streamed.first})) resident.push_back(std::move(name));
      ASSIGN_OR_RETURN(weights.tensors, FetchedTensors::FetchBatch(*header, resident, fetch_tensors));
      weights.device_streamed_first = streamed.first;
      weights.device_buffer_bytes = split.buffer_bytes;
      if (budget == 0 || host_tier <= budget) {
        log::Info("%s: the streamed layers stay in %s host memory", options.label,
                  options.pinner != nullptr ? "pinned" : "pageable");
        ASSIGN_OR_RETURN(std::unique_ptr<FetchedTensors> held,
                         FetchedTensors::FetchBatch(*header, LayerNames(streamed), fetch_tensors, options.pinner));
        weights.held_layers = std::make_unique<HeldLayers>(std::move(held));
        weights.bytes = host_tier;
        return weights;
      }
      ASSIGN_OR_RETURN(weights.layers,
                       FillShardCache(header, streamed, streamed_bytes, budget, connect, options));
      log::Info("%s: the streamed layers go through a %s shard cache (%d of %d layers fit) from %s",
                options.label, Mib(budget), weights.layers->layers_that_fit(), streamed_bytes.size(),
                options.loader_endpoint);
      weights.bytes = budget;
      return weights;
    }
  }
  if (budget == 0 || needed <= budget) {
    log::Info("%s: fetching layers [%d, %d) (%s) from %s; they stay resident", options.label,
              range.first, range.end, Mib(needed), options.loader_endpoint);
    ASSIGN_OR_RETURN(
        weights.tensors,
        FetchedTensors::FetchBatch(*header, LlamaStage::TensorNames(config, range), fetch_tensors));
    weights.bytes = needed;
    return weights;
  }
  const uint64_t largest = *std::max_element(layer_bytes.begin(), layer_bytes.end());
  const uint64_t minimum = stage_bytes + largest;
  if (budget < minimum) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "layers [%d, %d) need a memory budget of at least %d bytes (%s: the largest layer, %d "
        "bytes, plus %d bytes of embedding and output tensors); the budget is %d bytes",
        range.first, range.end, minimum, Mib(minimum), largest, stage_bytes, budget));
  }
  if (budget < minimum + largest) {
    log::Warn(
        "%s: a budget of %s holds one layer at a time: no room to prefetch (at least %d bytes "
        "leave room for one layer ahead)",
        options.label, Mib(budget), minimum + largest);
  }
  ASSIGN_OR_RETURN(weights.tensors,
                   FetchedTensors::FetchBatch(*header, stage_names, fetch_tensors));
  weights.bytes = budget;
  log::Info(
      "%s: layers [%d, %d) take %s, over the %s budget: they stream through a %s shard "
      "cache from %s",
      options.label, range.first, range.end, Mib(needed), Mib(budget), Mib(budget - stage_bytes),
      options.loader_endpoint);
  ASSIGN_OR_RETURN(weights.layers,
                   FillShardCache(header, range, layer_bytes, budget - stage_bytes, connect, options));
  log::Info("%s: %d of %d layers fit in the shard cache, prefetch depth up to %d", options.label,
            weights.layers->layers_that_fit(), layer_bytes.size(), weights.layers->max_prefetch_depth());
  return weights;
}

}  // namespace chord
