#include "common/tokenizer/bpe_tokenizer.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord {
namespace {

using ::testing::ElementsAre;

constexpr TokenId kA = 0, kB = 1, kC = 2, kG = 3, kAB = 4, kGA = 5, kGAB = 6, kEnd = 7, kABC = 8;

std::unique_ptr<BpeTokenizer> Make(std::string pre, bool ignore_merges = false) {
  // Byte-level texts: "Ġ" (U+0120) is the space byte.
  std::vector<std::string> tokens = {"a",
                                     "b",
                                     "c",
                                     "\xC4\xA0",
                                     "ab",
                                     "\xC4\xA0"
                                     "a",
                                     "\xC4\xA0"
                                     "ab",
                                     "<|endoftext|>",
                                     "abc"};
  std::vector<int32_t> types = {1, 1, 1, 1, 1, 1, 1, 3, 1};
  std::vector<std::string> merges = {"a b", "\xC4\xA0 a", "\xC4\xA0 ab", "a b"};
  BpeTokenizer::Options options;
  options.pre = std::move(pre);
  options.ignore_merges = ignore_merges;
  options.special = {.bos = kEnd, .eos = kEnd, .add_bos = true};
  auto tok = BpeTokenizer::Create(std::move(tokens), std::move(types), merges, options);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

TEST(BpeTokenizerTest, MergesLowestRankFirst) {
  auto tok = Make("gpt-2");
  ASSERT_NE(tok, nullptr);
  // " ab": "a b" (rank 0) beats "Ġ a" (rank 1), then "Ġ ab" (rank 2).
  EXPECT_THAT(tok->Encode("ab ab", false), ElementsAre(kAB, kGAB));
  EXPECT_THAT(tok->Encode(" a", false), ElementsAre(kGA));
  EXPECT_THAT(tok->Encode("ba", false), ElementsAre(kB, kA));
  // "abc" is a token, but no merge reaches it.
  EXPECT_THAT(tok->Encode("abc", false), ElementsAre(kAB, kC));
  // Bytes with no token are dropped, as llama.cpp does.
  EXPECT_THAT(tok->Encode("d", false), ElementsAre());
  EXPECT_EQ(tok->pre_tokenizer(), "gpt-2");
}

TEST(BpeTokenizerTest, IgnoreMergesTakesWholeWords) {
  auto tok = Make("llama-bpe", /*ignore_merges=*/true);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("abc", false), ElementsAre(kABC));
  EXPECT_THAT(tok->Encode("abc", true), ElementsAre(kEnd, kABC));
}

TEST(BpeTokenizerTest, SpecialTokens) {
  auto tok = Make("gpt-2");
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("a<|endoftext|>b", false, /*parse_special=*/true),
              ElementsAre(kA, kEnd, kB));
  EXPECT_TRUE(tok->IsEndOfGeneration(kEnd));
  EXPECT_TRUE(tok->IsControl(kEnd));
  EXPECT_EQ(tok->TokenToPiece(kEnd), "");
  EXPECT_EQ(tok->TokenToPiece(kEnd, true), "<|endoftext|>");
  EXPECT_EQ(tok->TokenToPiece(kGAB), " ab");
  EXPECT_FALSE(tok->add_space_prefix());
  // BPE keeps the leading space when detokenizing.
  EXPECT_EQ(Detokenize(*tok, std::vector<TokenId>{kGA, kB}), " ab");
}

TEST(BpeTokenizerTest, UnknownPreTokenizerIsUnimplemented) {
  auto tok = BpeTokenizer::Create({"a"}, {}, {}, {.pre = "mystery"});
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(tok.status().message()), ::testing::HasSubstr("mystery"));
}

}  // namespace
}  // namespace chord
