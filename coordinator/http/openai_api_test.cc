#include "coordinator/http/openai_api.h"

#include <filesystem>

#include "common/gguf/gguf_file.h"
#include "gtest/gtest.h"

namespace chord::coordinator::http {
namespace {

using nlohmann::json;

OpenAiRequest Parse(std::string_view body, Endpoint endpoint = Endpoint::kCompletions) {
  absl::StatusOr<OpenAiRequest> request = ParseOpenAiRequest(body, endpoint);
  EXPECT_TRUE(request.ok()) << body << ": " << request.status();
  return request.ok() ? *request : OpenAiRequest{};
}

TEST(OpenAiParseTest, CompletionFieldsMapToTheGenerateRequest) {
  const OpenAiRequest r =
      Parse(R"({"model": "m", "prompt": "Once", "max_tokens": 7, "temperature": 0.5,
      "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "presence_penalty": 0.25,
      "frequency_penalty": -0.5, "seed": 42, "stop": ["\n", "end"], "n": 3, "ignore_eos": true, "logprobs": 2,
      "stream": true, "stream_options": {"include_usage": true}, "logit_bias": {"13": -100}, "user": "x"})");
  EXPECT_EQ(r.model, "m");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.logprobs);
  const chord::v1::GenerateRequest& g = r.generate;
  EXPECT_EQ(g.prompt(), "Once");
  EXPECT_EQ(g.max_tokens(), 7u);
  EXPECT_FLOAT_EQ(g.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().top_p(), 0.9f);
  EXPECT_EQ(g.sampling().top_k(), 40);
  EXPECT_FLOAT_EQ(g.sampling().min_p(), 0.05f);
  EXPECT_FLOAT_EQ(g.sampling().repetition_penalty(), 1.1f);
  EXPECT_FLOAT_EQ(g.sampling().presence_penalty(), 0.25f);
  EXPECT_FLOAT_EQ(g.sampling().frequency_penalty(), -0.5f);
  EXPECT_EQ(g.sampling().seed(), 42u);
  EXPECT_FLOAT_EQ(g.sampling().logit_bias().at(13), -100.0f);
  ASSERT_EQ(g.stop_size(), 2);
  EXPECT_EQ(g.stop(1), "end");
  EXPECT_TRUE(g.ignore_eos());
  EXPECT_EQ(g.logprobs(), 2u);
}

TEST(OpenAiParseTest, DefaultsLeaveFieldsUnset) {
  const OpenAiRequest r = Parse(R"({"prompt": "x", "temperature": null, "stop": "s"})");
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.generate.has_max_tokens());
  EXPECT_FALSE(r.generate.sampling().has_temperature());
  EXPECT_FALSE(r.generate.sampling().has_seed());
  ASSERT_EQ(r.generate.stop_size(), 1);
  EXPECT_EQ(r.generate.stop(0), "s");
  EXPECT_EQ(r.generate.logprobs(), 0u);
}

TEST(OpenAiParseTest, PromptForms) {
  EXPECT_EQ(Parse(R"({"prompt": ["one"]})").generate.prompt(), "one");
  const OpenAiRequest ids = Parse(R"({"prompt": [1, 450, 2]})");
  ASSERT_EQ(ids.generate.prompt_token_ids().ids_size(), 3);
  EXPECT_EQ(ids.generate.prompt_token_ids().ids(1), 450u);
  EXPECT_EQ(Parse(R"({"prompt": [[1, 5]]})").generate.prompt_token_ids().ids_size(), 2);
}

TEST(OpenAiParseTest, MaxCompletionTokensWins) {
  EXPECT_EQ(Parse(R"({"prompt": "x", "max_tokens": 9, "max_completion_tokens": 4})")
                .generate.max_tokens(),
            4u);
}

TEST(OpenAiParseTest, ChatMessagesAndLogprobs) {
  const OpenAiRequest r = Parse(R"({"messages": [{"role": "developer", "content": "Be kind."},
      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null}], "logprobs": true, "top_logprobs": 3})",
                                Endpoint::kChat);
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "Hi there");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.generate.input_case(), chord::v1::GenerateRequest::INPUT_NOT_SET);
  EXPECT_EQ(r.generate.logprobs(), 3u);
  // logprobs alone still reports the sampled tokens' log-probabilities.
  EXPECT_EQ(Parse(R"({"messages": [{"role": "user", "content": "a"}], "logprobs": true})",
                  Endpoint::kChat)
                .generate.logprobs(),
            1u);
}

