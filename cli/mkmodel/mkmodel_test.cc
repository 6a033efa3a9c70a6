#include "cli/mkmodel/mkmodel.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/mkmodel/model_spec.h"
#include "cli/mkmodel/vocab.h"
#include "common/gguf/gguf_file.h"
#include "common/quant/quant.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord::mkmodel {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) /
          absl::StrCat("mkmodel_", name, "_", ::getpid(), ".gguf"))
      .string();
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

MkmodelOptions TinyOptions(FileType type) {
  MkmodelOptions options;
  options.shape = *FindPreset("tiny");
  options.file_type = type;
  options.seed = 1234;
  options.threads = 2;
  return options;
}

// Layers that llama.cpp's use_more_bits picks, computed by hand.
std::set<int> ExpectedMoreBitsLayers(int n_layer) {
  if (n_layer == 4) return {2, 3};
  if (n_layer == 22) return {0, 1, 4, 7, 10, 13, 16, 19, 20, 21};
  if (n_layer == 32) return {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};
  ADD_FAILURE() << "no expectation for " << n_layer;
  return {};
}

TEST(ModelSpecTest, Q4KMMixMatchesLlamaCpp) {
  for (int n_layer : {4, 22, 32}) {
    for (bool tied : {false, true}) {
      ModelShape shape = *FindPreset("tiny");
      shape.n_layer = n_layer;
      shape.tied = tied;
      absl::StatusOr<std::vector<TensorPlan>> plan = PlanTensors(shape, FileType::kQ4_K_M);
      ASSERT_TRUE(plan.ok()) << plan.status();
      const std::set<int> more = ExpectedMoreBitsLayers(n_layer);
      for (const TensorPlan& t : *plan) {
        DType want = DType::kQ4_K;
        if (IsNorm(t.role)) {
          want = DType::kF32;
        } else if (t.role == TensorRole::kOutput || (t.role == TensorRole::kTokenEmbd && tied)) {
          want = DType::kQ6_K;
        } else if ((t.role == TensorRole::kAttnV || t.role == TensorRole::kFfnDown) &&
                   more.contains(t.layer)) {
          want = DType::kQ6_K;
        }
        EXPECT_EQ(t.type, want) << t.name << " n_layer=" << n_layer << " tied=" << tied;
      }
    }
  }
}

TEST(ModelSpecTest, SimpleTypesAndOutput) {
  ModelShape shape = *FindPreset("tiny");
  struct Case {
    FileType file;
    DType matrix;
    DType output;
  };
  for (const Case& c : {Case{FileType::kF32, DType::kF32, DType::kF32},
                        Case{FileType::kF16, DType::kF16, DType::kF16},
                        Case{FileType::kQ8_0, DType::kQ8_0, DType::kQ8_0},
                        Case{FileType::kQ4_0, DType::kQ4_0, DType::kQ6_K},
                        Case{FileType::kQ6_K, DType::kQ6_K, DType::kQ6_K},
                        Case{FileType::kQ5_K_M, DType::kQ5_K, DType::kQ6_K}}) {
    absl::StatusOr<std::vector<TensorPlan>> plan = PlanTensors(shape, c.file);
    ASSERT_TRUE(plan.ok()) << plan.status();
    for (const TensorPlan& t : *plan) {
      if (IsNorm(t.role)) {
        EXPECT_EQ(t.type, DType::kF32) << t.name;
      } else if (t.role == TensorRole::kOutput) {
        EXPECT_EQ(t.type, c.output) << FileTypeName(c.file);
      } else if (c.file != FileType::kQ5_K_M) {
        EXPECT_EQ(t.type, c.matrix) << t.name << " " << FileTypeName(c.file);
      }
    }
  }
}

