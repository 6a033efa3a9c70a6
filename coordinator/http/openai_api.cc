#include "coordinator/http/openai_api.h"

#include <cmath>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/base/status.h"

namespace chord::coordinator::http {
namespace {

using nlohmann::json;

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("'", field, "' ", what));
}

// The field, or nullptr when absent or null (OpenAI treats null as unset).
const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

absl::StatusOr<std::optional<double>> Number(const json& body, const char* name, double low,
                                             double high) {
  const json* value = Field(body, name);
  if (value == nullptr) return std::nullopt;
  if (!value->is_number()) return FieldError(name, "must be a number");
  const double x = value->get<double>();
  if (!std::isfinite(x) || x < low || x > high) {
    return FieldError(name, absl::StrCat("must be between ", low, " and ", high));
  }
  return x;
}

absl::StatusOr<std::optional<int64_t>> Integer(const json& body, const char* name, int64_t low,
                                               int64_t high) {
  const json* value = Field(body, name);
  if (value == nullptr) return std::nullopt;
  if (!value->is_number_integer()) return FieldError(name, "must be an integer");
  const int64_t x = value->is_number_unsigned() && value->get<uint64_t>() > uint64_t{INT64_MAX}
                        ? INT64_MAX
                        : value->get<int64_t>();
  if (x < low || x > high)
    return FieldError(name, absl::StrCat("must be between ", low, " and ", high));
  return x;
}

absl::StatusOr<std::optional<bool>> Boolean(const json& body, const char* name) {
  const json* value = Field(body, name);
  if (value == nullptr) return std::nullopt;
  if (!value->is_boolean()) return FieldError(name, "must be true or false");
  return value->get<bool>();
}

absl::Status ParseSampling(const json& body, chord::v1::SamplingParams& out) {
  ASSIGN_OR_RETURN(std::optional<double> temperature, Number(body, "temperature", 0, 2));
  ASSIGN_OR_RETURN(std::optional<double> top_p, Number(body, "top_p", 0, 1));
  ASSIGN_OR_RETURN(std::optional<int64_t> top_k,
                   Integer(body, "top_k", -1, std::numeric_limits<int32_t>::max()));
  ASSIGN_OR_RETURN(std::optional<double> min_p, Number(body, "min_p", 0, 1));
  ASSIGN_OR_RETURN(std::optional<double> repetition, Number(body, "repetition_penalty", 0, 100));
  ASSIGN_OR_RETURN(std::optional<double> presence, Number(body, "presence_penalty", -2, 2));
  ASSIGN_OR_RETURN(std::optional<double> frequency, Number(body, "frequency_penalty", -2, 2));
  ASSIGN_OR_RETURN(std::optional<int64_t> seed,
                   Integer(body, "seed", std::numeric_limits<int64_t>::min(),
                           std::numeric_limits<int64_t>::max()));
  if (temperature) out.set_temperature(static_cast<float>(*temperature));
  if (top_p) out.set_top_p(static_cast<float>(*top_p));
  if (top_k) out.set_top_k(static_cast<int32_t>(*top_k));
  if (min_p) out.set_min_p(static_cast<float>(*min_p));
  if (repetition) out.set_repetition_penalty(static_cast<float>(*repetition));
  if (presence) out.set_presence_penalty(static_cast<float>(*presence));
  if (frequency) out.set_frequency_penalty(static_cast<float>(*frequency));
  if (seed) out.set_seed(static_cast<uint64_t>(*seed));
  if (const json* bias = Field(body, "logit_bias")) {
    if (!bias->is_object()) return FieldError("logit_bias", "must map token ids to numbers");
    for (const auto& [key, value] : bias->items()) {
      uint32_t id = 0;
      if (key.empty() || key.size() > 9 ||
          key.find_first_not_of("0123456789") != std::string::npos || !value.is_number() ||
          !absl::SimpleAtoi(key, &id)) {
        return FieldError("logit_bias", "must map token ids to numbers");
      }
      const double x = value.get<double>();
      if (!(x >= -100 && x <= 100))
        return FieldError("logit_bias", "values must be between -100 and 100");
      (*out.mutable_logit_bias())[id] = static_cast<float>(x);
    }
  }
  return absl::OkStatus();
}

