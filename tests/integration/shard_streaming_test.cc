// Workers whose layer ranges are over their memory budgets stream their
// layers from the loader through the shard cache: concurrent generations
// still get exactly the in-process tokens, the caches never hold more than
// their budgets, and a loader killed and restarted mid-generation costs
// nothing but time.
#include <signal.h>

#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/integration/cluster_helpers.h"

namespace chord::testing {
namespace {

constexpr int kMaxTokens = 24;
constexpr int64_t kCtxSize = 256;

std::vector<int32_t> LocalTokens(const std::string& prompt) {
  absl::StatusOr<nlohmann::json> local = RunChordJson(
      {"generate", "--json", "--model", CHORD_DEFAULT_MODEL, "--prompt", prompt, "--temperature",
       "0", "--ignore-eos", "--max-tokens", std::to_string(kMaxTokens), "--ctx-size",
       std::to_string(kCtxSize), "--threads", "1"});
  EXPECT_TRUE(local.ok()) << local.status();
  return local.ok() ? (*local)["token_ids"].get<std::vector<int32_t>>() : std::vector<int32_t>{};
}

class ShardStreamingTest : public ::testing::TestWithParam<std::string> {
 protected:
  // Two workers with 450 KiB each: stories260K's layers take 177.5 KiB and
  // its embedding and output 128 KiB each, so a stage of one layer plus
  // embedding or output (305.5 KiB) stays resident and any longer range
  // streams: whatever the split, at least one stage streams.
  absl::StatusOr<std::unique_ptr<serve::LocalCluster>> Start() {
    serve::LocalClusterOptions options;
    options.bin_dir = BinDir();
    options.model = CHORD_DEFAULT_MODEL;
    options.workers = 2;
    options.kv_slots = 8;
    options.ctx_size = kCtxSize;
    options.threads_per_worker = 1;
    options.log_args = {"--log-level", "info"};
    options.worker_args = {"--memory-budget", "450K"};
    // Paced, so that a generation spans a loader restart.
    options.loader_args = {"--max-bandwidth", "8M"};
    options.loader_transport = GetParam();
    options.start_timeout = std::chrono::seconds(60);
    options.on_line = [this](const std::string& child, std::string_view line) {
      std::lock_guard<std::mutex> lock(mutex_);
      lines_.push_back(child + ": " + std::string(line));
    };
    return serve::LocalCluster::Start(std::move(options));
  }

  std::vector<std::string> Lines() {
    std::lock_guard<std::mutex> lock(mutex_);
    return lines_;
  }

  std::mutex mutex_;
  std::vector<std::string> lines_;
};

TEST_P(ShardStreamingTest, ConcurrentRequestsMatchInProcessAcrossALoaderRestart) {
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog",
                                            "Lily and Ben went", "One day"};
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& prompt : prompts) expected.push_back(LocalTokens(prompt));

  absl::StatusOr<std::unique_ptr<serve::LocalCluster>> cluster = Start();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::unique_ptr<v1::Inference::Stub> stub = Connect((*cluster)->grpc_address());

  // Concurrent requests share the streamed stages.
  std::vector<StreamResult> results(prompts.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back(
        [&, i] { results[i] = Generate(*stub, GreedyRequest(prompts[i], kMaxTokens)); });
  }
  for (std::thread& client : clients) client.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(results[i].token_ids, expected[i]) << "prompt '" << prompts[i] << "'";
  }

  // Kill the loader while a generation streams layers, then start it again.
  StreamResult during;
  std::thread client([&] { during = Generate(*stub, GreedyRequest(prompts[0], kMaxTokens)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  serve::ChildProcess& loader = (*cluster)->child(0);
  ASSERT_EQ(kill(loader.pid(), SIGKILL), 0);
  for (int i = 0; i < 500 && !loader.Poll().has_value(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the workers find it gone
  ASSERT_TRUE((*cluster)->Restart(0).ok());
  client.join();
  ASSERT_TRUE(during.status.ok()) << during.status.error_message();
  EXPECT_EQ(during.token_ids, expected[0]);

  EXPECT_TRUE((*cluster)->Stop(std::chrono::seconds(10)).empty());
  // Every streaming stage's cache stayed within its capacity. Which stages
  // stream depends on the split the planner picks from measured speeds; at
  // least one does whatever the split (see Start()).
  const std::regex peak(R"(peak (\d+) of (\d+) bytes)");
  int streamed = 0, summaries = 0;
  for (const std::string& line : Lines()) {
    if (line.find("they stream through") != std::string::npos) ++streamed;
    std::smatch match;
    if (line.find("shard cache summary") != std::string::npos &&
        std::regex_search(line, match, peak)) {
      ++summaries;
      EXPECT_LE(std::stoull(match[1]), std::stoull(match[2])) << line;
      EXPECT_GT(std::stoull(match[1]), 0u) << line;
    }
  }
  EXPECT_GE(streamed, 1);
  EXPECT_EQ(summaries, streamed);
}

INSTANTIATE_TEST_SUITE_P(Transports, ShardStreamingTest, ::testing::Values("ipc", "tcp"));

}  // namespace
}  // namespace chord::testing
