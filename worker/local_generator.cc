#include "worker/local_generator.h"

#include <algorithm>
#include <chrono>

#include "common/base/status.h"
#include "common/generation/stop_matcher.h"
#include "common/gguf/gguf_file.h"
#include "worker/models/tensor_source.h"

namespace chord {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalGenerator>> LocalGenerator::Create(
    const gguf::GgufFile& file, const LocalGeneratorOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(file));
  if (options.n_ctx < 0) return absl::InvalidArgumentError("the context size must not be negative");
  KvCacheShape shape;
  shape.n_layers = config.n_layer;
  shape.n_slots = 1;
  shape.n_ctx = options.n_ctx > 0 ? options.n_ctx : config.n_ctx_train;
  shape.n_embd_kv = config.n_embd_kv();
  shape.type = options.kv_type;
  ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(shape));
  auto pool = std::make_unique<ThreadPool>(options.n_threads);
  std::unique_ptr<LocalGenerator> generator(
      new LocalGenerator(config, std::move(pool), std::move(cache)));
  ASSIGN_OR_RETURN(generator->stage_, LlamaStage::Load(GgufTensorSource(file), config,
                                                       LayerRange{0, config.n_layer}, *generator->pool_));
  return generator;
}

absl::StatusOr<std::span<const float>> LocalGenerator::Feed(std::span<const int32_t> tokens) {
  if (tokens.empty()) return absl::InvalidArgumentError("nothing to feed: no tokens");
  const auto n = static_cast<int64_t>(tokens.size());
  if (n_past_ + n > n_ctx()) {
    return absl::OutOfRangeError(absl::StrFormat(
        "%d tokens do not fit in the context: %d of %d positions are used", n, n_past_, n_ctx()));
  }
  residual_.resize(static_cast<size_t>(n * config_.n_embd));
  batch_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) batch_[static_cast<size_t>(i)] = {0, n_past_ + i};
  const SlotExtent extent{0, n_past_ == 0, n_past_ + n};
  RETURN_IF_ERROR(cache_.Reserve({&extent, 1}));
  RETURN_IF_ERROR(stage_->Embed(tokens, residual_.data()));
  RETURN_IF_ERROR(stage_->RunLayers(batch_, residual_.data(), cache_));
  n_past_ += n;
  logits_.resize(static_cast<size_t>(config_.n_vocab));
  RETURN_IF_ERROR(stage_->Logits(residual_.data() + (n - 1) * config_.n_embd, 1, logits_.data()));
  return std::span<const float>(logits_);
}

absl::StatusOr<GenerationResult> LocalGenerator::Generate(
    const GenerationRequest& request, const Tokenizer& tokenizer,
    const std::function<void(std::string_view)>& on_text) {
  if (request.prompt_ids.empty()) {
    return absl::InvalidArgumentError("the prompt is empty and the model adds no BOS token");
  }
  for (int32_t id : request.prompt_ids) {
    if (!tokenizer.IsValid(id)) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token id ", id, " is not in the vocabulary"));
    }
  }
  GenerationResult result;
  Reset();
  const auto prompt_start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::span<const float> logits, Feed(request.prompt_ids));
  result.prompt_seconds = SecondsSince(prompt_start);

  const auto decode_start = std::chrono::steady_clock::now();
  std::vector<int32_t> history = request.prompt_ids;
  StreamingDetokenizer detokenizer(tokenizer);
  StopMatcher stop_matcher(request.stop);
  const auto emit = [&](const std::string& text) {
    if (text.empty()) return;
    result.text += text;
    if (on_text) on_text(text);
  };
  for (int64_t step = 0; step < request.max_tokens; ++step) {
    const int64_t position = n_past_;
    if (request.logprobs > 0) result.top_logprobs.push_back(Sampler::TopLogprobs(logits, request.logprobs));
    const int32_t token = sampler_.Sample(logits, request.sampling, history, position);
    result.token_ids.push_back(token);
    history.push_back(token);
    const bool is_stop_token =
        std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(), token) !=
        request.stop_token_ids.end();
    if (is_stop_token || (!request.ignore_eos && tokenizer.IsEndOfGeneration(token))) {
      result.finish_reason = FinishReason::kStop;
      break;
    }
    emit(stop_matcher.Feed(detokenizer.Push(token)));
    if (stop_matcher.stopped()) {
      result.finish_reason = FinishReason::kStop;
      break;
    }
    if (step + 1 == request.max_tokens || n_past_ >= n_ctx()) break;
    const int32_t next[1] = {token};
    ASSIGN_OR_RETURN(logits, Feed(next));
  }
  if (!stop_matcher.stopped()) emit(stop_matcher.Feed(detokenizer.Flush()) + stop_matcher.Finish());
  result.decode_seconds = SecondsSince(decode_start);
  return result;
}

}  // namespace chord
