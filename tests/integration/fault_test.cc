// Fault tolerance with real processes on loopback, through the public gRPC
// API: a worker killed (SIGKILL) or hung (SIGSTOP) mid-generation, every
// worker killed, a worker restarted under its id, and the coordinator's
// SIGTERM drain. Streams that survive a loss must carry exactly the tokens of
// an undisturbed run, greedy and seeded-sampling alike.
//
// Children of the cluster: 0 loader, 1 coordinator, 2 + i worker wi. Stages
// follow the worker ids (w0 holds the first layers). Every wait is bounded.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli/serve/health_probe.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_helpers.h"

namespace chord::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kWorkerTimeout{1000};
constexpr milliseconds kStreamDeadline{60000};
constexpr size_t kCoordinator = 1;
size_t WorkerChild(int worker) { return 2 + static_cast<size_t>(worker); }

// A greedy request, and a seeded-sampling one whose penalties read the token
// history: a replay must rebuild both the KV caches and that history.
std::vector<v1::GenerateRequest> Requests() {
  v1::GenerateRequest greedy = GreedyRequest("Once upon a time", 100);
  v1::GenerateRequest sampled;
  sampled.set_prompt("Lily wanted");
  sampled.set_max_tokens(100);
  sampled.set_ignore_eos(true);
  sampled.mutable_sampling()->set_temperature(0.9f);
  sampled.mutable_sampling()->set_seed(4242);
  sampled.mutable_sampling()->set_repetition_penalty(1.2f);
  return {greedy, sampled};
}

absl::StatusOr<std::unique_ptr<serve::LocalCluster>> StartFaultCluster(
    int workers, milliseconds worker_timeout = kWorkerTimeout,
    std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--worker-timeout-ms", std::to_string(worker_timeout.count())};
  args.insert(args.end(), extra.begin(), extra.end());
  return StartCluster(CHORD_DEFAULT_MODEL, workers, 8, 0, std::move(args));
}

