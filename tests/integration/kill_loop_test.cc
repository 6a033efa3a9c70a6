// Randomized SIGKILLs of workers over many runs, each with exactly the
// tokens of an undisturbed run. A run streams a few requests at once and
// kills one worker at a random moment of one of three kinds:
//   prefill:    a long prompt, fed in small chunks, killed before its first token;
//   decode:     after a random number of generated tokens;
//   cache fill: on a deployment whose workers' budgets are smaller than their
//               layers (they stream them from a paced loader), soon after the
//               requests start, while the shard caches fill.
// Half the victims are restarted at once (while the requests run), the others
// before the next run. Each run checks: every stream succeeds with the
// undisturbed tokens, within a bound; afterwards nothing runs or waits, and
// every KV slot can be used again at once (a leaked slot would make one of
// kv_slots concurrent requests wait for another to end).
//
// CHORD_KILL_LOOP_RUNS (default 12) sets the number of runs and
// CHORD_KILL_LOOP_SEED the seed (default: random); the seed is printed so a
// failing sequence of runs can be replayed.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/serve/health_probe.h"
#include "common/base/status.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_helpers.h"

namespace chord::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr int kKvSlots = 8;
constexpr int64_t kCtxSize = 256;
constexpr milliseconds kWorkerTimeout{1000};
// A run's streams must end within this: a loss costs a worker timeout, a
// re-plan (the paced loader streams again) and a replay.
constexpr milliseconds kRunBound{45000};

enum class Moment { kPrefill, kDecode, kCacheFill };
const char* Name(Moment m) {
  return m == Moment::kPrefill ? "prefill" : m == Moment::kDecode ? "decode" : "cache fill";
}

