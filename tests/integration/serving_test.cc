// One deployment (bundled model, 2 workers) under concurrent, aborted,
// expired and malformed requests.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <utility>
#include <string>
#include <thread>
#include <vector>

#include <sstream>

#include "cli/serve/free_port.h"
#include "cli/serve/health_probe.h"
#include "httplib.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_helpers.h"

namespace chord::testing {
namespace {

class ServingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    metrics_port_ = serve::FreeLoopbackPort();
    absl::StatusOr<std::unique_ptr<serve::LocalCluster>> started = StartCluster(
        CHORD_DEFAULT_MODEL, 2, 9, 0, {"--metrics-port", std::to_string(metrics_port_)});
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = std::move(*started);
  }
  static void TearDownTestSuite() { cluster_.reset(); }

  void SetUp() override {
    ASSERT_NE(cluster_, nullptr) << "the deployment did not start";
    stub_ = Connect(cluster_->grpc_address());
  }

  // A generation long enough to be interrupted: the model's whole context.
  static v1::GenerateRequest LongRequest(const std::string& id) {
    // As long as the bundled model's context allows (128 positions, the
    // max_tokens limit): the server caps it to the room left after the prompt.
    v1::GenerateRequest request = GreedyRequest("Once upon a time", 128);
    request.set_request_id(id);
    return request;
  }

  // The coordinator's /metrics value of the line that starts with `series`
  // (name plus labels, as exposed); -1 when absent.
  static double Metric(const std::string& series) {
    httplib::Client client("127.0.0.1", metrics_port_);
    client.set_read_timeout(5, 0);
    const httplib::Result response = client.Get("/metrics");
    if (!response || response->status != 200) return -1;
    std::istringstream lines(response->body);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
    }
    return -1;
  }

  static std::unique_ptr<serve::LocalCluster> cluster_;
  static int metrics_port_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

std::unique_ptr<serve::LocalCluster> ServingTest::cluster_;
int ServingTest::metrics_port_ = 0;

// The coordinator's request metrics follow what clients were sent.
TEST_F(ServingTest, CoordinatorMetricsCountRequestsAndTokens) {
  ASSERT_TRUE(WaitUntilIdle(*stub_, std::chrono::seconds(30)));
  const double length_before = Metric("chord_request_success_total{finished_reason=\"length\"}");
  const double generated_before = Metric("chord_generation_tokens_total");
  const double ttft_before = Metric("chord_time_to_first_token_seconds_count");
  const double itl_before = Metric("chord_inter_token_latency_seconds_count");
  ASSERT_GE(generated_before, 0) << "no metrics from the coordinator";
  constexpr int kRequests = 3;
  constexpr int kTokens = 8;
  for (int i = 0; i < kRequests; ++i) {
    v1::GenerateRequest request = GreedyRequest("Lily and Ben", kTokens);
    request.set_ignore_eos(true);
    const StreamResult result = Generate(*stub_, request);
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    ASSERT_EQ(result.token_ids.size(), static_cast<size_t>(kTokens));
  }
  ASSERT_TRUE(WaitUntilIdle(*stub_, std::chrono::seconds(30)));
  EXPECT_EQ(Metric("chord_request_success_total{finished_reason=\"length\"}") -
                std::max(length_before, 0.0),
            kRequests);
  EXPECT_EQ(Metric("chord_generation_tokens_total") - generated_before, kRequests * kTokens);
  EXPECT_EQ(Metric("chord_time_to_first_token_seconds_count") - ttft_before, kRequests);
  EXPECT_EQ(Metric("chord_inter_token_latency_seconds_count") - itl_before,
            kRequests * (kTokens - 1));
  EXPECT_EQ(Metric("chord_num_requests_running"), 0);
  EXPECT_EQ(Metric("chord_num_requests_waiting"), 0);
  EXPECT_EQ(Metric("chord_num_workers"), 2);
}

TEST_F(ServingTest, ConcurrentSeededStreamsGetTheirSoloTokens) {
  const std::vector<std::string> prompts = StoryPrompts(8);
  std::vector<v1::GenerateRequest> requests;
  for (size_t i = 0; i < prompts.size(); ++i) {
    v1::GenerateRequest request;
    request.set_prompt(prompts[i]);
    request.set_max_tokens(40);
    request.set_ignore_eos(true);
    request.mutable_sampling()->set_temperature(0.9f);
    request.mutable_sampling()->set_seed(1000 + 17 * i);
    requests.push_back(request);
  }
  std::vector<StreamResult> alone;
  for (const v1::GenerateRequest& request : requests) {
    alone.push_back(Generate(*stub_, request));
    ASSERT_TRUE(alone.back().status.ok()) << alone.back().status.error_message();
    ASSERT_EQ(alone.back().token_ids.size(), 40u);
  }
  // Sampling is seeded, so the same request alone twice is identical too.
  EXPECT_EQ(Generate(*stub_, requests[0]).token_ids, alone[0].token_ids);

  std::vector<StreamResult> together(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { together[i] = Generate(*stub_, requests[i]); });
  }
  for (std::thread& thread : threads) thread.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(together[i].token_ids, alone[i].token_ids) << "request " << i << " ('" << prompts[i] << "')";
    EXPECT_EQ(together[i].text, alone[i].text);
    EXPECT_EQ(together[i].final_info.seed(), 1000 + 17 * i);
  }
  // Different seeds give different samples (otherwise the check above proves little).
  EXPECT_NE(alone[0].token_ids, Generate(*stub_, [&] {
              v1::GenerateRequest other = requests[0];
              other.mutable_sampling()->set_seed(999999);
              return other;
            }()).token_ids);
}

