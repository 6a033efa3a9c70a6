// StageCompute on the CPU: LlamaStage over a paged KvCache.
#include "common/base/status.h"
#include "worker/sampler.h"
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
    return 1.0 -
           static_cast<double>(cache_.free_pages()) / static_cast<double>(cache_.total_pages());
  }
  absl::Status Reserve(std::span<const SlotExtent> extents) override {
    return cache_.Reserve(extents);
  }
  void Release(int64_t slot) override { cache_.Release(slot); }
  absl::Status Embed(std::span<const int32_t> tokens, float* x) override {
    return stage_->Embed(tokens, x);
  }
  absl::Status RunLayers(std::span<const BatchToken> batch, float* x) override {
    return stage_->RunLayers(batch, x, cache_);
  }
  // Every row's logits are on the host anyway: the greedy tokens are read
  // from them, for the rows the caller does not sample itself.
  absl::Status Logits(const float* x, int64_t n_rows, const LogitsRequest& out) override {
    RETURN_IF_ERROR(stage_->Logits(x, n_rows, out.logits));
    if (out.greedy.empty()) return absl::OkStatus();
    if (out.greedy.size() != static_cast<size_t>(n_rows) ||
        (!out.full.empty() && out.full.size() != static_cast<size_t>(n_rows))) {
      return absl::InvalidArgumentError(
          "a logits request's greedy and full entries are not one a row");
    }
    const auto n_vocab = static_cast<size_t>(stage_->config().n_vocab);
    for (size_t r = 0; r < out.greedy.size(); ++r) {
      if (!out.full.empty() && out.full[r] != 0) continue;
      out.greedy[r] = Sampler::GreedyToken({out.logits + r * n_vocab, n_vocab});
    }
    return absl::OkStatus();
  }
  void set_between_layers(std::function<void()> hook) override {
    stage_->set_between_layers(std::move(hook));
  }

 private:
  std::unique_ptr<LlamaStage> stage_;
  KvCache cache_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StageCompute>> MakeCpuStageCompute(
    const TensorSource& tensors, const ModelConfig& config, const StageComputeOptions& options,
    ThreadPool& pool, ShardCache* streamed) {
  KvCacheShape shape = options.kv;
  shape.n_layers = options.range.end - options.range.first;
  ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(shape));
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaStage> stage,
                   LlamaStage::Load(tensors, config, options.range, pool, streamed));
  return std::make_unique<CpuStageCompute>(std::move(stage), std::move(cache));
}

}  // namespace chord
