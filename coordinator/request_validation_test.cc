#include "coordinator/request_validation.h"

#include <cmath>
#include <filesystem>
#include <limits>

#include "common/gguf/gguf_file.h"
#include "gtest/gtest.h"

namespace chord::coordinator {
namespace {

class RequestValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(CHORD_DEFAULT_MODEL)) GTEST_SKIP() << "no model at " << CHORD_DEFAULT_MODEL;
    auto file = gguf::GgufFile::Open(CHORD_DEFAULT_MODEL);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = *std::move(file);
    auto tokenizer = Tokenizer::FromGguf(*file_);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
    limits_.n_ctx = 64;
    limits_.max_tokens_limit = 64;
  }

  absl::StatusCode Code(const chord::v1::GenerateRequest& request) {
    return ValidateGenerateRequest(request, *tokenizer_, limits_, 42).status().code();
  }
  chord::v1::GenerateRequest Good() {
    chord::v1::GenerateRequest request;
    request.set_prompt("Once upon a time");
    return request;
  }

  std::unique_ptr<gguf::GgufFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  RequestLimits limits_;
};

TEST_F(RequestValidationTest, FillsDefaults) {
  auto validated = ValidateGenerateRequest(Good(), *tokenizer_, limits_, 42);
  ASSERT_TRUE(validated.ok()) << validated.status();
  EXPECT_EQ(validated->prompt, tokenizer_->Encode("Once upon a time", true));
  EXPECT_EQ(validated->prompt.front(), tokenizer_->bos_id());
  EXPECT_FLOAT_EQ(validated->sampling.temperature, 1.0f);
  EXPECT_EQ(validated->sampling.top_k, 0);
  EXPECT_FLOAT_EQ(validated->sampling.top_p, 1.0f);
  EXPECT_FLOAT_EQ(validated->sampling.min_p, 0.0f);
  EXPECT_FLOAT_EQ(validated->sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(validated->sampling.penalty_last_n, 64);
  EXPECT_EQ(validated->sampling.seed, 42u);
  // Default 256, capped by what is left of the 64-position context.
  EXPECT_EQ(validated->max_tokens, 64 - static_cast<int>(validated->prompt.size()));
}

TEST_F(RequestValidationTest, KeepsExplicitValues) {
  chord::v1::GenerateRequest request;
  request.mutable_prompt_token_ids()->add_ids(1);
  request.mutable_prompt_token_ids()->add_ids(300);
  request.set_max_tokens(5);
  request.mutable_sampling()->set_temperature(0);
  request.mutable_sampling()->set_seed(7);
  request.mutable_sampling()->set_top_k(3);
  (*request.mutable_sampling()->mutable_logit_bias())[9] = -2.5f;
  request.add_stop("\n\n");
  request.add_stop_token_ids(13);
  request.set_logprobs(3);
  auto validated = ValidateGenerateRequest(request, *tokenizer_, limits_, 42);
  ASSERT_TRUE(validated.ok()) << validated.status();
  EXPECT_EQ(validated->prompt, (std::vector<TokenId>{1, 300}));
  EXPECT_EQ(validated->max_tokens, 5);
  EXPECT_EQ(validated->sampling.seed, 7u);
  EXPECT_EQ(validated->sampling.top_k, 3);
  EXPECT_FLOAT_EQ(validated->sampling.temperature, 0.0f);
  ASSERT_EQ(validated->sampling.logit_bias.size(), 1u);
  EXPECT_EQ(validated->sampling.logit_bias[0].first, 9);
  EXPECT_EQ(validated->stop, std::vector<std::string>{"\n\n"});
  EXPECT_EQ(validated->stop_token_ids, std::vector<TokenId>{13});
  EXPECT_EQ(validated->logprobs, 3u);
}

TEST_F(RequestValidationTest, EachBadRequestGetsItsCode) {
  using absl::StatusCode;
  EXPECT_EQ(Code(chord::v1::GenerateRequest()), StatusCode::kInvalidArgument);  // no input
  chord::v1::GenerateRequest r = Good();
  r.mutable_prompt_token_ids();  // an empty id list
  EXPECT_EQ(Code(r), StatusCode::kInvalidArgument);
  r = Good();
  r.mutable_prompt_token_ids()->add_ids(static_cast<uint32_t>(tokenizer_->vocab_size()));
  EXPECT_EQ(Code(r), StatusCode::kInvalidArgument);
  r = Good();
  for (int i = 0; i < 64; ++i) r.mutable_prompt_token_ids()->add_ids(100);
  EXPECT_EQ(Code(r), StatusCode::kOutOfRange);
  const auto with = [&](auto mutate) {
    chord::v1::GenerateRequest request = Good();
    mutate(request);
    return Code(request);
  };
  EXPECT_EQ(with([](auto& q) { q.set_max_tokens(0); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) { q.set_max_tokens(65); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) { q.mutable_sampling()->set_temperature(std::nanf("")); }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) { q.mutable_sampling()->set_temperature(-0.5f); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) { q.mutable_sampling()->set_top_p(0); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) { q.mutable_sampling()->set_top_p(1.5f); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) { q.mutable_sampling()->set_min_p(-0.1f); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) { q.mutable_sampling()->set_min_p(1.1f); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) { q.mutable_sampling()->set_repetition_penalty(0); }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(with([&](auto& q) {
              (*q.mutable_sampling()->mutable_logit_bias())[tokenizer_->vocab_size()] = 1.0f;
            }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) {
              for (int i = 0; i < 17; ++i) q.add_stop("x");
            }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) { q.add_stop(std::string(257, 'x')); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(with([&](auto& q) { q.add_stop_token_ids(tokenizer_->vocab_size()); }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(with([](auto& q) { q.set_logprobs(21); }), StatusCode::kInvalidArgument);
}

TEST_F(RequestValidationTest, MaxTokensIsCappedByTheContextLeft) {
  chord::v1::GenerateRequest request;
  for (int i = 0; i < 60; ++i) request.mutable_prompt_token_ids()->add_ids(100);
  request.set_max_tokens(50);
  auto validated = ValidateGenerateRequest(request, *tokenizer_, limits_, 1);
  ASSERT_TRUE(validated.ok());
  EXPECT_EQ(validated->max_tokens, 4);
}

}  // namespace
}  // namespace chord::coordinator
