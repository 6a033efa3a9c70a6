#include "common/tokenizer/pre_tokenizer.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord::tokenizer_internal {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> SplitWith(std::string_view pre, std::string_view text) {
  auto regexes = PreTokenizerRegexes(pre);
  EXPECT_TRUE(regexes.ok()) << regexes.status();
  if (!regexes.ok()) return {};
  auto splitter = PreTokenizer::Create(*regexes);
  EXPECT_TRUE(splitter.ok()) << splitter.status();
  if (!splitter.ok()) return {};
  return (*splitter)->Split(text);
}

TEST(PreTokenizerTest, UnknownNameIsUnimplemented) {
  auto regexes = PreTokenizerRegexes("no-such-pre");
  ASSERT_FALSE(regexes.ok());
  EXPECT_EQ(regexes.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(regexes.status().message()), ::testing::HasSubstr("no-such-pre"));
}

TEST(PreTokenizerTest, BadRegexIsInvalidArgument) {
  auto splitter = PreTokenizer::Create({"(unclosed"});
  ASSERT_FALSE(splitter.ok());
  EXPECT_EQ(splitter.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PreTokenizerTest, Gpt2) {
  EXPECT_THAT(SplitWith("gpt-2", "Hello world's  test 123!!"),
              ElementsAre("Hello", " world", "'s", " ", " test", " 123", "!!"));
  // A lone tab before a word matches nothing and stays a piece of its own.
  EXPECT_THAT(SplitWith("gpt-2", "a\tb  "), ElementsAre("a", "\t", "b", "  "));
  EXPECT_THAT(SplitWith("gpt-2", "caf\xC3\xA9 \xE4\xB8\x96"),
              ElementsAre("caf\xC3\xA9", " \xE4\xB8\x96"));
  EXPECT_TRUE(SplitWith("gpt-2", "").empty());
}

TEST(PreTokenizerTest, Llama3GroupsDigitsByThree) {
  EXPECT_THAT(SplitWith("llama-bpe", "Hello 12345 world\n\n"),
              ElementsAre("Hello", " ", "123", "45", " world", "\n\n"));
  EXPECT_THAT(SplitWith("llama3", "I'M ok"), ElementsAre("I", "'M", " ok"));
  EXPECT_THAT(SplitWith("llama-bpe", "x = (y);\n"), ElementsAre("x", " =", " (", "y", ");\n"));
}

TEST(PreTokenizerTest, Qwen2SplitsSingleDigits) {
  EXPECT_THAT(SplitWith("qwen2", "Hello 12345 world\n\n"),
              ElementsAre("Hello", " ", "1", "2", "3", "4", "5", " world", "\n\n"));
}

TEST(PreTokenizerTest, RegexesApplyInSequence) {
  // starcoder: first every digit alone, then GPT-2's split inside each piece.
  EXPECT_THAT(SplitWith("starcoder", "ab12 cd"), ElementsAre("ab", "1", "2", " cd"));
  // falcon: punctuation runs first, then three-digit groups.
  EXPECT_THAT(SplitWith("falcon", "a.b 1234"), ElementsAre("a", ".", "b", " ", "123", "4"));
}

}  // namespace
}  // namespace chord::tokenizer_internal