int EnvInt(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

// A long prompt (fed in 16-token chunks), a greedy one and a seeded-sampling one
// whose penalties read the token history.
std::vector<v1::GenerateRequest> Requests() {
  v1::GenerateRequest long_prompt;
  for (int i = 0; i < 180; ++i) long_prompt.mutable_prompt_token_ids()->add_ids(static_cast<uint32_t>(1 + (i * 37) % 500));
  long_prompt.set_max_tokens(40);
  long_prompt.set_ignore_eos(true);
  long_prompt.mutable_sampling()->set_temperature(0.0f);
  v1::GenerateRequest sampled;
  sampled.set_prompt("Lily wanted");
  sampled.set_max_tokens(60);
  sampled.set_ignore_eos(true);
  sampled.mutable_sampling()->set_temperature(0.9f);
  sampled.mutable_sampling()->set_seed(4242);
  sampled.mutable_sampling()->set_repetition_penalty(1.2f);
  return {long_prompt, GreedyRequest("Once upon a time", 60), sampled};
}

struct Deployment {
  std::unique_ptr<serve::LocalCluster> cluster;
  std::unique_ptr<v1::Inference::Stub> stub;
  int workers = 0;
  std::vector<StreamResult> reference;  // Requests(), each streamed alone
};

absl::StatusOr<Deployment> Start(bool streaming) {
  serve::LocalClusterOptions options;
  options.bin_dir = BinDir();
  options.model = CHORD_DEFAULT_MODEL;
  options.workers = streaming ? 2 : 3;
  options.kv_slots = kKvSlots;
  options.ctx_size = kCtxSize;
  options.threads_per_worker = 1;
  options.log_args = {"--log-level", "warn"};
  options.coordinator_args = {"--worker-timeout-ms", std::to_string(kWorkerTimeout.count()),
                              "--prefill-chunk", "16"};
  if (streaming) {
    // As in shard_streaming_test: at least one stage streams whatever the split.
    options.worker_args = {"--memory-budget", "450K"};
    options.loader_args = {"--max-bandwidth", "32M"};
  }
  options.start_timeout = std::chrono::seconds(60);
  Deployment d;
  ASSIGN_OR_RETURN(d.cluster, serve::LocalCluster::Start(std::move(options)));
  d.stub = Connect(d.cluster->grpc_address());
  d.workers = streaming ? 2 : 3;
  for (const v1::GenerateRequest& request : Requests()) {
    d.reference.push_back(Generate(*d.stub, request, milliseconds(60000)));
    if (!d.reference.back().status.ok()) {
      return absl::InternalError("reference run: " + d.reference.back().status.error_message());
    }
  }
  return d;
}

// Restarts every exited worker, then waits until every worker is alive,
// the plan uses all of them and the coordinator serves.
bool Heal(Deployment& d) {
  for (int w = 0; w < d.workers; ++w) {
    serve::ChildProcess& child = d.cluster->child(2 + static_cast<size_t>(w));
    if (!child.Poll().has_value()) continue;
    if (!d.cluster->Restart(2 + static_cast<size_t>(w)).ok()) return false;
  }
  const Clock::time_point until = Clock::now() + milliseconds(30000);
  while (Clock::now() < until) {
    const v1::ServerInfo info = ServerInfo(*d.stub);
    int alive = 0;
    for (const v1::WorkerInfo& worker : info.workers()) alive += worker.alive() ? 1 : 0;
    absl::StatusOr<serve::HealthStatus> health = serve::CheckHealth(d.cluster->grpc_address(), milliseconds(1000));
    if (alive == d.workers && health.ok() && *health == serve::HealthStatus::kServing) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return false;
}

// kv_slots copies of the greedy request at once: all must be admitted at once
// (no slot leaked: none waits for another to end) and give the reference tokens.
void ExpectEverySlotUsable(Deployment& d) {
  const v1::GenerateRequest request = Requests()[1];
  std::vector<StreamResult> results(kKvSlots);
  std::vector<std::thread> threads;
  for (int i = 0; i < kKvSlots; ++i) {
    threads.emplace_back([&, i] { results[i] = Generate(*d.stub, request, milliseconds(60000)); });
  }
  for (std::thread& thread : threads) thread.join();
  double shortest_run = 1e9, longest_queue = 0;
  for (const StreamResult& result : results) {
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    EXPECT_EQ(result.token_ids, d.reference[1].token_ids);
    const v1::Timings& t = result.final_info.timings();
    shortest_run = std::min(shortest_run, t.total_seconds() - t.queue_seconds());
    longest_queue = std::max(longest_queue, t.queue_seconds());
  }
  EXPECT_LT(longest_queue, shortest_run)
      << "a request waited as long as another ran: a KV slot was not freed";
}

TEST(KillLoopTest, RandomWorkerKillsLoseNoToken) {
  const int runs = EnvInt("CHORD_KILL_LOOP_RUNS", 12);
  const uint64_t seed = static_cast<uint64_t>(EnvInt("CHORD_KILL_LOOP_SEED", 0)) != 0
                            ? static_cast<uint64_t>(EnvInt("CHORD_KILL_LOOP_SEED", 0))
                            : std::random_device{}() % 1000000000u;
  std::cout << "kill loop: " << runs << " runs, CHORD_KILL_LOOP_SEED=" << seed << std::endl;
  SCOPED_TRACE("CHORD_KILL_LOOP_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);

  absl::StatusOr<Deployment> resident = Start(false);
  ASSERT_TRUE(resident.ok()) << resident.status();
  absl::StatusOr<Deployment> streaming = Start(true);
  ASSERT_TRUE(streaming.ok()) << streaming.status();

  int killed_before_first_token = 0, restarted_mid_run = 0;
  for (int run = 0; run < runs && !HasFatalFailure(); ++run) {
    const Moment moment = static_cast<Moment>(rng() % 3);
    Deployment& d = moment == Moment::kCacheFill ? *streaming : *resident;
    ASSERT_TRUE(Heal(d)) << "run " << run << ": the deployment did not recover\n"
                         << ServerInfo(*d.stub).DebugString();
    const int victim = static_cast<int>(rng() % static_cast<uint64_t>(d.workers));
    const bool restart = rng() % 2 == 0;
    // Decode: after 1..30 tokens of the greedy stream. Prefill: 0..15 ms
    // after the requests start. Cache fill: 0..300 ms after.
    const size_t after_tokens = 1 + rng() % 30;
    const milliseconds delay(moment == Moment::kPrefill ? rng() % 16 : rng() % 301);
    SCOPED_TRACE(absl::StrCat("run ", run, ": ", Name(moment), ", kill w", victim,
                              restart ? ", restarted at once" : ""));

    const std::vector<v1::GenerateRequest> requests = Requests();
    std::vector<StreamResult> results(requests.size());
    std::vector<std::atomic<size_t>> tokens(requests.size());
    std::vector<std::thread> threads;
    const Clock::time_point started = Clock::now();
    for (size_t i = 0; i < requests.size(); ++i) {
      threads.emplace_back([&, i] {
        results[i] = Generate(*d.stub, requests[i], kRunBound, [&, i](size_t n) { tokens[i] = n; });
      });
    }
    // The fault runs on this thread, which started the children (a restart must too).
    const Clock::time_point give_up = started + kRunBound;
    if (moment == Moment::kDecode) {
      while (tokens[1].load() < after_tokens && Clock::now() < give_up) std::this_thread::sleep_for(milliseconds(1));
    } else {
      std::this_thread::sleep_for(delay);  // a random moment, not a synchronization
    }
    if (tokens[0].load() == 0) ++killed_before_first_token;
    serve::ChildProcess& child = d.cluster->child(2 + static_cast<size_t>(victim));
    child.Signal(SIGKILL);
    if (restart) {
      while (!child.Poll().has_value() && Clock::now() < give_up) std::this_thread::sleep_for(milliseconds(5));
      const absl::Status restarted = d.cluster->Restart(2 + static_cast<size_t>(victim));
      EXPECT_TRUE(restarted.ok()) << restarted;  // not ASSERT: the streams must be joined first
      ++restarted_mid_run;
    }
    for (std::thread& thread : threads) thread.join();
    const milliseconds took = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
    std::cout << "run " << run << ": " << Name(moment) << ", w" << victim << " killed"
              << (restart ? " and restarted" : "") << ", " << took.count() << " ms" << std::endl;
    EXPECT_LT(took, kRunBound);
    for (size_t i = 0; i < requests.size(); ++i) {
      ASSERT_TRUE(results[i].status.ok()) << "request " << i << ": " << results[i].status.error_message()
                                          << "\n" << d.cluster->child(1).Output();
      EXPECT_EQ(results[i].token_ids, d.reference[i].token_ids) << "request " << i;
      EXPECT_EQ(results[i].text, d.reference[i].text) << "request " << i;
    }
    EXPECT_TRUE(WaitUntilIdle(*d.stub, milliseconds(10000))) << ServerInfo(*d.stub).DebugString();
    ASSERT_TRUE(Heal(d)) << ServerInfo(*d.stub).DebugString();
    ExpectEverySlotUsable(d);
  }
  std::cout << "kill loop: " << runs << " runs, " << killed_before_first_token
            << " kills before the long prompt's first token, " << restarted_mid_run
            << " victims restarted mid-run" << std::endl;
}

}  // namespace
}  // namespace chord::testing
