// Split invariance: greedy generation through loader + coordinator + 1, 2 or 3
// workers gives exactly the token ids of the in-process `chord generate`, for
// the bundled model and every model with a llama.cpp reference file.
#include <filesystem>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "tests/integration/cluster_helpers.h"

namespace chord::testing {
namespace {

constexpr int kMaxTokens = 24;
constexpr int kCtxSize = 256;

// In-process results, computed once per (model, prompt) and shared by the
// 1-, 2- and 3-worker runs.
const std::vector<int32_t>* LocalTokens(const TestModel& model, const std::string& prompt) {
  static std::map<std::string, std::vector<int32_t>> cache;
  const std::string key = model.path + "\n" + prompt;
  auto it = cache.find(key);
  if (it != cache.end()) return &it->second;
  absl::StatusOr<nlohmann::json> local =
      RunChordJson({"generate", "--json", "--model", model.path, "--prompt", prompt, "--temperature", "0",
                    "--ignore-eos", "--max-tokens", std::to_string(kMaxTokens), "--ctx-size",
                    std::to_string(kCtxSize), "--threads", "1"});
  EXPECT_TRUE(local.ok()) << local.status();
  if (!local.ok()) return nullptr;
  return &(cache[key] = (*local)["token_ids"].get<std::vector<int32_t>>());
}

class SplitInvarianceTest : public ::testing::TestWithParam<std::tuple<TestModel, int>> {};

TEST_P(SplitInvarianceTest, GreedyTokensMatchInProcess) {
  const auto& [model, workers] = GetParam();
  absl::StatusOr<std::unique_ptr<serve::LocalCluster>> cluster = StartCluster(model.path, workers, 4, kCtxSize);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::unique_ptr<v1::Inference::Stub> stub = Connect((*cluster)->grpc_address());

  v1::ServerInfo info = ServerInfo(*stub);
  ASSERT_EQ(info.workers_size(), workers) << info.DebugString();
  for (const std::string& prompt : model.prompts) {
    const std::vector<int32_t>* expected = LocalTokens(model, prompt);
    ASSERT_NE(expected, nullptr);
    StreamResult remote = Generate(*stub, GreedyRequest(prompt, kMaxTokens));
    ASSERT_TRUE(remote.status.ok()) << remote.status.error_message() << " prompt '" << prompt << "'";
    EXPECT_EQ(remote.token_ids, *expected) << model.name << " with " << workers << " workers, prompt '"
                                           << prompt << "'";
    EXPECT_TRUE(remote.has_final);
    EXPECT_EQ(remote.final_info.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(remote.final_info.usage().completion_tokens(), static_cast<uint32_t>(kMaxTokens));
  }
  EXPECT_TRUE((*cluster)->Stop(std::chrono::seconds(10)).empty());
}

std::string ParamName(const ::testing::TestParamInfo<std::tuple<TestModel, int>>& info) {
  std::string name = std::get<0>(info.param).name + "_" + std::to_string(std::get<1>(info.param)) + "workers";
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Models, SplitInvarianceTest,
                         ::testing::Combine(::testing::ValuesIn(TestModels()), ::testing::Values(1, 2, 3)),
                         ParamName);

TEST(SplitInvarianceData, ReferenceModelsPresent) {
  if (!std::filesystem::exists(std::filesystem::path(CHORD_SHARED_DIR) / "reference")) {
    GTEST_SKIP() << "no reference models under " << CHORD_SHARED_DIR
                 << "/reference: only the bundled model was checked";
  }
  EXPECT_GT(TestModels().size(), 1u);
}

}  // namespace
}  // namespace chord::testing