TEST_F(ServingTest, AbortEndsTheStreamAndFreesTheSlot) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&context, LongRequest("abort-me"));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.request_id(), "abort-me");
  size_t tokens = response.token_ids_size();

  grpc::ClientContext abort_context;
  v1::AbortRequest abort;
  abort.set_request_id("abort-me");
  v1::AbortResponse aborted;
  ASSERT_TRUE(stub_->Abort(&abort_context, abort, &aborted).ok());
  EXPECT_TRUE(aborted.found());

  v1::FinalInfo final_info;
  bool has_final = false;
  while (reader->Read(&response)) {
    tokens += response.token_ids_size();
    if (response.has_final()) {
      has_final = true;
      final_info = response.final();
    }
  }
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(has_final);
  EXPECT_EQ(final_info.finish_reason(), v1::FINISH_REASON_ABORT);
  EXPECT_EQ(final_info.usage().completion_tokens(), tokens);
  EXPECT_TRUE(WaitUntilIdle(*stub_, std::chrono::seconds(5))) << ServerInfo(*stub_).DebugString();

  // An unknown id is reported, not an error.
  grpc::ClientContext again_context;
  ASSERT_TRUE(stub_->Abort(&again_context, abort, &aborted).ok());
  EXPECT_FALSE(aborted.found());
}

TEST_F(ServingTest, DeadlineEndsTheStreamAndFreesTheSlot) {
  // A deadline a quarter of the way through the whole stream, as long as it
  // takes on this machine (a fixed one ran past the end on a fast build).
  const auto start = std::chrono::steady_clock::now();
  StreamResult whole = Generate(*stub_, LongRequest("no-deadline"), std::chrono::seconds(60));
  ASSERT_TRUE(whole.status.ok()) << whole.status.error_message();
  const auto deadline = std::max(std::chrono::milliseconds(1),
                                 std::chrono::duration_cast<std::chrono::milliseconds>(
                                     (std::chrono::steady_clock::now() - start) / 4));
  StreamResult result = Generate(*stub_, LongRequest("short-deadline"), deadline);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << result.status.error_message();
  EXPECT_FALSE(result.has_final);
  EXPECT_TRUE(WaitUntilIdle(*stub_, std::chrono::seconds(5))) << ServerInfo(*stub_).DebugString();
  // The slot is usable again.
  StreamResult next = Generate(*stub_, GreedyRequest("The cat", 8));
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.token_ids.size(), 8u);
}

TEST_F(ServingTest, BadRequestsGetTheirCodesAndTheServerStaysUp) {
  auto expect_invalid = [&](v1::GenerateRequest request, const char* what) {
    StreamResult result = Generate(*stub_, request, std::chrono::seconds(10));
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << what << ": " << result.status.error_message();
    EXPECT_TRUE(result.token_ids.empty()) << what;
  };
  v1::GenerateRequest request = GreedyRequest("Once", 4);
  request.mutable_sampling()->set_temperature(-1.0f);
  expect_invalid(request, "negative temperature");
  request = GreedyRequest("Once", 4);
  request.mutable_sampling()->set_top_p(1.5f);
  expect_invalid(request, "top_p above 1");
  request = GreedyRequest("Once", 4);
  request.mutable_prompt_token_ids()->add_ids(1);
  request.mutable_prompt_token_ids()->add_ids(50000000);
  expect_invalid(request, "token id past the vocabulary");

  grpc::ClientContext detok_context;
  v1::DetokenizeRequest detokenize;
  detokenize.add_token_ids(50000000);
  v1::DetokenizeResponse detokenized;
  EXPECT_EQ(stub_->Detokenize(&detok_context, detokenize, &detokenized).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  absl::StatusOr<serve::HealthStatus> health =
      serve::CheckHealth(cluster_->grpc_address(), std::chrono::seconds(5));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, serve::HealthStatus::kServing);
  StreamResult good = Generate(*stub_, GreedyRequest("Once upon a time", 6));
  EXPECT_TRUE(good.status.ok()) << good.status.error_message();
  EXPECT_EQ(good.token_ids.size(), 6u);
}

TEST_F(ServingTest, ModelAndServerInfo) {
  grpc::ClientContext context;
  v1::ModelInfo model;
  ASSERT_TRUE(stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &model).ok());
  EXPECT_EQ(model.architecture(), "llama");
  EXPECT_GT(model.vocab_size(), 0u);
  EXPECT_GT(model.n_layer(), 0u);
  EXPECT_EQ(model.sha256().size(), 64u);
  v1::ServerInfo info = ServerInfo(*stub_);
  EXPECT_EQ(info.kv_slots(), 9u);
  ASSERT_EQ(info.workers_size(), 2);
  std::vector<std::pair<uint32_t, uint32_t>> ranges;
  for (const v1::WorkerInfo& worker : info.workers()) {
    EXPECT_TRUE(worker.alive()) << worker.worker_id();
    ranges.emplace_back(worker.first_layer(), worker.end_layer());
  }
  std::sort(ranges.begin(), ranges.end());
  // The stages cover the layers once, in order.
  EXPECT_EQ(ranges[0].first, 0u);
  EXPECT_EQ(ranges[0].second, ranges[1].first);
  EXPECT_EQ(ranges[1].second, model.n_layer());
}

}  // namespace
}  // namespace chord::testing
