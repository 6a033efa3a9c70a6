// Chained steps (PROTOCOL.md): a deployment of 1, 2 or 3 workers whose
// coordinator sends each sequence's next step while the current one runs
// (stage 0 filling in the tokens, its own or the last stage's) streams exactly
// what one that waits for every answer streams: seeded samples, concurrent
// streams sharing micro-batches, end-of-generation, stop strings and
// max_tokens, each ending where it should.
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/integration/cluster_helpers.h"

namespace chord::testing {
namespace {

std::vector<v1::GenerateRequest> Requests() {
  const std::vector<std::string> prompts = StoryPrompts(6);
  std::vector<v1::GenerateRequest> requests;
  for (size_t i = 0; i < prompts.size(); ++i) {
    v1::GenerateRequest request;
    request.set_prompt(prompts[i]);
    request.set_max_tokens(i % 2 == 0 ? 40 : 7);  // some end by length after a few steps
    request.mutable_sampling()->set_temperature(i == 0 ? 0.0f : 0.9f);
    request.mutable_sampling()->set_seed(500 + 13 * i);
    if (i == 2) request.add_stop(" the");  // likely inside 40 tokens of this model
    requests.push_back(request);
  }
  return requests;
}

// Each request alone, then all of them at once.
std::vector<StreamResult> RunDeployment(int workers,
                                        const std::vector<std::string>& coordinator_args) {
  auto cluster = StartCluster(CHORD_DEFAULT_MODEL, workers, 8, 256, coordinator_args);
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  if (!cluster.ok()) return {};
  auto stub = Connect((*cluster)->grpc_address());
  const std::vector<v1::GenerateRequest> requests = Requests();
  std::vector<StreamResult> results;
  for (const v1::GenerateRequest& request : requests) results.push_back(Generate(*stub, request));
  std::vector<StreamResult> together(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { together[i] = Generate(*stub, requests[i]); });
  }
  for (std::thread& thread : threads) thread.join();
  results.insert(results.end(), together.begin(), together.end());
  EXPECT_TRUE((*cluster)->Stop(std::chrono::seconds(10)).empty());
  return results;
}

class ChainedStepsTest : public ::testing::TestWithParam<int> {};

TEST_P(ChainedStepsTest, StreamsWhatUnchainedStepsStream) {
  const std::vector<StreamResult> unchained = RunDeployment(GetParam(), {"--no-chain-steps"});
  const std::vector<StreamResult> chained = RunDeployment(GetParam(), {"--chain-steps"});
  ASSERT_EQ(unchained.size(), 2 * Requests().size());
  ASSERT_EQ(chained.size(), unchained.size());
  bool stopped_by_string = false;
  for (size_t i = 0; i < chained.size(); ++i) {
    ASSERT_TRUE(unchained[i].status.ok()) << unchained[i].status.error_message();
    ASSERT_TRUE(chained[i].status.ok()) << chained[i].status.error_message();
    EXPECT_EQ(chained[i].token_ids, unchained[i].token_ids) << "result " << i;
    EXPECT_EQ(chained[i].text, unchained[i].text) << "result " << i;
    EXPECT_EQ(chained[i].final_info.finish_reason(), unchained[i].final_info.finish_reason())
        << "result " << i;
    EXPECT_EQ(chained[i].final_info.usage().completion_tokens(),
              unchained[i].final_info.usage().completion_tokens())
        << "result " << i;
    stopped_by_string |= !chained[i].final_info.stop_reason_text().empty();
  }
  // The results alone and together agree too (seeded sampling).
  const size_t n = Requests().size();
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(chained[i].token_ids, chained[n + i].token_ids);
  EXPECT_TRUE(stopped_by_string) << "no stream ended on its stop string: the check proves less";
}

INSTANTIATE_TEST_SUITE_P(Workers, ChainedStepsTest, ::testing::Values(1, 2, 3),
                         [](const ::testing::TestParamInfo<int>& param_info) {
                           return std::to_string(param_info.param) + "workers";
                         });

}  // namespace
}  // namespace chord::testing
