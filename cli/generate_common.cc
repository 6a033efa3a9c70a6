#include "cli/generate_common.h"

#include <utility>

namespace chord::cli {

nlohmann::json GenerationJson(const std::vector<int32_t>& prompt_ids, const std::vector<int32_t>& token_ids,
                              const std::string& text, const std::vector<std::vector<TokenLogprob>>& top_logprobs,
                              const std::string& finish_reason) {
  nlohmann::json top = nlohmann::json::array();
  for (const auto& step : top_logprobs) {
    nlohmann::json entries = nlohmann::json::array();
    for (const TokenLogprob& entry : step) entries.push_back({{"id", entry.id}, {"logprob", entry.logprob}});
    top.push_back(std::move(entries));
  }
  return {{"prompt_token_ids", prompt_ids},
          {"token_ids", token_ids},
          {"text", text},
          {"top_logprobs", std::move(top)},
          {"finish_reason", finish_reason}};
}

std::string JsonLine(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace chord::cli