TEST(ModelSpecTest, ShapesAndNames) {
  ModelShape shape = *FindPreset("tinyllama-1.1b");
  absl::StatusOr<std::vector<TensorPlan>> plan = PlanTensors(shape, FileType::kQ4_K_M);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->size(), 3u + 22u * 9u);
  auto find = [&](const std::string& name) -> const TensorPlan* {
    for (const TensorPlan& t : *plan) {
      if (t.name == name) return &t;
    }
    return nullptr;
  };
  ASSERT_NE(find("token_embd.weight"), nullptr);
  EXPECT_EQ(find("token_embd.weight")->dims, (std::vector<int64_t>{2048, 32000}));
  EXPECT_EQ(find("output.weight")->dims, (std::vector<int64_t>{2048, 32000}));
  EXPECT_EQ(find("output_norm.weight")->dims, (std::vector<int64_t>{2048}));
  EXPECT_EQ(find("blk.21.attn_q.weight")->dims, (std::vector<int64_t>{2048, 2048}));
  EXPECT_EQ(find("blk.0.attn_k.weight")->dims, (std::vector<int64_t>{2048, 256}));
  EXPECT_EQ(find("blk.0.attn_v.weight")->dims, (std::vector<int64_t>{2048, 256}));
  EXPECT_EQ(find("blk.3.attn_output.weight")->dims, (std::vector<int64_t>{2048, 2048}));
  EXPECT_EQ(find("blk.3.ffn_gate.weight")->dims, (std::vector<int64_t>{2048, 5632}));
  EXPECT_EQ(find("blk.3.ffn_up.weight")->dims, (std::vector<int64_t>{2048, 5632}));
  EXPECT_EQ(find("blk.3.ffn_down.weight")->dims, (std::vector<int64_t>{5632, 2048}));
  EXPECT_EQ(find("blk.3.ffn_norm.weight")->dims, (std::vector<int64_t>{2048}));
  shape.tied = true;
  plan = PlanTensors(shape, FileType::kQ4_K_M);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(find("output.weight"), nullptr);
}

TEST(ModelSpecTest, RejectsBadShapes) {
  ModelShape shape = *FindPreset("tiny");
  shape.n_head = 3;
  EXPECT_THAT(ValidateShape(shape).message(), HasSubstr("n_head"));
  shape = *FindPreset("tiny");
  shape.n_head_kv = 3;
  EXPECT_THAT(ValidateShape(shape).message(), HasSubstr("n_head_kv"));
  shape = *FindPreset("tiny");
  shape.n_layer = 0;
  EXPECT_FALSE(ValidateShape(shape).ok());
  // K-quants need rows of 256; Q6_K falls back to Q8_0 like llama.cpp,
  // Q4_K would need Q5_0, which is refused with a clear message.
  shape = *FindPreset("tiny");
  shape.n_ff = 384;
  absl::StatusOr<std::vector<TensorPlan>> q6 = PlanTensors(shape, FileType::kQ6_K);
  ASSERT_TRUE(q6.ok()) << q6.status();
  for (const TensorPlan& t : *q6) {
    if (t.role == TensorRole::kFfnDown) {
      EXPECT_EQ(t.type, DType::kQ8_0);
    } else if (t.role == TensorRole::kFfnUp) {
      EXPECT_EQ(t.type, DType::kQ6_K);
    }
  }
  absl::StatusOr<std::vector<TensorPlan>> q4 = PlanTensors(shape, FileType::kQ4_K_M);
  ASSERT_FALSE(q4.ok());
  EXPECT_THAT(q4.status().message(), HasSubstr("q5_0"));
  EXPECT_FALSE(FindPreset("nope").has_value());
  EXPECT_FALSE(ParseFileType("Q3_K").has_value());
  EXPECT_EQ(ParseFileType("q4_k_m"), FileType::kQ4_K_M);
  EXPECT_EQ(LlamaFtype(FileType::kQ4_K_M), 15u);
  EXPECT_EQ(LlamaFtype(FileType::kQ8_0), 7u);
}