TEST(OpenAiParseTest, BadRequestsNameTheField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", "JSON"},
      {"[1]", "object"},
      {R"({})", "prompt"},
      {R"({"prompt": ["a", "b"]})", "prompt"},
      {R"({"prompt": [1, -2]})", "prompt"},
      {R"({"prompt": 5})", "prompt"},
      {R"({"prompt": "x", "n": 0})", "'n'"},
      {R"({"prompt": "x", "n": 1.5})", "'n'"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "x", "temperature": 3})", "temperature"},
      {R"({"prompt": "x", "presence_penalty": 2.5})", "presence_penalty"},
      {R"({"prompt": "x", "stop": [1]})", "stop"},
      {R"({"prompt": "x", "stream": "yes"})", "stream"},
      {R"({"prompt": "x", "logprobs": 21})", "logprobs"},
      {R"({"prompt": "x", "logit_bias": {"a": 1}})", "logit_bias"},
      {R"({"prompt": "x", "model": 3})", "model"},
  };
  for (const auto& [body, field] : cases) {
    absl::StatusOr<OpenAiRequest> r = ParseOpenAiRequest(body, Endpoint::kCompletions);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_NE(r.status().message().find(field), std::string::npos) << body << ": " << r.status();
  }
  const std::vector<std::string> chat_cases = {
      R"({"prompt": "x"})", R"({"messages": []})", R"({"messages": [{"content": "x"}]})",
      R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
      R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})"};
  for (const std::string& body : chat_cases) {
    EXPECT_EQ(ParseOpenAiRequest(body, Endpoint::kChat).status().code(),
              absl::StatusCode::kInvalidArgument)
        << body;
  }
}

class OpenAiEncodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(CHORD_DEFAULT_MODEL))
      GTEST_SKIP() << "no model at " << CHORD_DEFAULT_MODEL;
    auto file = gguf::GgufFile::Open(CHORD_DEFAULT_MODEL);
    ASSERT_TRUE(file.ok()) << file.status();
    auto tokenizer = Tokenizer::FromGguf(**file);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
  }

  static ChoiceOutput Choice(std::string text, std::vector<uint32_t> ids,
                             chord::v1::FinishReason reason, uint32_t prompt_tokens) {
    ChoiceOutput out;
    out.text = std::move(text);
    out.token_ids = std::move(ids);
    chord::v1::FinalInfo final;
    final.set_finish_reason(reason);
    final.mutable_usage()->set_prompt_tokens(prompt_tokens);
    final.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(out.token_ids.size()));
    out.final = final;
    return out;
  }

  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(OpenAiEncodeTest, CompletionResponseSumsUsage) {
  const ResponseMeta meta{Endpoint::kCompletions, "cmpl-1", 1700000000, "stories"};
  const std::vector<ChoiceOutput> choices = {
      Choice("ab", {300, 301}, chord::v1::FINISH_REASON_LENGTH, 4),
      Choice("c", {302}, chord::v1::FINISH_REASON_STOP, 4)};
  const json body = ResponseBody(meta, choices, *tokenizer_);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["id"], "cmpl-1");
  EXPECT_EQ(body["model"], "stories");
  EXPECT_EQ(body["created"], 1700000000);
  ASSERT_EQ(body["choices"].size(), 2u);
  EXPECT_EQ(body["choices"][0]["text"], "ab");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["choices"][1]["index"], 1);
  EXPECT_EQ(body["choices"][1]["finish_reason"], "stop");
  EXPECT_TRUE(body["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(body["usage"],
            json({{"prompt_tokens", 4}, {"completion_tokens", 3}, {"total_tokens", 7}}));
}

