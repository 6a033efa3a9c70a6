#include "common/tokenizer/spm_tokenizer.h"

#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord {
namespace {

using ::testing::ElementsAre;
using tokenizer_internal::kTypeByte;
using tokenizer_internal::kTypeControl;
using tokenizer_internal::kTypeNormal;
using tokenizer_internal::kTypeUnknown;

constexpr TokenId kByte0 = 3;  // <0x00>; byte b is kByte0 + b
constexpr TokenId kSpace = 259, kA = 260, kB = 261, kC = 262, kSpaceA = 263, kAB = 264, kBC = 265,
                  kSpaceAB = 266, kX = 267, kY = 268;

struct VocabSpec {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  void Add(std::string text, float score, int32_t type) {
    tokens.push_back(std::move(text));
    scores.push_back(score);
    types.push_back(type);
  }
};

// <unk> <s> </s>, 256 byte tokens, then a few pieces with chosen scores.
VocabSpec TestVocab(bool with_bytes = true) {
  VocabSpec v;
  v.Add("<unk>", 0, kTypeUnknown);
  v.Add("<s>", 0, kTypeControl);
  v.Add("</s>", 0, kTypeControl);
  for (int b = 0; b < 256; ++b) {
    // Without byte tokens, keep the ids stable with unrelated filler pieces.
    v.Add(with_bytes ? absl::StrFormat("<0x%02X>", b) : absl::StrFormat("filler%d", b), 0,
          with_bytes ? kTypeByte : kTypeNormal);
  }
  v.Add("\xE2\x96\x81", -10, kTypeNormal);  // ▁
  v.Add("a", -10, kTypeNormal);
  v.Add("b", -10, kTypeNormal);
  v.Add("c", -10, kTypeNormal);
  v.Add(
      "\xE2\x96\x81"
      "a",
      -1, kTypeNormal);  // ▁a
  v.Add("ab", -2, kTypeNormal);
  v.Add("bc", -0.5, kTypeNormal);
  v.Add(
      "\xE2\x96\x81"
      "ab",
      -3, kTypeNormal);  // ▁ab
  v.Add("x", -10, kTypeNormal);
  v.Add("y", -10, kTypeNormal);
  v.Add("xy", -4, kTypeNormal);
  v.Add("yx", -4, kTypeNormal);
  return v;
}

std::unique_ptr<SpmTokenizer> Make(VocabSpec v, SpmTokenizer::Options options = {}) {
  if (options.special.bos == -1) options.special = {.bos = 1, .eos = 2, .unk = 0, .add_bos = true};
  auto tok = SpmTokenizer::Create(std::move(v.tokens), std::move(v.scores), std::move(v.types),
                                  std::move(options));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

TEST(SpmTokenizerTest, MergesBestScoreFirst) {
  auto tok = Make(TestVocab());
  ASSERT_NE(tok, nullptr);
  // "▁ab": ▁a (-1) beats ab (-2); then ▁a + b forms ▁ab.
  EXPECT_THAT(tok->Encode("ab", false), ElementsAre(kSpaceAB));
  // "▁abc": bc (-0.5) goes first, which leaves ▁a + bc.
  EXPECT_THAT(tok->Encode("abc", false), ElementsAre(kSpaceA, kBC));
  // Spaces inside the text become ▁ too.
  EXPECT_THAT(tok->Encode("a c", false), ElementsAre(kSpaceA, kSpace, kC));
}

TEST(SpmTokenizerTest, EqualScoresMergeLeftmostFirst) {
  auto tok = Make(TestVocab(), {.add_space_prefix = false});
  ASSERT_NE(tok, nullptr);
  // xy and yx tie at -4: the left pair wins, so "xyx" -> xy + x, "yxy" -> yx + y.
  EXPECT_THAT(tok->Encode("xyx", false), ElementsAre(kX + 2, kX));
  EXPECT_THAT(tok->Encode("yxy", false), ElementsAre(kX + 3, kY));
}

TEST(SpmTokenizerTest, ByteFallbackAndUnknown) {
  auto tok = Make(TestVocab());
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("\xC3\xA9", false), ElementsAre(kSpace, kByte0 + 0xC3, kByte0 + 0xA9));
  auto no_bytes = Make(TestVocab(/*with_bytes=*/false));
  ASSERT_NE(no_bytes, nullptr);
  EXPECT_THAT(no_bytes->Encode("\xC3\xA9", false), ElementsAre(kSpace, 0, 0));
}

TEST(SpmTokenizerTest, SpecialTokensAndFlags) {
  auto tok = Make(TestVocab());
  ASSERT_NE(tok, nullptr);
  EXPECT_TRUE(tok->Encode("", false).empty());
  EXPECT_THAT(tok->Encode("", true), ElementsAre(1));
  EXPECT_THAT(tok->Encode("ab", true), ElementsAre(1, kSpaceAB));
  // A special token resets the space prefix for the text after it.
  EXPECT_THAT(tok->Encode("a</s>b", false, /*parse_special=*/true),
              ElementsAre(kSpaceA, 2, kSpace, kB));
  // Without parse_special the control text is plain text (bytes here).
  const std::vector<TokenId> plain = tok->Encode("</s>", false);
  EXPECT_THAT(plain, ElementsAre(kSpace, kByte0 + '<', kByte0 + '/', kByte0 + 's', kByte0 + '>'));

  auto with_eos = Make(
      TestVocab(), {.special = {.bos = 1, .eos = 2, .unk = 0, .add_bos = true, .add_eos = true}});
  ASSERT_NE(with_eos, nullptr);
  EXPECT_THAT(with_eos->Encode("ab", true), ElementsAre(1, kSpaceAB, 2));
  EXPECT_TRUE(with_eos->IsEndOfGeneration(2));
  EXPECT_FALSE(with_eos->IsEndOfGeneration(1));
  EXPECT_TRUE(with_eos->IsControl(1));
  EXPECT_FALSE(with_eos->IsControl(kA));
}

TEST(SpmTokenizerTest, TokenToPiece) {
  auto tok = Make(TestVocab());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->TokenToPiece(kSpaceAB), " ab");
  EXPECT_EQ(tok->TokenToPiece(kByte0 + 'A'), "A");
  EXPECT_EQ(tok->TokenToPiece(kByte0 + 0xFF), "\xFF");
  EXPECT_EQ(tok->TokenToPiece(1), "");
  EXPECT_EQ(tok->TokenToPiece(1, /*render_special=*/true), "<s>");
  EXPECT_EQ(tok->TokenToPiece(0), "");
  EXPECT_EQ(tok->TokenToPiece(-1), "");
  EXPECT_EQ(tok->TokenToPiece(100000), "");
  EXPECT_EQ(tok->TokenText(kSpaceAB),
            "\xE2\x96\x81"
            "ab");
}