TEST(VocabTest, SyntheticVocabularyIsValid) {
  for (int64_t n : {int64_t{kMinSyntheticVocab}, int64_t{1000}, int64_t{32000}}) {
    absl::StatusOr<Vocab> vocab = MakeSyntheticVocab(n);
    ASSERT_TRUE(vocab.ok()) << vocab.status();
    ASSERT_EQ(vocab->tokens.size(), static_cast<size_t>(n));
    ASSERT_EQ(vocab->scores.size(), static_cast<size_t>(n));
    ASSERT_EQ(vocab->types.size(), static_cast<size_t>(n));
    EXPECT_EQ(vocab->tokens[0], "<unk>");
    EXPECT_EQ(vocab->tokens[1], "<s>");
    EXPECT_EQ(vocab->tokens[2], "</s>");
    EXPECT_EQ(vocab->types[0], 2);
    EXPECT_EQ(vocab->types[1], 3);
    EXPECT_EQ(vocab->types[2], 3);
    EXPECT_EQ(vocab->tokens[3], "<0x00>");
    EXPECT_EQ(vocab->tokens[3 + 0xAB], "<0xAB>");
    EXPECT_EQ(vocab->tokens[258], "<0xFF>");
    for (int i = 3; i < 259; ++i) EXPECT_EQ(vocab->types[i], 6);
    const std::set<std::string> distinct(vocab->tokens.begin(), vocab->tokens.end());
    EXPECT_EQ(distinct.size(), vocab->tokens.size());
    bool with_marker = false;
    bool without_marker = false;
    for (size_t i = 259; i < vocab->tokens.size(); ++i) {
      const std::string& piece = vocab->tokens[i];
      EXPECT_EQ(vocab->types[i], 1);
      EXPECT_FALSE(piece.empty());
      (piece.starts_with("\xE2\x96\x81") ? with_marker : without_marker) = true;
      // Reachable by SPM merges: a single character, or a known piece plus one character.
      const size_t last = piece.size() - 1;
      const bool single = piece == "\xE2\x96\x81" || piece.size() == 1 ||
                          (piece.starts_with("\xE2\x96\x81") && piece.size() == 4);
      if (!single) {
        EXPECT_TRUE(distinct.contains(piece.substr(0, last))) << piece;
      }
      if (i > 259) {
        EXPECT_LT(vocab->scores[i], vocab->scores[i - 1]);
      }
    }
    EXPECT_TRUE(with_marker);
    EXPECT_TRUE(without_marker);
  }
  EXPECT_FALSE(MakeSyntheticVocab(100).ok());
}

double RelativeRmsError(const std::vector<float>& want, const std::vector<float>& got) {
  double err = 0.0;
  double ref = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += (want[i] - got[i]) * (want[i] - got[i]);
    ref += want[i] * want[i];
  }
  return std::sqrt(err / ref);
}

double Tolerance(DType type) {
  switch (type) {
    case DType::kF32:
      return 0.0;
    case DType::kF16:
      return 1e-3;
    case DType::kQ8_0:
      return 0.01;
    case DType::kQ6_K:
      return 0.03;
    case DType::kQ5_K:
      return 0.06;
    default:
      return 0.15;
  }
}

// Checks one tensor read back: stored bytes equal what the generator and
// quantizer give, and the dequantized values are close to the generated ones.
void CheckTensor(const gguf::TensorInfo& info, const TensorPlan& plan, size_t index,
                 uint64_t seed) {
  ASSERT_EQ(info.type, plan.type) << plan.name;
  ASSERT_EQ(info.dims, plan.dims) << plan.name;
  std::vector<uint8_t> want(info.n_bytes);
  ASSERT_TRUE(ProduceTensor(plan, index, seed, want).ok());
  EXPECT_TRUE(std::equal(want.begin(), want.end(), info.data)) << plan.name;
  const int64_t n = plan.dims[0];
  const int64_t rows = static_cast<int64_t>(info.n_elements) / n;
  std::vector<float> generated(info.n_elements);
  GenerateRows(plan, index, seed, 0, rows, generated.data());
  bool nonzero = false;
  for (float v : generated) nonzero |= v != 0.0f;
  EXPECT_TRUE(nonzero) << plan.name;
  std::vector<float> decoded(info.n_elements);
  const uint64_t row_bytes = info.n_bytes / static_cast<uint64_t>(rows);
  for (int64_t r = 0; r < rows; ++r) {
    ASSERT_TRUE(
        quant::DequantizeRow(info.type, info.data + r * row_bytes, decoded.data() + r * n, n).ok());
  }
  EXPECT_LE(RelativeRmsError(generated, decoded), Tolerance(info.type)) << plan.name;
}