absl::Status ParseStop(const json& body, chord::v1::GenerateRequest& out) {
  const json* stop = Field(body, "stop");
  if (stop == nullptr) return absl::OkStatus();
  if (stop->is_string()) {
    out.add_stop(stop->get<std::string>());
    return absl::OkStatus();
  }
  if (!stop->is_array()) return FieldError("stop", "must be a string or a list of strings");
  for (const json& s : *stop) {
    if (!s.is_string()) return FieldError("stop", "must be a string or a list of strings");
    out.add_stop(s.get<std::string>());
  }
  return absl::OkStatus();
}

absl::Status ParsePrompt(const json& body, chord::v1::GenerateRequest& out) {
  const json* prompt = Field(body, "prompt");
  if (prompt == nullptr) return FieldError("prompt", "is required");
  const json* one = prompt;
  if (prompt->is_array() && !prompt->empty() && !(*prompt)[0].is_number()) {
    if (prompt->size() != 1)
      return FieldError("prompt", "may hold one prompt only (send one request per prompt)");
    one = &(*prompt)[0];
  }
  if (one->is_string()) {
    out.set_prompt(one->get<std::string>());
    return absl::OkStatus();
  }
  if (!one->is_array() || one->empty())
    return FieldError("prompt", "must be a string or a list of token ids");
  for (const json& id : *one) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      return FieldError("prompt", "token ids must be non-negative integers");
    }
    out.mutable_prompt_token_ids()->add_ids(id.get<uint32_t>());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> MessageContent(const json& content, size_t index) {
  if (content.is_null()) return std::string();
  if (content.is_string()) return content.get<std::string>();
  const std::string field = absl::StrCat("messages[", index, "].content");
  if (!content.is_array()) return FieldError(field, "must be a string or a list of text parts");
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      return FieldError(
          field, "parts must be {\"type\": \"text\", \"text\": ...} (chord serves text only)");
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

absl::Status ParseMessages(const json& body, std::vector<ChatMessage>& out) {
  const json* messages = Field(body, "messages");
  if (messages == nullptr) return FieldError("messages", "is required");
  if (!messages->is_array() || messages->empty())
    return FieldError("messages", "must be a non-empty list");
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& message = (*messages)[i];
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string()) {
      return FieldError(absl::StrCat("messages[", i, "]"),
                        "must be an object with a string 'role'");
    }
    ChatMessage parsed;
    parsed.role = message["role"].get<std::string>();
    if (parsed.role == "developer") parsed.role = "system";  // OpenAI's newer name for it
    ASSIGN_OR_RETURN(parsed.content, MessageContent(message.value("content", json()), i));
    out.push_back(std::move(parsed));
  }
  return absl::OkStatus();
}

