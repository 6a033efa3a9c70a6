// Runs the `chord` binary as a user would and checks what it prints.
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace chord {
namespace {

struct CommandResult {
  int exit_code = -1;
  std::string out;
};

// Runs `args` through the shell with stdout captured; stderr goes to the test log.
CommandResult RunChord(const std::string& args) {
  CommandResult result;
  const std::string command = std::string(CHORD_BIN_DIR) + "/chord " + args;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) result.out.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

TEST(CliTest, GenerateFromEmptyPromptWritesTheKnownStory) {
  const CommandResult r = RunChord("generate --prompt '' --max-tokens 16 --temperature 0");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << r.out;
}

TEST(CliTest, GenerateJsonIsOneLineWithEveryField) {
  const CommandResult r = RunChord(
      "generate --prompt 'Once upon a time' --max-tokens 8 --temperature 0 --logprobs 3 --json");
  ASSERT_EQ(r.exit_code, 0);
  ASSERT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_token_ids"], nlohmann::json({1, 403, 407, 261, 378}));
  ASSERT_EQ(j["token_ids"].size(), 8u);
  ASSERT_EQ(j["top_logprobs"].size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    const auto& top = j["top_logprobs"][i];
    ASSERT_EQ(top.size(), 3u);
    EXPECT_EQ(top[0]["id"], j["token_ids"][i]);  // greedy picks the most likely token
    EXPECT_GE(top[0]["logprob"].get<double>(), top[1]["logprob"].get<double>());
    EXPECT_LE(top[0]["logprob"].get<double>(), 0.0);
  }
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_EQ(j["text"].get<std::string>().rfind(", there was a little girl", 0), 0u);
}

TEST(CliTest, StopStringEndsGenerationAndIsNotPrinted) {
  const CommandResult r =
      RunChord("generate --prompt '' --max-tokens 64 --temperature 0 --stop Lily --json");
  ASSERT_EQ(r.exit_code, 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["finish_reason"], "stop");
  EXPECT_EQ(j["text"], "Once upon a time, there was a little girl named ");
}

TEST(CliTest, SeededSamplingIsRepeatableAndSeedsDiffer) {
  const std::string flags = "generate --prompt 'Tom had a dog' --max-tokens 24 --temperature 1 --json --seed ";
  const CommandResult a = RunChord(flags + "11"), b = RunChord(flags + "11"), c = RunChord(flags + "12");
  ASSERT_EQ(a.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(a.out)["token_ids"], nlohmann::json::parse(b.out)["token_ids"]);
  EXPECT_NE(nlohmann::json::parse(a.out)["token_ids"], nlohmann::json::parse(c.out)["token_ids"]);
}

TEST(CliTest, BadInputGivesClearErrorsAndExitCodes) {
  EXPECT_EQ(RunChord("generate --prompt x --model /nonexistent.gguf 2>/dev/null").exit_code, 1);
  EXPECT_EQ(RunChord("generate --prompt x --kv-type q8 2>/dev/null").exit_code, 105);  // CLI11: validation error
  EXPECT_EQ(RunChord("inspect /nonexistent.gguf 2>/dev/null").exit_code, 1);
}

TEST(CliTest, InspectJsonDescribesTheBundledModel) {
  const CommandResult r = RunChord(std::string("inspect --json ") + CHORD_DEFAULT_MODEL);
  ASSERT_EQ(r.exit_code, 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["architecture"], "llama");
  EXPECT_EQ(j["file_size"], 1185376);
  EXPECT_EQ(j["hyperparameters"]["llama.block_count"], 5);
  EXPECT_EQ(j["hyperparameters"]["llama.embedding_length"], 64);
  EXPECT_EQ(j["tensors"].size(), 48u);  // 9 per layer x 5, token_embd, output_norm, output
  EXPECT_EQ(j["layers"].size(), 5u);
  EXPECT_NE(r.out.find("token_embd.weight"), std::string::npos);
}

TEST(CliTest, InspectReadsEverySharedModelAndTokenizer) {
  const std::filesystem::path shared(CHORD_SHARED_DIR);
  int inspected = 0;
  for (const char* folder : {"models", "tokenizer"}) {
    if (!std::filesystem::exists(shared / folder)) continue;
    for (const auto& entry : std::filesystem::directory_iterator(shared / folder)) {
      if (entry.path().extension() != ".gguf") continue;
      const CommandResult r = RunChord("inspect --json '" + entry.path().string() + "'");
      EXPECT_EQ(r.exit_code, 0) << entry.path();
      EXPECT_NO_THROW((void)nlohmann::json::parse(r.out)) << entry.path();
      ++inspected;
    }
  }
  if (inspected == 0) GTEST_SKIP() << "no GGUF files under " << shared << " (needs ../shared)";
}

TEST(CliTest, MkmodelWritesAModelThatGenerates) {
  const std::string path = std::filesystem::temp_directory_path() / "chord_cli_test_tiny.gguf";
  ASSERT_EQ(RunChord("mkmodel --out " + path + " --preset tiny --type Q4_K_M --seed 3 2>/dev/null").exit_code, 0);
  const CommandResult r = RunChord("generate --model " + path + " --prompt 'hello' --max-tokens 4 --temperature 0 --json");
  std::filesystem::remove(path);
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(r.out)["token_ids"].size(), 4u);
}

}  // namespace
}  // namespace chord