class RoundTripTest : public ::testing::TestWithParam<FileType> {};

TEST_P(RoundTripTest, ReadsBackMetadataAndTensors) {
  MkmodelOptions options = TinyOptions(GetParam());
  const std::string path = TempPath(std::string(FileTypeName(GetParam())));
  ASSERT_TRUE(WriteModel(options, path).ok());
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> file = gguf::GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const gguf::GgufFile& f = **file;
  const ModelShape& s = options.shape;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(*f.GetString("general.architecture"), "llama");
  EXPECT_EQ(*f.GetString("general.name"), "tiny");
  EXPECT_EQ(*f.GetInt("general.file_type"), LlamaFtype(GetParam()));
  EXPECT_EQ(*f.GetInt("llama.context_length"), s.n_ctx);
  EXPECT_EQ(*f.GetInt("llama.embedding_length"), s.n_embd);
  EXPECT_EQ(*f.GetInt("llama.block_count"), s.n_layer);
  EXPECT_EQ(*f.GetInt("llama.feed_forward_length"), s.n_ff);
  EXPECT_EQ(*f.GetInt("llama.rope.dimension_count"), s.n_embd / s.n_head);
  EXPECT_EQ(*f.GetInt("llama.attention.head_count"), s.n_head);
  EXPECT_EQ(*f.GetInt("llama.attention.head_count_kv"), s.n_head_kv);
  EXPECT_FLOAT_EQ(*f.GetFloat("llama.attention.layer_norm_rms_epsilon"), s.rms_eps);
  EXPECT_FLOAT_EQ(*f.GetFloat("llama.rope.freq_base"), s.rope_base);
  EXPECT_EQ(f.Find("general.alignment"), nullptr);
  EXPECT_EQ(*f.GetString("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens")->size(), static_cast<size_t>(s.n_vocab));
  EXPECT_EQ(f.GetFloatArray("tokenizer.ggml.scores")->size(), static_cast<size_t>(s.n_vocab));
  const std::vector<int64_t> types = *f.GetIntArray("tokenizer.ggml.token_type");
  ASSERT_EQ(types.size(), static_cast<size_t>(s.n_vocab));
  EXPECT_EQ(types[0], 2);
  EXPECT_EQ(types[1], 3);
  EXPECT_EQ(types[100], 6);
  EXPECT_EQ(types[500], 1);
  EXPECT_EQ(*f.GetInt("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(*f.GetInt("tokenizer.ggml.eos_token_id"), 2);
  EXPECT_EQ(*f.GetInt("tokenizer.ggml.unknown_token_id"), 0);

  absl::StatusOr<std::vector<TensorPlan>> plan = PlanTensors(s, GetParam());
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(f.tensors().size(), plan->size());
  for (size_t i = 0; i < plan->size(); ++i) {
    EXPECT_EQ(f.tensors()[i].name, (*plan)[i].name);
    CheckTensor(f.tensors()[i], (*plan)[i], i, options.seed);
  }
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, RoundTripTest,
                         ::testing::Values(FileType::kF32, FileType::kF16, FileType::kQ8_0,
                                           FileType::kQ4_0, FileType::kQ4_K_M, FileType::kQ5_K_M,
                                           FileType::kQ6_K),
                         [](const auto& param_info) {
                           return std::string(FileTypeName(param_info.param));
                         });

TEST(MkmodelTest, SameBytesForAnyThreadCountAndSeedMatters) {
  MkmodelOptions options = TinyOptions(FileType::kQ4_K_M);
  const std::string one = TempPath("t1");
  const std::string four = TempPath("t4");
  const std::string other_seed = TempPath("seed");
  options.threads = 1;
  ASSERT_TRUE(WriteModel(options, one).ok());
  options.threads = 4;
  ASSERT_TRUE(WriteModel(options, four).ok());
  options.seed += 1;
  ASSERT_TRUE(WriteModel(options, other_seed).ok());
  const std::vector<uint8_t> a = ReadFile(one);
  EXPECT_GT(a.size(), 1000000u);
  EXPECT_EQ(a, ReadFile(four));
  EXPECT_NE(a, ReadFile(other_seed));
  for (const std::string& p : {one, four, other_seed}) std::filesystem::remove(p);
}

// chord's own SPM tokenizer loads the synthetic vocabulary, merges text into
// multi-character pieces, falls back to bytes for what it lacks, and decodes
// back to the same text.
TEST(MkmodelTest, SyntheticTokenizerLoadsAndRoundTrips) {
  MkmodelOptions options = TinyOptions(FileType::kQ8_0);
  const std::string path = TempPath("tokenizer");
  ASSERT_TRUE(WriteModel(options, path).ok());
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> file = gguf::GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(**file);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& tok = **tokenizer;
  EXPECT_EQ(tok.kind(), TokenizerKind::kSentencePiece);
  EXPECT_EQ(tok.vocab_size(), options.shape.n_vocab);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  const std::string text = "the little dog played with a red ball, caf\xC3\xA9 42!";
  const std::vector<TokenId> ids = tok.Encode(text, /*add_special=*/true);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  size_t multi_char = 0;
  for (TokenId id : ids) {
    EXPECT_TRUE(tok.IsValid(id));
    if (tok.TokenText(id).size() > 4) ++multi_char;
  }
  EXPECT_GT(multi_char, 3u);
  EXPECT_LT(ids.size(), text.size() / 2);
  EXPECT_EQ(Detokenize(tok, std::span<const TokenId>(ids).subspan(1)), text);
  std::filesystem::remove(path);
}

TEST(MkmodelTest, AlignmentAndTiedModel) {
  MkmodelOptions options = TinyOptions(FileType::kQ8_0);
  options.alignment = 128;
  options.shape.tied = true;
  const std::string path = TempPath("aligned");
  ASSERT_TRUE(WriteModel(options, path).ok());
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> file = gguf::GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->alignment(), 128u);
  EXPECT_EQ(*(*file)->GetInt("general.alignment"), 128);
  EXPECT_EQ((*file)->FindTensor("output.weight"), nullptr);
  for (const gguf::TensorInfo& t : (*file)->tensors()) {
    EXPECT_EQ(((*file)->data_offset() + t.offset) % 128, 0u) << t.name;
  }
  std::filesystem::remove(path);
}

TEST(MkmodelTest, VocabFromCopiesTokenizer) {
  const std::string source = std::string(CHORD_SHARED_DIR) + "/models/stories260K.gguf";
  if (!std::filesystem::exists(source)) GTEST_SKIP() << "needs " << source;
  MkmodelOptions options = TinyOptions(FileType::kF16);
  options.vocab_from = source;
  const std::string path = TempPath("vocab_from");
  ASSERT_TRUE(WriteModel(options, path).ok());
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> src = gguf::GgufFile::Open(source);
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> out = gguf::GgufFile::Open(path);
  ASSERT_TRUE(src.ok() && out.ok());
  EXPECT_EQ(*(*out)->GetStringArray("tokenizer.ggml.tokens"),
            *(*src)->GetStringArray("tokenizer.ggml.tokens"));
  EXPECT_EQ(*(*out)->GetFloatArray("tokenizer.ggml.scores"),
            *(*src)->GetFloatArray("tokenizer.ggml.scores"));
  EXPECT_EQ(*(*out)->GetInt("llama.vocab_size"), 512);
  EXPECT_EQ((*out)->FindTensor("token_embd.weight")->dims, (std::vector<int64_t>{256, 512}));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace chord::mkmodel
