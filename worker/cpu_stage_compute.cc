// StageCompute on the CPU: LlamaStage over a paged KvCache.
#include "common/base/status.h"
#include "worker/shard/shard_cache.h"
#include "worker/stage_compute.h"

namespace chord {
namespace {

class CpuStageCompute final : public StageCompute {
 public:
  CpuStageCompute(std::unique_ptr<LlamaStage> stage, KvCache cache)
      : stage_(std::move(stage)), cache_(std::move(cache)) {}

  bool has_embedding() const override { return stage_->has_embedding(); }
  bool has_output() const override { return stage_->has_output(); }
  uint64_t kv_cache_bytes() const override { return cache_.bytes(); }
  double kv_cache_usage() const override {
    return 1.0 - static_cast<double>(cache_.free_pages()) / static_cast<double>(cache_.total_pages());
  }
  absl::Status Reserve(std::span<const SlotExtent> extents) override { return cache_.Reserve(extents); }
  void Release(int64_t slot) override { cache_.Release(slot); }
  absl::Status Embed(std::span<const int32_t> tokens, float* x) override { return stage_->Embed(tokens, x); }
  absl::Status RunLayers(std::span<const BatchToken> batch, float* x) override {
    return stage_->RunLayers(batch, x, cache_);
  }
  absl::Status Logits(const float* x, int64_t n_rows, float* logits) override {
    return stage_->Logits(x, n_rows, logits);
  }
  void set_between_layers(std::function<void()> hook) override { stage_->set_between_layers(std::move(hook)); }

 private:
  std::unique_ptr<LlamaStage> stage_;
  KvCache cache_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StageCompute>> MakeCpuStageCompute(const TensorSource& tensors,
                                                                  const ModelConfig& config,
                                                                  const StageComputeOptions& options,
                                                                  ThreadPool& pool,
                                                                  ShardCache* streamed) {
  KvCacheShape shape = options.kv;
  shape.n_layers = options.range.end - options.range.first;
  ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(shape));
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaStage> stage,
                   LlamaStage::Load(tensors, config, options.range, pool, streamed));
  return std::make_unique<CpuStageCompute>(std::move(stage), std::move(cache));
}

}  // namespace chord