// Completions: logprobs is the number of alternatives. Chat: logprobs is a
// flag and top_logprobs the number.
absl::Status ParseLogprobs(const json& body, Endpoint endpoint, OpenAiRequest& out) {
  int64_t top = 0;
  if (endpoint == Endpoint::kCompletions) {
    ASSIGN_OR_RETURN(std::optional<int64_t> n, Integer(body, "logprobs", 0, 20));
    out.logprobs = n.has_value();
    top = n.value_or(0);
  } else {
    ASSIGN_OR_RETURN(std::optional<bool> flag, Boolean(body, "logprobs"));
    ASSIGN_OR_RETURN(std::optional<int64_t> n, Integer(body, "top_logprobs", 0, 20));
    if (n.has_value() && !flag.value_or(false))
      return FieldError("top_logprobs", "needs logprobs: true");
    out.logprobs = flag.value_or(false);
    top = n.value_or(0);
  }
  // The scheduler reports the top entries only; asking for at least one gives
  // the sampled token's own log-probability whenever it is the most likely.
  if (out.logprobs) out.generate.set_logprobs(static_cast<uint32_t>(std::max<int64_t>(top, 1)));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(std::string_view text, Endpoint endpoint) {
  json body = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return absl::InvalidArgumentError("the request body is not valid JSON");
  if (!body.is_object())
    return absl::InvalidArgumentError("the request body must be a JSON object");
  OpenAiRequest out;
  if (const json* model = Field(body, "model")) {
    if (!model->is_string()) return FieldError("model", "must be a string");
    out.model = model->get<std::string>();
  }
  ASSIGN_OR_RETURN(std::optional<bool> stream, Boolean(body, "stream"));
  out.stream = stream.value_or(false);
  if (const json* options = Field(body, "stream_options")) {
    if (!options->is_object()) return FieldError("stream_options", "must be an object");
    ASSIGN_OR_RETURN(std::optional<bool> usage, Boolean(*options, "include_usage"));
    out.include_usage = usage.value_or(false);
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> n, Integer(body, "n", 1, kMaxChoices));
  out.n = static_cast<int>(n.value_or(1));
  ASSIGN_OR_RETURN(std::optional<int64_t> max_tokens, Integer(body, "max_tokens", 1, INT32_MAX));
  ASSIGN_OR_RETURN(std::optional<int64_t> max_completion,
                   Integer(body, "max_completion_tokens", 1, INT32_MAX));
  if (max_completion) max_tokens = max_completion;
  if (max_tokens) out.generate.set_max_tokens(static_cast<uint32_t>(*max_tokens));
  RETURN_IF_ERROR(ParseSampling(body, *out.generate.mutable_sampling()));
  RETURN_IF_ERROR(ParseStop(body, out.generate));
  ASSIGN_OR_RETURN(std::optional<bool> ignore_eos, Boolean(body, "ignore_eos"));
  out.generate.set_ignore_eos(ignore_eos.value_or(false));
  RETURN_IF_ERROR(ParseLogprobs(body, endpoint, out));
  if (endpoint == Endpoint::kCompletions) {
    RETURN_IF_ERROR(ParsePrompt(body, out.generate));
  } else {
    RETURN_IF_ERROR(ParseMessages(body, out.messages));
  }
  return out;
}

namespace {

// OpenAI's value for "far less likely than the alternatives shown": the
// scheduler reports the top entries only, and the sampled token may not be
// among them.
constexpr double kUnlikely = -9999.0;

double SampledLogprob(uint32_t id, const chord::v1::TopLogprobs& top) {
  for (const chord::v1::TokenLogprob& entry : top.entries()) {
    if (entry.id() == id) return entry.logprob();
  }
  return kUnlikely;
}

json Bytes(const std::string& piece) {
  json bytes = json::array();
  for (const char c : piece) bytes.push_back(static_cast<unsigned char>(c));
  return bytes;
}

json CompletionLogprobs(const ChoiceOutput& choice, const Tokenizer& tokenizer) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  size_t offset = 0;
  for (size_t i = 0; i < choice.token_ids.size() && i < choice.logprobs.size(); ++i) {
    const std::string piece = tokenizer.TokenToPiece(static_cast<TokenId>(choice.token_ids[i]));
    tokens.push_back(piece);
    token_logprobs.push_back(SampledLogprob(choice.token_ids[i], choice.logprobs[i]));
    json alternatives = json::object();
    for (const chord::v1::TokenLogprob& entry : choice.logprobs[i].entries()) {
      alternatives[tokenizer.TokenToPiece(static_cast<TokenId>(entry.id()))] = entry.logprob();
    }
    top.push_back(std::move(alternatives));
    offsets.push_back(offset);
    offset += piece.size();
  }
  return {{"tokens", tokens},
          {"token_logprobs", token_logprobs},
          {"top_logprobs", top},
          {"text_offset", offsets}};
}

json ChatLogprobs(const ChoiceOutput& choice, const Tokenizer& tokenizer) {
  json content = json::array();
  for (size_t i = 0; i < choice.token_ids.size() && i < choice.logprobs.size(); ++i) {
    const std::string piece = tokenizer.TokenToPiece(static_cast<TokenId>(choice.token_ids[i]));
    json top = json::array();
    for (const chord::v1::TokenLogprob& entry : choice.logprobs[i].entries()) {
      const std::string alternative = tokenizer.TokenToPiece(static_cast<TokenId>(entry.id()));
      top.push_back(
          {{"token", alternative}, {"logprob", entry.logprob()}, {"bytes", Bytes(alternative)}});
    }
    content.push_back({{"token", piece},
                       {"logprob", SampledLogprob(choice.token_ids[i], choice.logprobs[i])},
                       {"bytes", Bytes(piece)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}, {"refusal", nullptr}};
}

json LogprobsOf(Endpoint endpoint, const ChoiceOutput& choice, const Tokenizer& tokenizer) {
  if (choice.logprobs.empty()) return nullptr;
  return endpoint == Endpoint::kChat ? ChatLogprobs(choice, tokenizer)
                                     : CompletionLogprobs(choice, tokenizer);
}

json FinishOf(const ChoiceOutput& choice) {
  if (!choice.final.has_value()) return nullptr;
  return std::string(FinishReasonName(choice.final->finish_reason()));
}

json Usage(const std::vector<ChoiceOutput>& choices) {
  uint64_t prompt = 0, completion = 0;
  for (const ChoiceOutput& choice : choices) {
    if (!choice.final.has_value()) continue;
    prompt = choice.final->usage().prompt_tokens();
    completion += choice.final->usage().completion_tokens();
  }
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion}};
}

json Envelope(const ResponseMeta& meta, std::string_view object) {
  return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

}  // namespace

std::string_view FinishReasonName(chord::v1::FinishReason reason) {
  switch (reason) {
    case chord::v1::FINISH_REASON_LENGTH:
      return "length";
    case chord::v1::FINISH_REASON_ABORT:
      return "abort";
    default:
      return "stop";
  }
}

json ResponseBody(const ResponseMeta& meta, const std::vector<ChoiceOutput>& choices,
                  const Tokenizer& tokenizer) {
  const bool chat = meta.endpoint == Endpoint::kChat;
  json body = Envelope(meta, chat ? "chat.completion" : "text_completion");
  json list = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    json choice = {{"index", i},
                   {"logprobs", LogprobsOf(meta.endpoint, choices[i], tokenizer)},
                   {"finish_reason", FinishOf(choices[i])}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", choices[i].text}};
    } else {
      choice["text"] = choices[i].text;
    }
    list.push_back(std::move(choice));
  }
  body["choices"] = std::move(list);
  body["usage"] = Usage(choices);
  return body;
}

