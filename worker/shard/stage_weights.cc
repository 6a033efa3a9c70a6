#include "worker/shard/stage_weights.h"

#include <algorithm>
#include <vector>

#include "common/base/log.h"
#include "common/base/status.h"
#include "worker/fetched_tensors.h"
#include "worker/shard/fill_progress.h"

namespace chord {

std::string Mib(uint64_t bytes) { return absl::StrFormat("%.1f MiB", bytes / 1048576.0); }

absl::StatusOr<StageWeights> FetchStageWeights(
    const ModelConfig& config, std::shared_ptr<const gguf::GgufFile> header, LayerRange range,
    LoaderClient& client,
    const std::function<absl::StatusOr<std::unique_ptr<LoaderClient>>()>& connect,
    const StageWeightsOptions& options) {
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
  // The cache's fetch thread gets a loader connection of its own.
  ASSIGN_OR_RETURN(std::shared_ptr<LoaderClient> layer_client, connect());
  ShardCacheOptions cache_options;
  cache_options.capacity_bytes = budget - stage_bytes;
  cache_options.prefetch_depth = options.prefetch_depth;
  cache_options.wait_hook = options.wait_hook;
  ASSIGN_OR_RETURN(
      weights.layers,
      ShardCache::Create(range, layer_bytes, cache_options,
                         [layer_client, header](int64_t layer, const std::atomic<bool>& cancel)
                             -> absl::StatusOr<std::unique_ptr<FetchedTensors>> {
                           if (cancel.load()) return absl::CancelledError("not needed now");
                           return FetchedTensors::FetchBatch(
                               *header, LlamaStage::LayerTensorNames(layer),
                               [&](std::span<const gguf::TensorRead> reads) {
                                 return layer_client->FetchTensors(reads, &cancel);
                               });
                         }));
  log::Info(
      "%s: layers [%d, %d) take %s, over the %s budget: they stream through a %s shard "
      "cache (%d of %d layers fit, prefetch depth up to %d) from %s",
      options.label, range.first, range.end, Mib(needed), Mib(budget),
      Mib(cache_options.capacity_bytes), weights.layers->layers_that_fit(), layer_bytes.size(),
      weights.layers->max_prefetch_depth(), options.loader_endpoint);
  FillProgress progress(absl::StrCat(options.label, ": filling shard cache"));
  RETURN_IF_ERROR(weights.layers->Fill(
      [&progress](int64_t done, int64_t total) { progress.Update(done, total); }));
  return weights;
}

}  // namespace chord
