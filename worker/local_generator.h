// Generation in one process: the whole layer stack as one stage, one sequence
// at a time. This is what `chord generate` runs, and the reference that the
// pipeline service must match token for token.
//
// Thread-safety: one caller at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/generation/sampling_params.h"
#include "common/model/model_config.h"
#include "common/tokenizer/tokenizer.h"
#include "kernels/cpu/thread_pool.h"
#include "worker/kv_cache.h"
#include "worker/models/llama.h"
#include "worker/sampler.h"

namespace chord::gguf {
class GgufFile;
}

namespace chord {

struct LocalGeneratorOptions {
  int64_t n_ctx = 0;            // 0: the model's training context
  DType kv_type = DType::kF32;  // kF32 or kF16
  int n_threads = 0;            // 0: one per core
};

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;  // BOS included when the model wants it
  SamplingParams sampling;
  int64_t max_tokens = 128;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int logprobs = 0;  // top-N log-probabilities per generated token
};

enum class FinishReason { kStop, kLength };

struct GenerationResult {
  std::vector<int32_t> token_ids;
  std::string text;
  std::vector<std::vector<TokenLogprob>> top_logprobs;
  FinishReason finish_reason = FinishReason::kLength;
  double prompt_seconds = 0.0;
  double decode_seconds = 0.0;
};

class LocalGenerator {
 public:
  static absl::StatusOr<std::unique_ptr<LocalGenerator>> Create(const gguf::GgufFile& file,
                                                                const LocalGeneratorOptions& options);

  const ModelConfig& config() const { return config_; }
  int64_t n_ctx() const { return cache_.shape().n_ctx; }

  // Low level: forgets the sequence, then appends tokens and returns the logits
  // after the last one (n_vocab floats, valid until the next call).
  void Reset() { n_past_ = 0; }
  absl::StatusOr<std::span<const float>> Feed(std::span<const int32_t> tokens);
  int64_t n_past() const { return n_past_; }

  // Runs a whole request: prompt, then sampled tokens until EOS (unless
  // ignore_eos), a stop token or string, max_tokens or the context end.
  // `on_text` receives each piece of text as it becomes safe to show.
  absl::StatusOr<GenerationResult> Generate(const GenerationRequest& request,
                                            const Tokenizer& tokenizer,
                                            const std::function<void(std::string_view)>& on_text);

 private:
  LocalGenerator(const ModelConfig& config, std::unique_ptr<ThreadPool> pool, KvCache cache)
      : config_(config), pool_(std::move(pool)), cache_(std::move(cache)) {}

  ModelConfig config_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<LlamaStage> stage_;
  KvCache cache_;
  Sampler sampler_;
  int64_t n_past_ = 0;
  std::vector<float> residual_;
  std::vector<float> logits_;
  std::vector<BatchToken> batch_;
};

}  // namespace chord
