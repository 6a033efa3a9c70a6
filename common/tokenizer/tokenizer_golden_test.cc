// Tokenization checked against llama.cpp's own outputs: the vocab test files
// (`.gguf.inp` strings, `.gguf.out` ids) and the reference prompts.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "common/gguf/gguf_file.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace chord {
namespace {

namespace fs = std::filesystem;

const fs::path kShared = CHORD_SHARED_DIR;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `.inp`: strings joined and terminated by "\n__ggml_vocab_test__\n".
std::vector<std::string> ReadInputs(const fs::path& path) {
  constexpr std::string_view kSep = "\n__ggml_vocab_test__\n";
  const std::string all = ReadFile(path);
  std::vector<std::string> out;
  size_t start = 0;
  while (start < all.size()) {
    const size_t pos = all.find(kSep, start);
    if (pos == std::string::npos) break;
    out.push_back(all.substr(start, pos - start));
    start = pos + kSep.size();
  }
  return out;
}

// `.out`: one line of space-prefixed ids per string.
std::vector<std::vector<TokenId>> ReadOutputs(const fs::path& path) {
  std::vector<std::vector<TokenId>> out;
  std::istringstream lines(ReadFile(path));
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream ids(line);
    std::vector<TokenId> row;
    TokenId id;
    while (ids >> id) row.push_back(id);
    out.push_back(std::move(row));
  }
  return out;
}

std::unique_ptr<Tokenizer> Load(const fs::path& gguf) {
  auto file = gguf::GgufFile::Open(gguf.string());
  EXPECT_TRUE(file.ok()) << gguf << ": " << file.status();
  if (!file.ok()) return nullptr;
  auto tok = Tokenizer::FromGguf(**file);
  EXPECT_TRUE(tok.ok()) << gguf << ": " << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

struct GoldenCase {
  std::string name;
  fs::path vocab;  // the GGUF holding the vocabulary
  fs::path inp;
};

std::vector<GoldenCase> GoldenCases() {
  std::vector<GoldenCase> cases;
  const fs::path dir = kShared / "tokenizer";
  if (!fs::is_directory(dir)) return cases;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    const std::string suffix = ".gguf.inp";
    if (file.size() <= suffix.size() || file.substr(file.size() - suffix.size()) != suffix) {
      continue;
    }
    const std::string stem = file.substr(0, file.size() - std::string(".inp").size());
    fs::path vocab = dir / stem;
    if (stem == "stories260K.gguf") vocab = kShared / "models" / stem;
    if (!fs::exists(vocab)) continue;  // llama-bpe and qwen2 ship without a vocab
    cases.push_back({stem, vocab, entry.path()});
  }
  std::sort(cases.begin(), cases.end(),
            [](const GoldenCase& a, const GoldenCase& b) { return a.name < b.name; });
  return cases;
}

TEST(TokenizerGoldenTest, VocabFilesMatchLlamaCpp) {
  const std::vector<GoldenCase> cases = GoldenCases();
  if (cases.empty()) GTEST_SKIP() << "no tokenizer test data under " << kShared / "tokenizer";
  // The SPM vocabularies must be among them, or the test proves little.
  EXPECT_GE(cases.size(), 3u);
  for (const GoldenCase& c : cases) {
    SCOPED_TRACE(c.name);
    auto tok = Load(c.vocab);
    if (!tok) continue;
    const std::vector<std::string> inputs = ReadInputs(c.inp);
    fs::path out_path = c.inp;
    out_path.replace_extension(".out");
    const std::vector<std::vector<TokenId>> expected = ReadOutputs(out_path);
    ASSERT_EQ(inputs.size(), expected.size());
    ASSERT_FALSE(inputs.empty());
    int failures = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const std::vector<TokenId> got = tok->Encode(inputs[i], /*add_special=*/false);
      if (got != expected[i]) ++failures;
      EXPECT_EQ(got, expected[i]) << "string #" << i << ": \"" << inputs[i] << "\"";
    }
    EXPECT_EQ(failures, 0) << c.name;
  }
}

TEST(TokenizerGoldenTest, SpmRoundTripsTestStrings) {
  const fs::path vocab = kShared / "tokenizer" / "ggml-vocab-llama-spm.gguf";
  if (!fs::exists(vocab)) GTEST_SKIP() << vocab << " not present";
  auto tok = Load(vocab);
  ASSERT_NE(tok, nullptr);
  for (const std::string& s : ReadInputs(kShared / "tokenizer" / "ggml-vocab-llama-spm.gguf.inp")) {
    const std::vector<TokenId> ids = tok->Encode(s, /*add_special=*/false);
    // llama.cpp's SPM encoding is lossless for valid UTF-8 with byte fallback.
    EXPECT_EQ(Detokenize(*tok, ids), s);
  }
}

// Loading a 32k/50k vocabulary and encoding 256 KiB must stay fast: the merge
// loops use priority queues, so the cost grows about linearly with the text.
TEST(TokenizerGoldenTest, LargeVocabsLoadAndEncodeQuickly) {
  const fs::path dir = kShared / "tokenizer";
  int checked = 0;
  for (const char* name : {"ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf"}) {
    if (!fs::exists(dir / name)) continue;
    SCOPED_TRACE(name);
    const auto t0 = std::chrono::steady_clock::now();
    auto tok = Load(dir / name);
    ASSERT_NE(tok, nullptr);
    const double load_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(load_s, 1.0);
    std::string text;
    for (const std::string& s : ReadInputs(dir / (std::string(name) + ".inp"))) text += s + "\n";
    std::string big;
    while (big.size() < (1u << 18)) big += text;
    const auto t1 = std::chrono::steady_clock::now();
    const std::vector<TokenId> ids = tok->Encode(big, false);
    const double encode_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    EXPECT_GT(ids.size(), big.size() / 16);
    EXPECT_LT(encode_s, 5.0);
    std::cout << name << ": load " << load_s << " s, encode " << big.size() << " bytes in "
              << encode_s << " s\n";
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no large vocab files under " << dir;
}

TEST(TokenizerGoldenTest, ReferencePromptsAndGeneratedText) {
  const fs::path dir = kShared / "reference";
  if (!fs::is_directory(dir)) GTEST_SKIP() << dir << " not present";
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".json") continue;
    SCOPED_TRACE(entry.path().filename().string());
    const nlohmann::json ref = nlohmann::json::parse(ReadFile(entry.path()));
    const fs::path model = kShared / ref.at("model_file").get<std::string>();
    if (!fs::exists(model)) continue;
    auto tok = Load(model);
    if (!tok) continue;
    for (const auto& c : ref.at("cases")) {
      const std::string prompt = c.at("prompt").get<std::string>();
      EXPECT_EQ(tok->Encode(prompt, /*add_special=*/true),
                c.at("prompt_ids").get<std::vector<TokenId>>())
          << "prompt \"" << prompt << "\"";
      if (c.contains("gen_ids") && c.contains("gen_text")) {
        const auto gen = c.at("gen_ids").get<std::vector<TokenId>>();
        EXPECT_EQ(Detokenize(*tok, gen), c.at("gen_text").get<std::string>());
      }
      ++checked;
    }
  }
  if (checked == 0) GTEST_SKIP() << "no reference prompts with their models under " << kShared;
}

}  // namespace
}  // namespace chord
