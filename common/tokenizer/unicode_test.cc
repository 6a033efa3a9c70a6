#include "common/tokenizer/unicode.h"

#include <string>

#include "gtest/gtest.h"

namespace chord::tokenizer_internal {
namespace {

constexpr char kFffd[] = "\xEF\xBF\xBD";

TEST(UnicodeTest, ByteTableIsGpt2sAndReversible) {
  EXPECT_EQ(ByteToUnicode('!'), static_cast<uint32_t>('!'));
  EXPECT_EQ(ByteToUnicode(' '), 0x120u);   // "Ġ"
  EXPECT_EQ(ByteToUnicode('\n'), 0x10Au);  // "Ċ"
  EXPECT_EQ(ByteToUnicode(0xAD), 0x143u);
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(ByteFromUnicode(ByteToUnicode(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(ByteFromUnicode(0x4E00), -1);
  EXPECT_EQ(ByteEncode("a b\n"),
            "a\xC4\xA0"
            "b\xC4\x8A");
}

TEST(UnicodeTest, DecodeReplacesBadBytesOneEach) {
  EXPECT_EQ(DecodeUtf8("a\xC3\xA9"), (std::vector<uint32_t>{'a', 0xE9}));
  EXPECT_EQ(DecodeUtf8("\xF0\x9F\x8D\x8E"), (std::vector<uint32_t>{0x1F34E}));
  EXPECT_EQ(DecodeUtf8("\xFF"
                       "a\xE2\x82"),
            (std::vector<uint32_t>{0xFFFD, 'a', 0xFFFD, 0xFFFD}));
}

TEST(UnicodeTest, TakeValidUtf8HoldsBackPartialCodePoints) {
  std::string pending;
  EXPECT_EQ(TakeValidUtf8(&pending, "a\xF0\x9F"), "a");
  EXPECT_EQ(pending, "\xF0\x9F");
  EXPECT_EQ(TakeValidUtf8(&pending, "\x8D"), "");
  EXPECT_EQ(TakeValidUtf8(&pending, "\x8E!"), "\xF0\x9F\x8D\x8E!");
  EXPECT_TRUE(pending.empty());
  EXPECT_EQ(FlushUtf8(&pending), "");
}

TEST(UnicodeTest, TakeValidUtf8ReplacesMaximalSubparts) {
  std::string pending;
  // Same results as Python's bytes.decode("utf-8", errors="replace").
  EXPECT_EQ(TakeValidUtf8(&pending, "\xFF"), kFffd);
  EXPECT_EQ(TakeValidUtf8(&pending,
                          "a\x80"
                          "b"),
            std::string("a") + kFffd + "b");
  EXPECT_EQ(TakeValidUtf8(&pending, "\xE0\x80"), std::string(kFffd) + kFffd);
  EXPECT_EQ(TakeValidUtf8(&pending,
                          "\xF0\x9F\x8D"
                          "A"),
            std::string(kFffd) + "A");
  EXPECT_EQ(TakeValidUtf8(&pending, "\xED\xA0\x80"), std::string(kFffd) + kFffd + kFffd);
  EXPECT_EQ(TakeValidUtf8(&pending, "\xE2\x82"), "");
  EXPECT_EQ(FlushUtf8(&pending), kFffd);
  EXPECT_TRUE(pending.empty());
}

}  // namespace
}  // namespace chord::tokenizer_internal