TEST_F(OpenAiEncodeTest, ChatResponseAndChunks) {
  const ResponseMeta meta{Endpoint::kChat, "chatcmpl-1", 1, "m"};
  const json body =
      ResponseBody(meta, {Choice("Hi", {300}, chord::v1::FINISH_REASON_STOP, 2)}, *tokenizer_);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["choices"][0]["message"], json({{"role", "assistant"}, {"content", "Hi"}}));
  ChoiceOutput delta;
  delta.text = "x";
  const json first = ChunkBody(meta, 0, delta, /*first=*/true, *tokenizer_);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "x");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const json later =
      ChunkBody(meta, 2, Choice("", {}, chord::v1::FINISH_REASON_LENGTH, 2), false, *tokenizer_);
  EXPECT_FALSE(later["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(later["choices"][0]["index"], 2);
  EXPECT_EQ(later["choices"][0]["finish_reason"], "length");
  const json usage =
      UsageChunkBody(meta, {Choice("Hi", {300, 301}, chord::v1::FINISH_REASON_STOP, 5)});
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 7);
}

TEST_F(OpenAiEncodeTest, LogprobsShapes) {
  ChoiceOutput choice = Choice("ab", {300, 301}, chord::v1::FINISH_REASON_STOP, 1);
  for (const auto& [best, lp] :
       std::vector<std::pair<uint32_t, float>>{{300, -0.25f}, {299, -0.5f}}) {
    chord::v1::TopLogprobs top;
    auto* entry = top.add_entries();
    entry->set_id(best);
    entry->set_logprob(lp);
    choice.logprobs.push_back(top);
  }
  const json completion =
      ResponseBody({Endpoint::kCompletions, "c", 0, "m"}, {choice}, *tokenizer_);
  const json& lp = completion["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"][0], tokenizer_->TokenToPiece(300));
  EXPECT_FLOAT_EQ(lp["token_logprobs"][0].get<float>(), -0.25f);
  // The second sampled token is not among the reported alternatives.
  EXPECT_DOUBLE_EQ(lp["token_logprobs"][1].get<double>(), -9999.0);
  EXPECT_FLOAT_EQ(lp["top_logprobs"][1][tokenizer_->TokenToPiece(299)].get<float>(), -0.5f);
  EXPECT_EQ(lp["text_offset"][1], tokenizer_->TokenToPiece(300).size());
  const json chat = ResponseBody({Endpoint::kChat, "c", 0, "m"}, {choice}, *tokenizer_);
  const json& content = chat["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], tokenizer_->TokenToPiece(300));
  EXPECT_FLOAT_EQ(content[0]["top_logprobs"][0]["logprob"].get<float>(), -0.25f);
  EXPECT_EQ(content[0]["bytes"].size(), tokenizer_->TokenToPiece(300).size());
}

TEST(OpenAiSseTest, FramingAndInvalidUtf8) {
  const std::string event = SseEvent({{"text", std::string("a\xe2\x82", 3)}});
  ASSERT_TRUE(event.starts_with("data: "));
  ASSERT_TRUE(event.ends_with("\n\n"));
  EXPECT_EQ(event.find('\n'), event.size() - 2) << "one data line per event";
  const json back = json::parse(event.substr(6));
  EXPECT_EQ(back["text"].get<std::string>().substr(0, 1), "a");
  EXPECT_EQ(kSseDone, "data: [DONE]\n\n");
}

TEST(OpenAiErrorTest, StatusesAndShape) {
  EXPECT_EQ(HttpStatusFor(absl::InvalidArgumentError("x")), 400);
  EXPECT_EQ(HttpStatusFor(absl::OutOfRangeError("x")), 400);
  EXPECT_EQ(HttpStatusFor(absl::UnauthenticatedError("x")), 401);
  EXPECT_EQ(HttpStatusFor(absl::NotFoundError("x")), 404);
  EXPECT_EQ(HttpStatusFor(absl::ResourceExhaustedError("x")), 429);
  EXPECT_EQ(HttpStatusFor(absl::UnavailableError("x")), 503);
  EXPECT_EQ(HttpStatusFor(absl::InternalError("x")), 500);
  const json body = ErrorBody(absl::NotFoundError("no such model"), "model_not_found");
  EXPECT_EQ(body["error"]["message"], "no such model");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["code"], "model_not_found");
  EXPECT_TRUE(body["error"]["param"].is_null());
  EXPECT_TRUE(ErrorBody(absl::ResourceExhaustedError("full"))["error"]["code"].is_null());
}

}  // namespace
}  // namespace chord::coordinator::http