bool WaitUntil(const std::function<bool()>& condition, milliseconds timeout) {
  const auto until = Clock::now() + timeout;
  while (Clock::now() < until) {
    if (condition()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return condition();
}

// The worker's entry (a copy), or nullopt when the coordinator does not know it.
std::optional<v1::WorkerInfo> FindWorker(const v1::ServerInfo& info, const std::string& id) {
  for (const v1::WorkerInfo& worker : info.workers()) {
    if (worker.worker_id() == id) return worker;
  }
  return std::nullopt;
}

// True when `id` is alive and holds layers in the current plan, and every stage is ready.
bool HoldsLayers(const std::string& address, v1::Inference::Stub& stub, const std::string& id) {
  const v1::ServerInfo info = ServerInfo(stub);
  const std::optional<v1::WorkerInfo> worker = FindWorker(info, id);
  absl::StatusOr<serve::HealthStatus> health = serve::CheckHealth(address, milliseconds(1000));
  return worker.has_value() && worker->alive() && worker->end_layer() > worker->first_layer() &&
         health.ok() && *health == serve::HealthStatus::kServing;
}

// The requests, each streamed alone (the undisturbed run).
std::vector<StreamResult> Reference(v1::Inference::Stub& stub) {
  std::vector<StreamResult> out;
  for (const v1::GenerateRequest& request : Requests()) {
    out.push_back(Generate(stub, request, kStreamDeadline));
    EXPECT_TRUE(out.back().status.ok()) << out.back().status.error_message();
    EXPECT_EQ(out.back().token_ids.size(), 100u);
  }
  return out;
}

// Streams every request at once; `fault` runs once, on a stream's reading
// thread, as soon as the first stream has `after_tokens` tokens and every
// stream has its first (so the fault lands mid-generation, every request in
// flight). Returns the results and when the fault ran.
struct FaultRun {
  std::vector<StreamResult> results;
  Clock::time_point fault_at{};
  std::vector<Clock::time_point> ended_at;
};
FaultRun StreamWithFault(v1::Inference::Stub& stub, size_t after_tokens,
                         const std::function<void()>& fault) {
  const std::vector<v1::GenerateRequest> requests = Requests();
  FaultRun run;
  run.results.resize(requests.size());
  run.ended_at.resize(requests.size());
  std::atomic<bool> fired{false};
  // Tokens each stream has received. The fault waits for every stream's
  // first token too: a request whose call has not reached the coordinator yet
  // is not in flight (under load it can start well after the first).
  std::vector<std::atomic<size_t>> received(requests.size());
  std::atomic<bool> first_done{false};
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] {
      auto on_tokens = [&](size_t tokens) {
        received[i].store(tokens);
        bool all_started = true;
        for (const std::atomic<size_t>& count : received) all_started = all_started && count.load() > 0;
        if (all_started && received[0].load() >= after_tokens && !first_done.load() &&
            !fired.exchange(true)) {
          run.fault_at = Clock::now();
          fault();
        }
      };
      run.results[i] = Generate(stub, requests[i], kStreamDeadline, on_tokens);
      run.ended_at[i] = Clock::now();
      if (i == 0) first_done = true;
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_TRUE(fired.load()) << "the first stream ended before the fault";
  return run;
}

void ExpectSameTokens(const FaultRun& run, const std::vector<StreamResult>& reference) {
  ASSERT_EQ(run.results.size(), reference.size());
  for (size_t i = 0; i < reference.size(); ++i) {
    const StreamResult& got = run.results[i];
    ASSERT_TRUE(got.status.ok()) << "request " << i << ": " << got.status.error_message();
    EXPECT_EQ(got.token_ids, reference[i].token_ids) << "request " << i;
    EXPECT_EQ(got.text, reference[i].text) << "request " << i;
    EXPECT_EQ(got.final_info.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(got.final_info.usage().completion_tokens(), 100u);
  }
  // The first stream really was interrupted: the loss had to be noticed.
  EXPECT_GE(run.ended_at[0] - run.fault_at, kWorkerTimeout / 2);
}

TEST(FaultTest, KilledWorkerMidGenerationLosesNoToken) {
  auto cluster = StartFaultCluster(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto stub = Connect((*cluster)->grpc_address());
  const std::vector<StreamResult> reference = Reference(*stub);
  const uint64_t plan = ServerInfo(*stub).plan_version();

  serve::ChildProcess& victim = (*cluster)->child(WorkerChild(1));  // the middle stage
  const FaultRun run = StreamWithFault(*stub, 5, [&] { victim.Signal(SIGKILL); });
  ExpectSameTokens(run, reference);

  const v1::ServerInfo info = ServerInfo(*stub);
  EXPECT_GT(info.plan_version(), plan);
  ASSERT_TRUE(FindWorker(info, "w1").has_value());
  EXPECT_FALSE(FindWorker(info, "w1")->alive());
  // The two survivors hold every layer, and serve a request the same way again.
  StreamResult again = Generate(*stub, Requests()[1], kStreamDeadline);
  EXPECT_EQ(again.token_ids, reference[1].token_ids);
}

TEST(FaultTest, HungWorkerIsDeclaredLostWithinTheTimeout) {
  auto cluster = StartFaultCluster(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto stub = Connect((*cluster)->grpc_address());
  const std::vector<StreamResult> reference = Reference(*stub);

  serve::ChildProcess& victim = (*cluster)->child(WorkerChild(2));  // the last stage
  std::atomic<bool> lost{false};
  Clock::time_point lost_at{};
  std::thread watcher;
  const FaultRun run = StreamWithFault(*stub, 5, [&] {
    victim.Signal(SIGSTOP);
    watcher = std::thread([&] {
      auto watch_stub = Connect((*cluster)->grpc_address());
      lost = WaitUntil(
          [&] {
            const std::optional<v1::WorkerInfo> w2 = FindWorker(ServerInfo(*watch_stub), "w2");
            return w2.has_value() && !w2->alive();
          },
          milliseconds(10000));
      lost_at = Clock::now();
    });
  });
  watcher.join();
  victim.Signal(SIGCONT);
  ASSERT_TRUE(lost.load()) << "the hung worker was never declared lost";
  // Silent since at most one heartbeat interval before the SIGSTOP.
  EXPECT_LE(lost_at - run.fault_at, kWorkerTimeout + milliseconds(1500));
  ExpectSameTokens(run, reference);

  // Resumed, it notices the coordinator's silence, registers again and gets layers.
  EXPECT_TRUE(WaitUntil([&] { return HoldsLayers((*cluster)->grpc_address(), *stub, "w2"); },
                        milliseconds(20000)))
      << ServerInfo(*stub).DebugString();
  EXPECT_EQ(Generate(*stub, Requests()[0], kStreamDeadline).token_ids, reference[0].token_ids);
}

TEST(FaultTest, LosingEveryWorkerEndsRequestsWithUnavailable) {
  auto cluster = StartFaultCluster(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto stub = Connect((*cluster)->grpc_address());
  const FaultRun run = StreamWithFault(*stub, 5, [&] {
    for (int w = 0; w < 3; ++w) (*cluster)->child(WorkerChild(w)).Signal(SIGKILL);
  });
  for (size_t i = 0; i < run.results.size(); ++i) {
    EXPECT_EQ(run.results[i].status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "request " << i << ": " << run.results[i].status.error_message();
    EXPECT_FALSE(run.results[i].has_final);
    // Ended once the losses were noticed, not at the client's deadline.
    EXPECT_LT(run.ended_at[i] - run.fault_at, kWorkerTimeout + milliseconds(5000));
  }
  EXPECT_NE(run.results[0].status.error_message().find("no worker is left"), std::string::npos)
      << run.results[0].status.error_message();
  const StreamResult refused = Generate(*stub, Requests()[0], milliseconds(10000));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << refused.status.error_message();
}

TEST(FaultTest, RestartedWorkerRegistersAgainAndIsPlanned) {
  auto cluster = StartFaultCluster(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::string address = (*cluster)->grpc_address();
  auto stub = Connect(address);
  const std::vector<StreamResult> reference = Reference(*stub);

  (*cluster)->child(WorkerChild(1)).Signal(SIGKILL);
  ASSERT_TRUE(WaitUntil(
      [&] {
        const std::optional<v1::WorkerInfo> w1 = FindWorker(ServerInfo(*stub), "w1");
        return w1.has_value() && !w1->alive() && HoldsLayers(address, *stub, "w0");
      },
      milliseconds(15000)))
      << ServerInfo(*stub).DebugString() << (*cluster)->child(kCoordinator).Output();
  // Restarted (same id, new data port) on this thread (a child dies with the
  // thread that started it), just before both requests stream: its
  // registration re-plans while they run (or right after), and no token changes.
  ASSERT_TRUE((*cluster)->Restart(WorkerChild(1)).ok());
  const FaultRun run = StreamWithFault(*stub, 0, [] {});
  for (size_t i = 0; i < reference.size(); ++i) {
    ASSERT_TRUE(run.results[i].status.ok()) << run.results[i].status.error_message();
    EXPECT_EQ(run.results[i].token_ids, reference[i].token_ids) << "request " << i;
  }
  EXPECT_TRUE(WaitUntil([&] { return HoldsLayers(address, *stub, "w1"); }, milliseconds(15000)))
      << ServerInfo(*stub).DebugString() << (*cluster)->child(kCoordinator).Output()
      << (*cluster)->child(WorkerChild(1)).Output();
  EXPECT_EQ(Generate(*stub, Requests()[1], kStreamDeadline).token_ids, reference[1].token_ids);
}

TEST(FaultTest, SigtermDrainsInFlightRequestsThenStopsEverything) {
  // A worker timeout longer than the pause below: the paused stage is not lost.
  auto cluster = StartFaultCluster(2, milliseconds(5000), {"--grace-ms", "20000"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::string address = (*cluster)->grpc_address();
  auto stub = Connect(address);
  const std::vector<StreamResult> reference = Reference(*stub);

  std::optional<absl::StatusOr<serve::HealthStatus>> health_while_draining;
  StreamResult refused;
  serve::ChildProcess& last_stage = (*cluster)->child(WorkerChild(1));
  const FaultRun run = StreamWithFault(*stub, 5, [&] {
    // The last stage pauses, so that both requests are surely in flight
    // when the coordinator gets its SIGTERM, and stay so for a while.
    last_stage.Signal(SIGSTOP);
    (*cluster)->child(kCoordinator).Signal(SIGTERM);
    std::this_thread::sleep_for(milliseconds(200));
    health_while_draining = serve::CheckHealth(address, milliseconds(2000));
    auto other = Connect(address);
    refused = Generate(*other, Requests()[1], milliseconds(5000));
    last_stage.Signal(SIGCONT);
  });
  ASSERT_TRUE(health_while_draining.has_value());
  ASSERT_TRUE(health_while_draining->ok()) << health_while_draining->status();
  EXPECT_EQ(**health_while_draining, serve::HealthStatus::kNotServing);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << refused.status.error_message();
  for (size_t i = 0; i < reference.size(); ++i) {
    ASSERT_TRUE(run.results[i].status.ok()) << run.results[i].status.error_message();
    EXPECT_EQ(run.results[i].token_ids, reference[i].token_ids) << "request " << i;
  }

  // The coordinator exits 0, and its Shutdown messages stop the workers and the loader.
  for (size_t child : {kCoordinator, WorkerChild(0), WorkerChild(1), size_t{0}}) {
    std::optional<int> status;
    ASSERT_TRUE(WaitUntil([&] { return (status = (*cluster)->child(child).Poll()).has_value(); },
                          milliseconds(15000)))
        << (*cluster)->child(child).name() << " still runs";
    EXPECT_TRUE(serve::IsCleanExit(*status))
        << (*cluster)->child(child).name() << ": " << serve::DescribeWaitStatus(*status);
  }
}

}  // namespace
}  // namespace chord::testing
