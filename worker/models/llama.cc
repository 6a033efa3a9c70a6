#include "worker/models/llama.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "common/base/status.h"
#include "common/gguf/gguf_file.h"
#include "common/quant/quant.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "worker/models/tensor_lookup.h"
#include "worker/models/tensor_source.h"

namespace chord {

namespace {

constexpr const char* kLayerTensors[] = {"attn_norm", "attn_q",      "attn_k",
                                         "attn_v",    "attn_output", "ffn_norm",
                                         "ffn_gate",  "ffn_up",      "ffn_down"};

}  // namespace

std::vector<std::string> LlamaStage::StageTensorNames(const ModelConfig& config, LayerRange range) {
  std::vector<std::string> names;
  const bool first = range.first == 0;
  const bool last = range.end == config.n_layer;
  if (first || (last && config.tied_embeddings)) names.push_back(kTokenEmbdName);
  if (config.has_rope_freq_factors) names.push_back(kRopeFreqsName);
  if (last) {
    names.push_back(kOutputNormName);
    if (!config.tied_embeddings) names.push_back(kOutputName);
  }
  return names;
}

std::vector<std::string> LlamaStage::LayerTensorNames(int64_t layer) {
  std::vector<std::string> names;
  for (const char* suffix : kLayerTensors) names.push_back(LayerTensorName(layer, suffix));
  return names;
}

std::vector<std::string> LlamaStage::TensorNames(const ModelConfig& config, LayerRange range) {
  std::vector<std::string> names = StageTensorNames(config, range);
  for (int64_t l = range.first; l < range.end; ++l) {
    for (std::string& name : LayerTensorNames(l)) names.push_back(std::move(name));
  }
  return names;
}

absl::StatusOr<LlamaStage::Layer> LlamaStage::LoadLayer(const TensorSource& source,
                                                        const ModelConfig& config, int64_t l) {
  const int64_t n_embd = config.n_embd;
  const int64_t n_kv = config.n_embd_kv();
  Layer layer;
  ASSIGN_OR_RETURN(layer.attn_norm, LoadVector(source, LayerTensorName(l, "attn_norm"), n_embd));
  ASSIGN_OR_RETURN(layer.wq, LookupMatrix(source, LayerTensorName(l, "attn_q"), n_embd, n_embd));
  ASSIGN_OR_RETURN(layer.wk, LookupMatrix(source, LayerTensorName(l, "attn_k"), n_embd, n_kv));
  ASSIGN_OR_RETURN(layer.wv, LookupMatrix(source, LayerTensorName(l, "attn_v"), n_embd, n_kv));
  ASSIGN_OR_RETURN(layer.wo,
                   LookupMatrix(source, LayerTensorName(l, "attn_output"), n_embd, n_embd));
  ASSIGN_OR_RETURN(layer.ffn_norm, LoadVector(source, LayerTensorName(l, "ffn_norm"), n_embd));
  ASSIGN_OR_RETURN(layer.gate,
                   LookupMatrix(source, LayerTensorName(l, "ffn_gate"), n_embd, config.n_ff));
  ASSIGN_OR_RETURN(layer.up,
                   LookupMatrix(source, LayerTensorName(l, "ffn_up"), n_embd, config.n_ff));
  ASSIGN_OR_RETURN(layer.down,
                   LookupMatrix(source, LayerTensorName(l, "ffn_down"), config.n_ff, n_embd));
  return layer;
}

absl::StatusOr<std::unique_ptr<LlamaStage>> LlamaStage::Load(const TensorSource& source,
                                                             const ModelConfig& config,
                                                             LayerRange range, ThreadPool& pool,
                                                             LayerSource* layers) {
  if (range.first < 0 || range.end > config.n_layer || range.first >= range.end) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layer range [%d, %d) is not within the model's %d layers", range.first,
                        range.end, config.n_layer));
  }
  std::unique_ptr<LlamaStage> stage(new LlamaStage(config, range, pool));
  const int64_t n_embd = config.n_embd;
  stage->streamed_ = layers;
  for (int64_t l = range.first; layers == nullptr && l < range.end; ++l) {
    ASSIGN_OR_RETURN(Layer layer, LoadLayer(source, config, l));
    stage->layers_.push_back(std::move(layer));
  }
  if (config.has_rope_freq_factors) {
    ASSIGN_OR_RETURN(stage->rope_freq_factors_,
                     LoadVector(source, kRopeFreqsName, config.n_rot / 2));
  }
  if (stage->has_embedding() || (stage->has_output() && config.tied_embeddings)) {
    ASSIGN_OR_RETURN(stage->token_embd_,
                     LookupMatrix(source, kTokenEmbdName, n_embd, config.n_vocab));
  }
  if (stage->has_output()) {
    ASSIGN_OR_RETURN(stage->output_norm_, LoadVector(source, kOutputNormName, n_embd));
    if (config.tied_embeddings) {
      stage->output_ = stage->token_embd_;
    } else {
      ASSIGN_OR_RETURN(stage->output_, LookupMatrix(source, kOutputName, n_embd, config.n_vocab));
    }
  }
  return stage;
}

