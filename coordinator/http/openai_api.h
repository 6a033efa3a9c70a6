// OpenAI's HTTP API shapes: request bodies of /v1/completions and
// /v1/chat/completions parsed into chord's GenerateRequest, and the response,
// server-sent-event chunk and error bodies built from the scheduler's events.
// Unknown fields are ignored (clients send many); fields chord knows are type-
// and range-checked here, the rest of the checks are ValidateGenerateRequest's.
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "chord/v1/inference.pb.h"
#include "common/tokenizer/tokenizer.h"
#include "coordinator/chat_template.h"
#include "nlohmann/json.hpp"

namespace chord::coordinator::http {

enum class Endpoint { kCompletions, kChat };

inline constexpr int kMaxChoices = 16;  // largest n accepted

struct OpenAiRequest {
  std::string model;  // empty when not given
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int n = 1;
  bool logprobs = false;              // chat: logprobs; completions: logprobs given
  std::vector<ChatMessage> messages;  // chat only
  // Sampling, limits and stops; for completions also the prompt. For chat the
  // input is left unset: the caller renders `messages`.
  chord::v1::GenerateRequest generate;
};

// INVALID_ARGUMENT (with the offending field named) for malformed JSON, a
// missing prompt/messages, or a field of the wrong type or out of range.
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(std::string_view body, Endpoint endpoint);

// What one choice has produced so far.
struct ChoiceOutput {
  std::string text;
  std::vector<uint32_t> token_ids;
  std::vector<chord::v1::TopLogprobs> logprobs;  // one per token in token_ids, when asked
  std::optional<chord::v1::FinalInfo> final;
};

struct ResponseMeta {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;
  std::string model;
};

// "stop", "length" or "abort".
std::string_view FinishReasonName(chord::v1::FinishReason reason);

// The whole (non-streaming) response; usage sums every choice's completion
// tokens, prompt tokens are counted once.
nlohmann::json ResponseBody(const ResponseMeta& meta, const std::vector<ChoiceOutput>& choices,
                            const Tokenizer& tokenizer);
// One streaming chunk for choice `index` carrying `delta` (its text and
// logprobs are the new ones only). `first` adds the chat role; a set
// `delta.final` gives the finish reason.
nlohmann::json ChunkBody(const ResponseMeta& meta, int index, const ChoiceOutput& delta, bool first,
                         const Tokenizer& tokenizer);
// The closing chunk of stream_options.include_usage: no choices, the usage.
nlohmann::json UsageChunkBody(const ResponseMeta& meta, const std::vector<ChoiceOutput>& choices);

// "data: <json>\n\n"; invalid UTF-8 (a token holding half a code point) is
// replaced, never thrown on.
std::string SseEvent(const nlohmann::json& body);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";
std::string DumpJson(const nlohmann::json& body);

// OpenAI's error shape {"error": {"message", "type", "param", "code"}} and the
// HTTP status for `status` (400, 401, 404, 409, 429, 503, 500).
int HttpStatusFor(const absl::Status& status);
nlohmann::json ErrorBody(const absl::Status& status, std::string_view code = "");

}  // namespace chord::coordinator::http
