// Sequences that outgrow the workers' KV cache: a deployment whose paged KV
// pool holds a single context serves six long streams at once. The newest are
// preempted (their pages freed, the requests requeued) and recomputed from
// their journals later; no request fails, and each gets exactly the tokens it
// gets alone (seeded sampling included).
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/integration/cluster_helpers.h"

namespace chord::testing {
namespace {

TEST(PreemptionTest, OutgrownKvCachePreemptsAndEveryStreamKeepsItsTokens) {
  // The bundled model's context is 128 positions: the pool holds one.
  absl::StatusOr<std::unique_ptr<serve::LocalCluster>> cluster =
      StartCluster(CHORD_DEFAULT_MODEL, 2, 8, 0, {"--kv-tokens", "128"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::unique_ptr<v1::Inference::Stub> stub = Connect((*cluster)->grpc_address());
  EXPECT_EQ(ServerInfo(*stub).kv_tokens(), 128u);

  const std::vector<std::string> prompts = StoryPrompts(6);
  std::vector<v1::GenerateRequest> requests;
  for (size_t i = 0; i < prompts.size(); ++i) {
    v1::GenerateRequest request;
    request.set_prompt(prompts[i]);
    request.set_max_tokens(70);  // about 75 positions each: 5 pages of 16, of the pool's 8
    request.set_ignore_eos(true);
    request.mutable_sampling()->set_temperature(i % 2 == 0 ? 0.0f : 0.8f);
    request.mutable_sampling()->set_seed(77 + i);
    requests.push_back(request);
  }
  std::vector<StreamResult> alone;
  for (const v1::GenerateRequest& request : requests) {
    alone.push_back(Generate(*stub, request));
    ASSERT_TRUE(alone.back().status.ok()) << alone.back().status.error_message();
    ASSERT_EQ(alone.back().token_ids.size(), 70u);
  }
  EXPECT_EQ(ServerInfo(*stub).preemptions(), 0u) << "one sequence alone always fits";

  std::vector<StreamResult> together(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { together[i] = Generate(*stub, requests[i]); });
  }
  for (std::thread& thread : threads) thread.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(together[i].token_ids, alone[i].token_ids) << "request " << i << " ('" << prompts[i] << "')";
    EXPECT_EQ(together[i].text, alone[i].text);
    EXPECT_EQ(together[i].final_info.finish_reason(), v1::FINISH_REASON_LENGTH);
  }
  ASSERT_TRUE(WaitUntilIdle(*stub, std::chrono::seconds(30)));
  const v1::ServerInfo info = ServerInfo(*stub);
  EXPECT_GT(info.preemptions(), 0u);
  EXPECT_EQ(info.kv_tokens_held(), 0u);
}

}  // namespace
}  // namespace chord::testing
