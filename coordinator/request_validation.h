// Checks a GenerateRequest against the model and the server's limits and
// fills in the defaults, so the scheduler only ever sees valid requests.
// Every rejection is INVALID_ARGUMENT, except a prompt that does not fit the
// context (OUT_OF_RANGE). Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "chord/v1/inference.pb.h"
#include "common/generation/sampling_params.h"
#include "common/tokenizer/tokenizer.h"

namespace chord::coordinator {

struct RequestLimits {
  int n_ctx = 0;                 // positions per sequence
  int max_tokens_limit = 0;      // largest max_tokens accepted
  int default_max_tokens = 256;  // when unset (then capped by the context left)
  size_t max_stop_strings = 16;
  size_t max_stop_length = 256;  // bytes
  size_t max_request_id_length = 256;  // bytes
  uint32_t max_logprobs = 20;
};

struct ValidatedRequest {
  std::string request_id;
  std::vector<TokenId> prompt;
  SamplingParams sampling;
  int max_tokens = 0;  // already capped by the context left after the prompt
  std::vector<std::string> stop;
  std::vector<TokenId> stop_token_ids;
  bool ignore_eos = false;
  uint32_t logprobs = 0;
};

// `random_seed` is used when the request gives none.
absl::StatusOr<ValidatedRequest> ValidateGenerateRequest(const chord::v1::GenerateRequest& request,
                                                         const Tokenizer& tokenizer,
                                                         const RequestLimits& limits,
                                                         uint64_t random_seed);

}  // namespace chord::coordinator
