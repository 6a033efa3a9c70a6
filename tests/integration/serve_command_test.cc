// `chord serve` end to end: starts, reports SERVING, answers `chord generate
// --server` exactly as the in-process `chord generate`, and stops every child
// on SIGTERM.
#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "cli/serve/child_process.h"
#include "cli/serve/free_port.h"
#include "cli/serve/health_probe.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_helpers.h"

namespace chord::testing {
namespace {

// Children of `parent` (from /proc/*/stat's ppid field).
std::set<pid_t> ChildrenOf(pid_t parent) {
  std::set<pid_t> children;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return children;
  while (dirent* entry = ::readdir(proc)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(entry->d_name));
    if (pid <= 0) continue;
    std::ifstream stat("/proc/" + std::string(entry->d_name) + "/stat");
    std::string line;
    std::getline(stat, line);
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream fields(line.substr(close + 2));
    char state = 0;
    pid_t ppid = 0;
    fields >> state >> ppid;
    if (ppid == parent) children.insert(pid);
  }
  ::closedir(proc);
  return children;
}

bool Alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

TEST(ServeCommandTest, ServesGeneratesAndStopsCleanly) {
  const int port = serve::FreeLoopbackPort();
  ASSERT_GT(port, 0);
  absl::StatusOr<std::unique_ptr<serve::ChildProcess>> serve = serve::ChildProcess::Start(
      "chord serve", BinDir() + "/chord",
      {"serve", "--port", std::to_string(port), "--workers", "2", "--kv-slots", "4", "--ctx-size", "256",
       "--threads", "1"});
  ASSERT_TRUE(serve.ok()) << serve.status();
  absl::StatusOr<std::string> serving = (*serve)->WaitForLine("chord serve: serving", std::chrono::seconds(90));
  ASSERT_TRUE(serving.ok()) << serving.status() << "\n" << (*serve)->Output();
  const std::string address = "127.0.0.1:" + std::to_string(port);
  EXPECT_NE(serving->find(address), std::string::npos) << *serving;
  EXPECT_NE(serving->find(".gguf"), std::string::npos) << "names the model: " << *serving;
  absl::StatusOr<serve::HealthStatus> health = serve::CheckHealth(address, std::chrono::seconds(5));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, serve::HealthStatus::kServing);

  const std::vector<std::string> flags = {"--json", "--prompt", "Once upon a time", "--temperature", "0",
                                          "--ignore-eos", "--max-tokens", "20", "--logprobs", "3"};
  std::vector<std::string> remote_args = {"generate", "--server", address};
  remote_args.insert(remote_args.end(), flags.begin(), flags.end());
  std::vector<std::string> local_args = {"generate", "--ctx-size", "256"};
  local_args.insert(local_args.end(), flags.begin(), flags.end());
  absl::StatusOr<nlohmann::json> remote = RunChordJson(remote_args);
  absl::StatusOr<nlohmann::json> local = RunChordJson(local_args);
  ASSERT_TRUE(remote.ok()) << remote.status() << "\n" << (*serve)->Output();
  ASSERT_TRUE(local.ok()) << local.status();
  for (const char* key : {"prompt_token_ids", "token_ids", "text", "finish_reason"}) {
    EXPECT_EQ((*remote)[key], (*local)[key]) << key;
  }
  const nlohmann::json& remote_top = (*remote)["top_logprobs"];
  const nlohmann::json& local_top = (*local)["top_logprobs"];
  ASSERT_EQ(remote_top.size(), local_top.size());
  for (size_t step = 0; step < local_top.size(); ++step) {
    ASSERT_EQ(remote_top[step].size(), 3u);
    for (size_t k = 0; k < 3; ++k) {
      EXPECT_EQ(remote_top[step][k]["id"], local_top[step][k]["id"]) << "step " << step;
      EXPECT_NEAR(remote_top[step][k]["logprob"].get<double>(), local_top[step][k]["logprob"].get<double>(),
                  1e-5);
    }
  }

