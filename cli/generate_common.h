// What local and remote `chord generate` share: the flags and the one-line
// JSON result, so both modes print the same object.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/generation/sampling_params.h"
#include "nlohmann/json.hpp"
#include "worker/sampler.h"

namespace chord::cli {

struct GenerateFlags {
  std::string model;
  std::string server;  // HOST:PORT: generate through a chord server instead of in-process
  std::string api_key;  // with --server: sent as "authorization: Bearer <key>"
  std::string tls_ca, tls_cert, tls_key;  // with --server: TLS (CA to trust; own certificate for mutual TLS)
  std::string prompt;
  int64_t max_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  int logprobs = 0;
  std::string kv_type = "f32";
  int64_t n_ctx = 0;
  int threads = 0;
  bool json = false;
};

// {"prompt_token_ids", "token_ids", "text", "top_logprobs": [[{"id", "logprob"}...]...],
//  "finish_reason": "stop" | "length" | "abort"}.
nlohmann::json GenerationJson(const std::vector<int32_t>& prompt_ids, const std::vector<int32_t>& token_ids,
                              const std::string& text, const std::vector<std::vector<TokenLogprob>>& top_logprobs,
                              const std::string& finish_reason);

// One line, invalid UTF-8 replaced.
std::string JsonLine(const nlohmann::json& value);

}  // namespace chord::cli
