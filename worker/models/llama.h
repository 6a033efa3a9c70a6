// The Llama architecture (Llama 1/2/3, Mistral-style GQA): one pre-norm
// decoder layer = RMSNorm -> Q/K/V -> RoPE -> causal GQA attention over the KV
// cache -> output projection -> residual; RMSNorm -> SwiGLU FFN -> residual.
//
// A LlamaStage runs a contiguous range of layers [first_layer, end_layer) of a
// model, so that a pipeline can split the layer stack across workers; the stage
// holding layer 0 also embeds tokens, the one holding the last layer also
// computes logits. Activations between stages are the float32 residual stream.
//
// Weights are views into memory owned by the TensorSource (an mmap'd GGUF file
// or tensors fetched from a loader), which must outlive the stage.
//
// Thread-safety: one compute thread drives a stage; it parallelizes internally
// on the ThreadPool it was given.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/model_config.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/weight_matrix.h"
#include "worker/kv_cache.h"

namespace chord {

class TensorSource;

// Supplies the tensors of one layer at a time, for a stage whose layers do not
// all stay in memory (worker/shard/shard_cache.h). Acquire blocks until the
// layer's tensors are in memory and keeps them there until Release.
class LayerSource {
 public:
  virtual ~LayerSource() = default;
  virtual absl::StatusOr<const TensorSource*> Acquire(int64_t layer) = 0;
  virtual void Release(int64_t layer) = 0;
};

// One token of a micro-batch: which sequence slot of the KV cache it belongs
// to and its position in that sequence. Tokens of one slot appear in position
// order and positions continue from what the cache already holds.
struct BatchToken {
  int64_t slot = 0;
  int64_t position = 0;
};

struct LayerRange {
  int64_t first = 0;
  int64_t end = 0;  // exclusive
};

class LlamaStage {
 public:
  // The tensors the range needs: its layers, plus token_embd for the first
  // stage (and a tied output), output_norm and output for the last.
  static std::vector<std::string> TensorNames(const ModelConfig& config, LayerRange range);
  // The part of TensorNames that is not a layer's (embeddings, output, rope factors).
  static std::vector<std::string> StageTensorNames(const ModelConfig& config, LayerRange range);
  // The tensors of one layer.
  static std::vector<std::string> LayerTensorNames(int64_t layer);

  // Builds the stage over `source`. With `layers` null, `source` holds every
  // tensor of the range. Otherwise `source` holds the stage tensors only and
  // each layer's come from `layers` while it runs (not owned; must outlive the
  // stage).
  static absl::StatusOr<std::unique_ptr<LlamaStage>> Load(const TensorSource& source,
                                                          const ModelConfig& config,
                                                          LayerRange range, ThreadPool& pool,
                                                          LayerSource* layers = nullptr);

  const ModelConfig& config() const { return config_; }
  LayerRange range() const { return range_; }
  bool has_embedding() const { return range_.first == 0; }
  bool has_output() const { return range_.end == config_.n_layer; }

  // Looks up token embeddings: x gets tokens.size() rows of n_embd floats.
  // INVALID_ARGUMENT for an id outside the vocabulary.
  absl::Status Embed(std::span<const int32_t> tokens, float* x);

  // Runs this stage's layers over the residual stream x (batch.size() rows of
  // n_embd floats, updated in place), reading and extending `cache`.
  absl::Status RunLayers(std::span<const BatchToken> batch, float* x, KvCache& cache);

  // Called on the computing thread after each layer of RunLayers: a long step
  // (a prefill chunk on few threads can take seconds) lets the worker answer
  // the coordinator's heartbeats in between.
  void set_between_layers(std::function<void()> hook) { between_layers_ = std::move(hook); }

  // Final norm and output projection of `n_rows` rows of x into n_vocab logits each.
  absl::Status Logits(const float* x, int64_t n_rows, float* logits);

 private:
  std::function<void()> between_layers_;
  struct Layer {
    std::vector<float> attn_norm;
    kernels::WeightMatrix wq, wk, wv, wo;
    std::vector<float> ffn_norm;
    kernels::WeightMatrix gate, up, down;
  };

  LlamaStage(const ModelConfig& config, LayerRange range, ThreadPool& pool)
      : config_(config), range_(range), pool_(pool), matmul_(pool) {}
  // Views of layer `l`'s tensors in `source` (norm weights are copied).
  static absl::StatusOr<Layer> LoadLayer(const TensorSource& source, const ModelConfig& config,
                                         int64_t l);
  absl::Status RunLayer(const Layer& layer, int64_t layer_index, std::span<const BatchToken> batch,
                        float* x, KvCache& cache);
  absl::Status Attention(const Layer& layer, int64_t layer_index, std::span<const BatchToken> batch,
                         KvCache& cache);
  absl::Status FeedForward(const Layer& layer, int64_t n_tokens, float* x);
  void Reserve(int64_t n_tokens);

  ModelConfig config_;
  LayerRange range_;
  ThreadPool& pool_;
  kernels::MatMul matmul_;
  std::vector<Layer> layers_;        // resident layers; empty when streamed
  LayerSource* streamed_ = nullptr;  // where layers come from when they are not resident
  kernels::WeightMatrix token_embd_{};
  kernels::WeightMatrix output_{};
  std::vector<float> output_norm_;
  std::vector<float> rope_freq_factors_;

  // Attention's runs of consecutive positions of one sequence (Attention()).
  struct QueryRun {
    int64_t first = 0;  // index into the batch
    int count = 0;
  };

  // Scratch, grown to the largest batch seen.
  std::vector<float> norm_, q_, k_, v_, attn_, proj_, gate_, up_, scores_;
  std::vector<QueryRun> runs_;
};

}  // namespace chord
