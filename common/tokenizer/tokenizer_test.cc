// Tokenizer::FromGguf on small GGUF images built here byte by byte.
#include "common/tokenizer/tokenizer.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/gguf/gguf_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Writes a GGUF v3 image with metadata only.
class GgufImage {
 public:
  GgufImage& Str(const std::string& key, const std::string& value) {
    Key(key, 8);
    String(value);
    return Count();
  }
  GgufImage& U32(const std::string& key, uint32_t value) {
    Key(key, 4);
    Pod(value);
    return Count();
  }
  GgufImage& Bool(const std::string& key, bool value) {
    Key(key, 7);
    Pod(static_cast<uint8_t>(value));
    return Count();
  }
  GgufImage& Strings(const std::string& key, const std::vector<std::string>& values) {
    Key(key, 9);
    Pod(uint32_t{8});
    Pod(uint64_t{values.size()});
    for (const auto& v : values) String(v);
    return Count();
  }
  GgufImage& Floats(const std::string& key, const std::vector<float>& values) {
    Key(key, 9);
    Pod(uint32_t{6});
    Pod(uint64_t{values.size()});
    for (float v : values) Pod(v);
    return Count();
  }
  GgufImage& Ints(const std::string& key, const std::vector<int32_t>& values) {
    Key(key, 9);
    Pod(uint32_t{5});
    Pod(uint64_t{values.size()});
    for (int32_t v : values) Pod(v);
    return Count();
  }

  std::vector<uint8_t> Bytes() const {
    std::vector<uint8_t> out = {'G', 'G', 'U', 'F', 3, 0, 0, 0};
    const auto put64 = [&](uint64_t v) {
      for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
    };
    put64(0);  // tensors
    put64(n_kv_);
    out.insert(out.end(), body_.begin(), body_.end());
    while (out.size() % 32 != 0) out.push_back(0);
    return out;
  }

 private:
  template <typename T>
  void Pod(T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    body_.insert(body_.end(), b, b + sizeof(T));
  }
  void String(const std::string& s) {
    Pod(uint64_t{s.size()});
    body_.insert(body_.end(), s.begin(), s.end());
  }
  void Key(const std::string& key, uint32_t type) {
    String(key);
    Pod(type);
  }
  GgufImage& Count() {
    ++n_kv_;
    return *this;
  }

  std::vector<uint8_t> body_;
  uint64_t n_kv_ = 0;
};

const std::vector<std::string> kSpmTokens = {"<unk>", "<s>", "</s>",
                                             "\xE2\x96\x81"
                                             "a",
                                             "a"};

GgufImage SpmImage() {
  GgufImage image;
  image.Str("tokenizer.ggml.model", "llama")
      .Strings("tokenizer.ggml.tokens", kSpmTokens)
      .Floats("tokenizer.ggml.scores", {0, 0, 0, -1, -2})
      .Ints("tokenizer.ggml.token_type", {2, 3, 3, 1, 1});
  return image;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::vector<uint8_t>& bytes) {
  auto file = gguf::GgufFile::Parse(bytes);
  if (!file.ok()) return file.status();
  return Tokenizer::FromGguf(**file);
}

TEST(TokenizerFromGgufTest, SpmDefaultsAndFlags) {
  const std::vector<uint8_t> bytes = SpmImage().Bytes();
  auto tok = Load(bytes);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), TokenizerKind::kSentencePiece);
  EXPECT_EQ((*tok)->kind_name(), "llama");
  EXPECT_EQ((*tok)->vocab_size(), 5);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_TRUE((*tok)->add_bos());
  EXPECT_FALSE((*tok)->add_eos());
  EXPECT_TRUE((*tok)->add_space_prefix());
  EXPECT_THAT((*tok)->Encode("a", true), ElementsAre(1, 3));
  EXPECT_THAT((*tok)->end_of_generation_ids(), ElementsAre(2));

  const std::vector<uint8_t> flags = SpmImage()
                                         .Bool("tokenizer.ggml.add_bos_token", false)
                                         .Bool("tokenizer.ggml.add_eos_token", true)
                                         .Bool("tokenizer.ggml.add_space_prefix", false)
                                         .U32("tokenizer.ggml.eos_token_id", 0xFFFFFFFFu)
                                         .Bytes();
  tok = Load(flags);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // No prefix: "a" alone; the all-ones eos id keeps the default.
  EXPECT_THAT((*tok)->Encode("a", true), ElementsAre(4, 2));
}

TEST(TokenizerFromGgufTest, UnknownModelIsUnimplemented) {
  GgufImage image;
  image.Str("tokenizer.ggml.model", "bert").Strings("tokenizer.ggml.tokens", kSpmTokens);
  auto tok = Load(image.Bytes());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("bert"));
}

TEST(TokenizerFromGgufTest, UnknownPreIsUnimplemented) {
  GgufImage image;
  image.Str("tokenizer.ggml.model", "gpt2")
      .Str("tokenizer.ggml.pre", "mystery")
      .Strings("tokenizer.ggml.tokens", {"a", "b"})
      .Strings("tokenizer.ggml.merges", {"a b"});
  auto tok = Load(image.Bytes());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("mystery"));
}

TEST(TokenizerFromGgufTest, BadMetadataIsInvalidArgument) {
  GgufImage short_scores;
  short_scores.Str("tokenizer.ggml.model", "llama")
      .Strings("tokenizer.ggml.tokens", kSpmTokens)
      .Floats("tokenizer.ggml.scores", {0, 0});
  auto tok = Load(short_scores.Bytes());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("tokenizer.ggml.scores"));

  tok = Load(SpmImage().U32("tokenizer.ggml.bos_token_id", 99).Bytes());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("tokenizer.ggml.bos_token_id"));

  GgufImage no_merges;
  no_merges.Str("tokenizer.ggml.model", "gpt2").Strings("tokenizer.ggml.tokens", {"a"});
  tok = Load(no_merges.Bytes());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("tokenizer.ggml.merges"));

  GgufImage no_model;
  no_model.Strings("tokenizer.ggml.tokens", kSpmTokens);
  tok = Load(no_model.Bytes());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerFromGgufTest, BpeDefaults) {
  GgufImage image;
  image.Str("tokenizer.ggml.model", "gpt2")
      .Str("tokenizer.ggml.pre", "llama-bpe")
      .Strings("tokenizer.ggml.tokens", {"a", "b", "ab", "<|begin_of_text|>", "<|eot_id|>"})
      .Ints("tokenizer.ggml.token_type", {1, 1, 1, 3, 3})
      .Strings("tokenizer.ggml.merges", {"a b"})
      .U32("tokenizer.ggml.bos_token_id", 3)
      .U32("tokenizer.ggml.eos_token_id", 4);
  auto tok = Load(image.Bytes());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), TokenizerKind::kBytePairEncoding);
  EXPECT_EQ((*tok)->pre_tokenizer(), "llama-bpe");
  EXPECT_TRUE((*tok)->add_bos());  // llama.cpp's default for Llama 3
  EXPECT_THAT((*tok)->Encode("ab", true), ElementsAre(3, 2));
  EXPECT_TRUE((*tok)->IsEndOfGeneration(4));
}

}  // namespace
}  // namespace chord