void LlamaStage::Reserve(int64_t n_tokens) {
  const auto grow = [](std::vector<float>& buffer, int64_t size) {
    if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
  };
  grow(norm_, n_tokens * config_.n_embd);
  grow(q_, n_tokens * config_.n_embd);
  grow(k_, n_tokens * config_.n_embd_kv());
  grow(v_, n_tokens * config_.n_embd_kv());
  grow(attn_, n_tokens * config_.n_embd);
  grow(proj_, n_tokens * config_.n_embd);
  grow(gate_, n_tokens * config_.n_ff);
  grow(up_, n_tokens * config_.n_ff);
}

absl::Status LlamaStage::Embed(std::span<const int32_t> tokens, float* x) {
  if (!has_embedding()) return absl::InternalError("this stage does not hold the embeddings");
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t] < 0 || tokens[t] >= config_.n_vocab) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "token id %d is outside the vocabulary (%d tokens)", tokens[t], config_.n_vocab));
    }
  }
  for (size_t t = 0; t < tokens.size(); ++t) {
    RETURN_IF_ERROR(quant::DequantizeRow(token_embd_.type, token_embd_.row(tokens[t]),
                                         x + static_cast<int64_t>(t) * config_.n_embd,
                                         config_.n_embd));
  }
  return absl::OkStatus();
}

absl::Status LlamaStage::RunLayers(std::span<const BatchToken> batch, float* x, KvCache& cache) {
  const int64_t n_tokens = static_cast<int64_t>(batch.size());
  for (const BatchToken& token : batch) {
    if (token.slot < 0 || token.slot >= cache.shape().n_slots || token.position < 0 ||
        token.position >= cache.shape().n_ctx) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "batch token (slot %d, position %d) is outside the KV cache (%d slots of %d positions)",
          token.slot, token.position, cache.shape().n_slots, cache.shape().n_ctx));
    }
    if (token.position >= cache.slot_pages(token.slot) * cache.shape().page_size) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "batch token (slot %d, position %d): no KV page is reserved for the position", token.slot,
          token.position));
    }
  }
  Reserve(n_tokens);
  for (int64_t i = 0; i < range_.end - range_.first; ++i) {
    if (between_layers_ && i > 0) between_layers_();
    if (streamed_ == nullptr) {
      RETURN_IF_ERROR(RunLayer(layers_[static_cast<size_t>(i)], i, batch, x, cache));
      continue;
    }
    const int64_t l = range_.first + i;
    ASSIGN_OR_RETURN(const TensorSource* tensors, streamed_->Acquire(l));
    absl::StatusOr<Layer> layer = LoadLayer(*tensors, config_, l);
    absl::Status status = layer.status();
    if (status.ok()) status = RunLayer(*layer, i, batch, x, cache);
    streamed_->Release(l);
    RETURN_IF_ERROR(status);
  }
  return absl::OkStatus();
}

absl::Status LlamaStage::RunLayer(const Layer& layer, int64_t layer_index,
                                  std::span<const BatchToken> batch, float* x, KvCache& cache) {
  const int64_t n_tokens = static_cast<int64_t>(batch.size());
  const int64_t n_embd = config_.n_embd;
  for (int64_t t = 0; t < n_tokens; ++t) {
    kernels::RmsNorm(x + t * n_embd, layer.attn_norm.data(), n_embd, config_.rms_eps,
                     norm_.data() + t * n_embd);
  }
  RETURN_IF_ERROR(Attention(layer, layer_index, batch, cache));
  RETURN_IF_ERROR(matmul_.Run(layer.wo, attn_.data(), n_tokens, proj_.data()));
  kernels::AddInPlace(x, proj_.data(), n_tokens * n_embd);
  return FeedForward(layer, n_tokens, x);
}