json ChunkBody(const ResponseMeta& meta, int index, const ChoiceOutput& delta, bool first,
               const Tokenizer& tokenizer) {
  const bool chat = meta.endpoint == Endpoint::kChat;
  json body = Envelope(meta, chat ? "chat.completion.chunk" : "text_completion");
  json choice = {{"index", index},
                 {"logprobs", LogprobsOf(meta.endpoint, delta, tokenizer)},
                 {"finish_reason", FinishOf(delta)}};
  if (chat) {
    json message = {{"content", delta.text}};
    if (first) message["role"] = "assistant";
    choice["delta"] = std::move(message);
  } else {
    choice["text"] = delta.text;
  }
  body["choices"] = json::array({std::move(choice)});
  return body;
}

json UsageChunkBody(const ResponseMeta& meta, const std::vector<ChoiceOutput>& choices) {
  json body = Envelope(
      meta, meta.endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion");
  body["choices"] = json::array();
  body["usage"] = Usage(choices);
  return body;
}

std::string DumpJson(const json& body) {
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string SseEvent(const json& body) { return absl::StrCat("data: ", DumpJson(body), "\n\n"); }

int HttpStatusFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      return 503;
    default:
      return 500;
  }
}

json ErrorBody(const absl::Status& status, std::string_view code) {
  const int http = HttpStatusFor(status);
  std::string type = "server_error";
  if (http == 400 || http == 404 || http == 409) type = "invalid_request_error";
  if (http == 401) type = "authentication_error";
  if (http == 429) type = "rate_limit_error";
  if (http == 503) type = "service_unavailable";
  json error = {{"message", std::string(status.message())}, {"type", type}, {"param", nullptr}};
  error["code"] = code.empty() ? json(nullptr) : json(std::string(code));
  return {{"error", std::move(error)}};
}

}  // namespace chord::coordinator::http