  // loader, coordinator and two workers.
  const std::set<pid_t> children = ChildrenOf((*serve)->pid());
  EXPECT_EQ(children.size(), 4u);
  (*serve)->Signal(SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!(*serve)->Poll().has_value() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE((*serve)->Poll().has_value()) << "chord serve did not stop within 30 s";
  const int status = *(*serve)->Poll();
  EXPECT_EQ(status, 0) << serve::DescribeWaitStatus(status) << "\n" << (*serve)->Output();
  for (pid_t child : children) EXPECT_FALSE(Alive(child)) << "child " << child << " outlived chord serve";
  EXPECT_NE((*serve)->Output().find("chord serve: stopped"), std::string::npos);
}

// `chord serve` passes TLS and the API key to its coordinator (and probes it
// over TLS); `chord generate --server` needs --tls-ca and --api-key to talk to it.
TEST(ServeCommandTest, ServesTlsWithAnApiKeyToChordGenerate) {
  const std::string dir = ::testing::TempDir() + "/chord_serve_tls_" + std::to_string(::getpid());
  const std::string cert = dir + "/server.crt", key = dir + "/server.key", token = dir + "/token";
  const std::string make_cert = "mkdir -p " + dir +
                                " && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
                                "-addext subjectAltName=IP:127.0.0.1 -keyout " +
                                key + " -out " + cert + " >/dev/null 2>&1";
  if (std::system(make_cert.c_str()) != 0) GTEST_SKIP() << "the openssl command cannot make a test certificate";
  std::ofstream(token) << "sekret\n";
  const int port = serve::FreeLoopbackPort();
  ASSERT_GT(port, 0);
  absl::StatusOr<std::unique_ptr<serve::ChildProcess>> serve = serve::ChildProcess::Start(
      "chord serve", BinDir() + "/chord",
      {"serve", "--port", std::to_string(port), "--workers", "1", "--kv-slots", "2", "--ctx-size", "128",
       "--threads", "1", "--tls-cert", cert, "--tls-key", key, "--api-key-file", token});
  ASSERT_TRUE(serve.ok()) << serve.status();
  absl::StatusOr<std::string> serving = (*serve)->WaitForLine("chord serve: serving", std::chrono::seconds(90));
  ASSERT_TRUE(serving.ok()) << serving.status() << "\n" << (*serve)->Output();
  const std::string address = "127.0.0.1:" + std::to_string(port);
  const std::vector<std::string> request = {"generate", "--server", address, "--json", "--prompt", "Once",
                                            "--temperature", "0", "--max-tokens", "5", "--ignore-eos"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = request;
    args.insert(args.end(), extra.begin(), extra.end());
    return RunChordJson(args, std::chrono::seconds(30));
  };
  absl::StatusOr<nlohmann::json> ok = with({"--tls-ca", cert, "--api-key", "sekret"});
  ASSERT_TRUE(ok.ok()) << ok.status() << "\n" << (*serve)->Output();
  EXPECT_EQ((*ok)["token_ids"].size(), 5u);
  absl::StatusOr<nlohmann::json> no_key = with({"--tls-ca", cert});
  ASSERT_FALSE(no_key.ok());
  EXPECT_NE(no_key.status().message().find("gRPC code 16"), std::string::npos) << no_key.status();  // UNAUTHENTICATED
  EXPECT_FALSE(with({"--tls-ca", cert, "--api-key", "wrong"}).ok());
  EXPECT_FALSE(with({"--api-key", "sekret"}).ok());  // plaintext to the TLS port
  const int status = (*serve)->Stop(std::chrono::seconds(30));
  EXPECT_EQ(status, 0) << serve::DescribeWaitStatus(status) << "\n" << (*serve)->Output();
  std::filesystem::remove_all(dir);
}

TEST(ServeCommandTest, BadConfigIsAUsageError) {
  const std::string path = ::testing::TempDir() + "/chord_serve_bad.yaml";
  std::ofstream(path) << "coordinator:\n  kv_slotz: 3\n";
  absl::StatusOr<std::unique_ptr<serve::ChildProcess>> serve =
      serve::ChildProcess::Start("chord serve", BinDir() + "/chord", {"serve", "--config", path, "--port", "0"});
  ASSERT_TRUE(serve.ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!(*serve)->Poll().has_value() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const int status = (*serve)->Stop(std::chrono::seconds(1));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << serve::DescribeWaitStatus(status);
  EXPECT_NE((*serve)->Output().find("coordinator.kv_slotz (line 2)"), std::string::npos) << (*serve)->Output();
}

}  // namespace
}  // namespace chord::testing