absl::Status LlamaStage::Attention(const Layer& layer, int64_t layer_index,
                                   std::span<const BatchToken> batch, KvCache& cache) {
  const int64_t n_tokens = static_cast<int64_t>(batch.size());
  const int64_t n_embd = config_.n_embd;
  const int64_t n_kv = config_.n_embd_kv();
  RETURN_IF_ERROR(matmul_.Run(layer.wq, norm_.data(), n_tokens, q_.data()));
  RETURN_IF_ERROR(matmul_.Run(layer.wk, norm_.data(), n_tokens, k_.data()));
  RETURN_IF_ERROR(matmul_.Run(layer.wv, norm_.data(), n_tokens, v_.data()));
  const float* freq_factors = rope_freq_factors_.empty() ? nullptr : rope_freq_factors_.data();
  const auto head_dim = static_cast<int>(config_.head_dim);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const BatchToken& token = batch[static_cast<size_t>(t)];
    kernels::RopeNormal(q_.data() + t * n_embd, static_cast<int>(config_.n_head), head_dim,
                        static_cast<int>(config_.n_rot), token.position, config_.rope_freq_base,
                        config_.rope_freq_scale, freq_factors);
    kernels::RopeNormal(k_.data() + t * n_kv, static_cast<int>(config_.n_head_kv), head_dim,
                        static_cast<int>(config_.n_rot), token.position, config_.rope_freq_base,
                        config_.rope_freq_scale, freq_factors);
    cache.Store(layer_index, token.slot, token.position, k_.data() + t * n_kv,
                v_.data() + t * n_kv);
  }
  // Runs of consecutive positions of one sequence (a prompt, or a chunk of one)
  // go through attention together, up to kQueryRun tokens: they share every
  // cached row they read, and each token's result is the one it gets alone.
  // Every (run, head) pair is one task; each thread has its own scores rows.
  constexpr int kQueryRun = 8;
  std::vector<QueryRun>& runs = runs_;
  runs.clear();
  for (int64_t t = 0; t < n_tokens; ++t) {
    const BatchToken& token = batch[static_cast<size_t>(t)];
    if (!runs.empty()) {
      QueryRun& last = runs.back();
      const BatchToken& previous = batch[static_cast<size_t>(last.first + last.count - 1)];
      if (last.count < kQueryRun && previous.slot == token.slot &&
          previous.position + 1 == token.position) {
        ++last.count;
        continue;
      }
    }
    runs.push_back({t, 1});
  }
  const kernels::AttentionShape shape{static_cast<int>(config_.n_head),
                                      static_cast<int>(config_.n_head_kv), head_dim};
  const int64_t scores_per_thread = kQueryRun * (cache.shape().n_ctx + kQueryRun);
  if (static_cast<int64_t>(scores_.size()) < pool_.size() * scores_per_thread) {
    scores_.resize(static_cast<size_t>(pool_.size() * scores_per_thread));
  }
  // A task reads about position * head_dim cache elements per token; group
  // small tasks so that waking a thread is worth it.
  const int64_t work = std::max<int64_t>(1, (batch.back().position + 1) * config_.head_dim);
  const int64_t grain = std::max<int64_t>(1, 16384 / work);
  const auto n_runs = static_cast<int64_t>(runs.size());
  pool_.ParallelFor(n_runs * config_.n_head, grain, [&](int64_t begin, int64_t end) {
    float* scores = scores_.data() + ThreadPool::ThreadIndex() * scores_per_thread;
    for (int64_t task = begin; task < end; ++task) {
      const QueryRun& run = runs[static_cast<size_t>(task / config_.n_head)];
      const int head = static_cast<int>(task % config_.n_head);
      const BatchToken& token = batch[static_cast<size_t>(run.first)];
      kernels::AttendTokens(shape, q_.data() + run.first * n_embd, n_embd,
                            cache.Keys(layer_index, token.slot),
                            cache.Values(layer_index, token.slot), token.position + 1, run.count,
                            head, scores, attn_.data() + run.first * n_embd, n_embd);
    }
  });
  return absl::OkStatus();
}

absl::Status LlamaStage::FeedForward(const Layer& layer, int64_t n_tokens, float* x) {
  const int64_t n_embd = config_.n_embd;
  for (int64_t t = 0; t < n_tokens; ++t) {
    kernels::RmsNorm(x + t * n_embd, layer.ffn_norm.data(), n_embd, config_.rms_eps,
                     norm_.data() + t * n_embd);
  }
  RETURN_IF_ERROR(matmul_.Run(layer.gate, norm_.data(), n_tokens, gate_.data()));
  RETURN_IF_ERROR(matmul_.Run(layer.up, norm_.data(), n_tokens, up_.data()));
  kernels::SwiGlu(gate_.data(), up_.data(), n_tokens * config_.n_ff);
  RETURN_IF_ERROR(matmul_.Run(layer.down, gate_.data(), n_tokens, proj_.data()));
  kernels::AddInPlace(x, proj_.data(), n_tokens * n_embd);
  return absl::OkStatus();
}

absl::Status LlamaStage::Logits(const float* x, int64_t n_rows, float* logits) {
  if (!has_output()) return absl::InternalError("this stage does not hold the output layer");
  Reserve(n_rows);
  const int64_t n_embd = config_.n_embd;
  for (int64_t t = 0; t < n_rows; ++t) {
    kernels::RmsNorm(x + t * n_embd, output_norm_.data(), n_embd, config_.rms_eps,
                     norm_.data() + t * n_embd);
  }
  return matmul_.Run(output_, norm_.data(), n_rows, logits);
}

}  // namespace chord
