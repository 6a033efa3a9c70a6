#include "coordinator/request_validation.h"

#include <algorithm>
#include <cmath>

#include "common/base/status.h"

namespace chord::coordinator {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

absl::StatusOr<std::vector<TokenId>> PromptTokens(const chord::v1::GenerateRequest& request,
                                                  const Tokenizer& tokenizer) {
  std::vector<TokenId> prompt;
  switch (request.input_case()) {
    case chord::v1::GenerateRequest::kPrompt:
      prompt = tokenizer.Encode(request.prompt(), /*add_special=*/true);
      break;
    case chord::v1::GenerateRequest::kPromptTokenIds:
      for (const uint32_t id : request.prompt_token_ids().ids()) {
        if (id >= static_cast<uint32_t>(tokenizer.vocab_size())) {
          return Invalid(absl::StrFormat("prompt token id %u is outside the vocabulary (%d)", id,
                                         tokenizer.vocab_size()));
        }
        prompt.push_back(static_cast<TokenId>(id));
      }
      break;
    default:
      return Invalid("the request has no input: set prompt, prompt_token_ids or chat");
  }
  if (prompt.empty()) return Invalid("the prompt is empty (and the model adds no BOS token)");
  return prompt;
}

absl::StatusOr<SamplingParams> Sampling(const chord::v1::SamplingParams& in, int32_t vocab_size,
                                        uint64_t random_seed) {
  SamplingParams out;
  out.temperature = in.has_temperature() ? in.temperature() : 1.0f;
  out.top_k = in.has_top_k() ? std::max(in.top_k(), 0) : 0;
  out.top_p = in.has_top_p() ? in.top_p() : 1.0f;
  out.min_p = in.has_min_p() ? in.min_p() : 0.0f;
  out.repetition_penalty = in.has_repetition_penalty() ? in.repetition_penalty() : 1.0f;
  out.presence_penalty = in.presence_penalty();
  out.frequency_penalty = in.frequency_penalty();
  out.penalty_last_n = 64;
  out.seed = in.has_seed() ? in.seed() : random_seed;
  if (!std::isfinite(out.temperature) || out.temperature < 0) {
    return Invalid("temperature must be a finite number >= 0");
  }
  if (!(out.top_p > 0 && out.top_p <= 1)) return Invalid("top_p must be in (0, 1]");
  if (!(out.min_p >= 0 && out.min_p <= 1)) return Invalid("min_p must be in [0, 1]");
  if (!(out.repetition_penalty > 0) || !std::isfinite(out.repetition_penalty)) {
    return Invalid("repetition_penalty must be > 0");
  }
  if (!std::isfinite(out.presence_penalty) || !std::isfinite(out.frequency_penalty)) {
    return Invalid("penalties must be finite");
  }
  for (const auto& [id, bias] : in.logit_bias()) {
    if (id >= static_cast<uint32_t>(vocab_size)) {
      return Invalid(absl::StrFormat("logit_bias token id %u is outside the vocabulary", id));
    }
    // -inf bans a token; NaN or +inf would poison the distribution, and a
    // stage refuses them: the whole step would fail, other requests with it.
    if (std::isnan(bias) || bias == INFINITY) {
      return Invalid("logit_bias values must be numbers below +inf");
    }
    out.logit_bias.emplace_back(static_cast<int32_t>(id), bias);
  }
  std::sort(out.logit_bias.begin(), out.logit_bias.end());  // map order is unspecified
  return out;
}

}  // namespace

absl::StatusOr<ValidatedRequest> ValidateGenerateRequest(const chord::v1::GenerateRequest& request,
                                                         const Tokenizer& tokenizer,
                                                         const RequestLimits& limits,
                                                         uint64_t random_seed) {
  ValidatedRequest out;
  // The id goes back in every streamed message: bounded like a stop string.
  if (request.request_id().size() > limits.max_request_id_length) {
    return Invalid(absl::StrFormat("request_id is at most %d bytes", limits.max_request_id_length));
  }
  out.request_id = request.request_id();
  ASSIGN_OR_RETURN(out.prompt, PromptTokens(request, tokenizer));
  if (static_cast<int64_t>(out.prompt.size()) >= limits.n_ctx) {
    return absl::OutOfRangeError(absl::StrFormat(
        "the prompt has %d tokens; the context holds %d positions, and at least one must be left",
        out.prompt.size(), limits.n_ctx));
  }
  const int room = limits.n_ctx - static_cast<int>(out.prompt.size());
  if (request.has_max_tokens()) {
    if (request.max_tokens() == 0) return Invalid("max_tokens must be at least 1");
    if (request.max_tokens() > static_cast<uint32_t>(limits.max_tokens_limit)) {
      return Invalid(absl::StrFormat("max_tokens %u is over the limit %d", request.max_tokens(),
                                     limits.max_tokens_limit));
    }
    out.max_tokens = std::min(static_cast<int>(request.max_tokens()), room);
  } else {
    out.max_tokens = std::min(limits.default_max_tokens, room);
  }
  ASSIGN_OR_RETURN(out.sampling, Sampling(request.sampling(), tokenizer.vocab_size(), random_seed));
  if (static_cast<size_t>(request.stop_size()) > limits.max_stop_strings) {
    return Invalid(absl::StrFormat("at most %d stop strings", limits.max_stop_strings));
  }
  for (const std::string& stop : request.stop()) {
    if (stop.size() > limits.max_stop_length) {
      return Invalid(absl::StrFormat("stop strings are at most %d bytes", limits.max_stop_length));
    }
    if (!stop.empty()) out.stop.push_back(stop);
  }
  for (const uint32_t id : request.stop_token_ids()) {
    if (id >= static_cast<uint32_t>(tokenizer.vocab_size())) {
      return Invalid(absl::StrFormat("stop token id %u is outside the vocabulary", id));
    }
    out.stop_token_ids.push_back(static_cast<TokenId>(id));
  }
  if (request.logprobs() > limits.max_logprobs) {
    return Invalid(absl::StrFormat("logprobs is at most %u", limits.max_logprobs));
  }
  out.ignore_eos = request.ignore_eos();
  out.logprobs = request.logprobs();
  return out;
}

}  // namespace chord::coordinator