TEST(SpmTokenizerTest, BadMetadataIsInvalidArgument) {
  VocabSpec v = TestVocab();
  v.scores.pop_back();
  auto tok = SpmTokenizer::Create(v.tokens, v.scores, v.types, {});
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tok.status().message()), ::testing::HasSubstr("tokenizer.ggml.scores"));

  v = TestVocab();
  v.types.push_back(1);
  tok = SpmTokenizer::Create(v.tokens, v.scores, v.types, {});
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(std::string(tok.status().message()),
              ::testing::HasSubstr("tokenizer.ggml.token_type"));

  v = TestVocab();
  tok = SpmTokenizer::Create(v.tokens, v.scores, v.types, {.special = {.bos = 5000}});
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(std::string(tok.status().message()),
              ::testing::HasSubstr("tokenizer.ggml.bos_token_id"));
}

std::string Stream(const Tokenizer& tok, const std::vector<TokenId>& ids,
                   std::vector<std::string>* chunks) {
  StreamingDetokenizer stream(tok);
  std::string all;
  for (TokenId id : ids) {
    chunks->push_back(stream.Push(id));
    all += chunks->back();
  }
  chunks->push_back(stream.Flush());
  return all + chunks->back();
}

TEST(StreamingDetokenizerTest, EmojiSplitOverByteTokens) {
  auto tok = Make(TestVocab());
  ASSERT_NE(tok, nullptr);
  std::vector<std::string> chunks;
  // 🍎 = F0 9F 8D 8E, one byte token each, after " ab" (first piece: space dropped).
  const std::string text =
      Stream(*tok, {kSpaceAB, kByte0 + 0xF0, kByte0 + 0x9F, kByte0 + 0x8D, kByte0 + 0x8E, kSpaceA},
             &chunks);
  EXPECT_THAT(chunks, ElementsAre("ab", "", "", "", "\xF0\x9F\x8D\x8E", " a", ""));
  EXPECT_EQ(text, "ab\xF0\x9F\x8D\x8E a");
}

TEST(StreamingDetokenizerTest, InvalidBytesAndFlush) {
  auto tok = Make(TestVocab());
  ASSERT_NE(tok, nullptr);
  std::vector<std::string> chunks;
  // A stray continuation byte, then a code point cut short by the end.
  const std::string text =
      Stream(*tok, {kA, kByte0 + 0x80, kB, kByte0 + 0xE2, kByte0 + 0x82}, &chunks);
  EXPECT_THAT(chunks, ElementsAre("a", "\xEF\xBF\xBD", "b", "", "", "\xEF\xBF\xBD"));
  // A code point interrupted by a complete one: the broken part becomes U+FFFD.
  EXPECT_EQ(Detokenize(*tok, std::vector<TokenId>{kByte0 + 0xF0, kByte0 + 0x9F, kA}),
            "\xEF\xBF\xBD"
            "a");
  EXPECT_EQ(text,
            "a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD");
}

TEST(StreamingDetokenizerTest, LeadingSpaceOnlyFromTheFirstPiece) {
  auto tok = Make(TestVocab());
  ASSERT_NE(tok, nullptr);
  const std::vector<TokenId> ids = {kSpaceA, kSpaceAB};
  EXPECT_EQ(Detokenize(*tok, ids), "a ab");
  EXPECT_EQ(Detokenize(*tok, ids, /*strip_leading_space=*/false), " a ab");
  // The first token renders empty (control): the chance to strip is gone.
  EXPECT_EQ(Detokenize(*tok, std::vector<TokenId>{1, kSpaceA}), " a");
  // Round trip of text with spaces and non-ASCII via byte fallback. After BOS
  // the prefixed space survives, as in llama.cpp.
  const std::string s = "ab c \xC3\xA9\xF0\x9F\x8D\x8E";
  EXPECT_EQ(Detokenize(*tok, tok->Encode(s, false)), s);
  EXPECT_EQ(Detokenize(*tok, tok->Encode(s, true)), " " + s);
}

}  // namespace
}  // namespace chord
