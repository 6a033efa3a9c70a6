// The chord-loader binary as a parent process sees it: the endpoint line on
// stdout, serving, a clean exit on SIGTERM, and clear failures for bad flags.
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "loader/client/loader_client.h"

namespace chord {
namespace {

const std::string kBinary = std::string(CHORD_BIN_DIR) + "/chord-loader";

struct Child {
  pid_t pid = -1;
  int stdout_fd = -1;
};

Child Spawn(std::vector<std::string> args) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> argv;
    args.insert(args.begin(), kBinary);
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(kBinary.c_str(), argv.data());
    _exit(127);
  }
  close(fds[1]);
  return Child{pid, fds[0]};
}

// Reads stdout up to the first newline, waiting at most `seconds`.
std::string ReadLine(int fd, int seconds) {
  std::string line;
  char c;
  while (line.empty() || line.back() != '\n') {
    pollfd item{fd, POLLIN, 0};
    if (poll(&item, 1, seconds * 1000) <= 0 || read(fd, &c, 1) != 1) break;
    line.push_back(c);
  }
  return line;
}

int WaitExit(pid_t pid) {
  int status = 0;
  for (int i = 0; i < 100; ++i) {  // up to 10 s
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    usleep(100000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

class LoaderMainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kBinary)) GTEST_SKIP() << kBinary << " is not built";
  }
};

// A loopback TCP port free at the time of the call.
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

// Starts the loader, checks the line it prints, fetches through it, stops it.
// With `metrics_port`, also checks that /metrics counts the bytes fetched.
void ServeAndStop(const std::vector<std::string>& args, int metrics_port = 0) {
  Child child = Spawn(args);
  ASSERT_GT(child.pid, 0);
  const std::string line = ReadLine(child.stdout_fd, 30);
  const std::string prefix = "chord-loader listening on tcp://127.0.0.1:";
  ASSERT_EQ(line.rfind(prefix, 0), 0u) << line;
  const std::string endpoint =
      line.substr(std::string("chord-loader listening on ").size(),
                  line.size() - 1 - std::string("chord-loader listening on ").size());
  EXPECT_NE(endpoint, "tcp://127.0.0.1:0");
  {
    zmq::context_t context(1);
    LoaderClientOptions options;
    options.node_id = "main-test";
    auto client = LoaderClient::Connect(context, endpoint, "", options);
    ASSERT_TRUE(client.ok()) << client.status();
    auto info = (*client)->FetchModelInfo();
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->model_sha256.size(), 64u);
    const gguf::TensorInfo& tensor = info->header->tensors().front();
    std::vector<uint8_t> bytes(tensor.n_bytes);
    EXPECT_TRUE((*client)->FetchTensor(tensor, bytes.data()).ok());
    if (metrics_port > 0) {
      httplib::Result scrape = httplib::Client("127.0.0.1", metrics_port).Get("/metrics");
      ASSERT_TRUE(scrape) << httplib::to_string(scrape.error());
      const std::string name = "chord_loader_bytes_sent_total ";
      const size_t at = scrape->body.find("\n" + name);
      ASSERT_NE(at, std::string::npos) << scrape->body;
      EXPECT_GE(std::stod(scrape->body.substr(at + 1 + name.size())),
                static_cast<double>(tensor.n_bytes));
    }
  }
  kill(child.pid, SIGTERM);
  EXPECT_EQ(WaitExit(child.pid), 0);
  close(child.stdout_fd);
}

TEST_F(LoaderMainTest, PrintsTheEndpointServesAndStopsOnSigterm) {
  ServeAndStop({"--model", CHORD_DEFAULT_MODEL, "--bind", "tcp://127.0.0.1:0"});
}

TEST_F(LoaderMainTest, ServesMetricsOfBytesSent) {
  const int port = FreePort();
  ServeAndStop({"--model", CHORD_DEFAULT_MODEL, "--bind", "tcp://127.0.0.1:0", "--metrics-port",
                std::to_string(port)},
               port);
}

TEST_F(LoaderMainTest, TakesTheModelFromTheClusterConfig) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("loader_main_test_" + std::to_string(getpid()) + ".yaml"))
                               .string();
  {
    std::ofstream yaml(path);
    yaml << "loader:\n  host: 127.0.0.1\n  port: 5556\n  model: " << CHORD_DEFAULT_MODEL << "\n";
  }
  ServeAndStop({"--config", path, "--bind", "tcp://127.0.0.1:*"});
  std::filesystem::remove(path);
}

// Under systemd (Type=notify) the loader says READY=1 once it listens and
// STOPPING=1 when SIGTERM arrives, on the datagram socket NOTIFY_SOCKET names.
TEST_F(LoaderMainTest, TellsSystemdWhenReadyAndWhenStopping) {
  const std::string name = "@chord_loader_notify_" + std::to_string(getpid());
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, name.data(), name.size());
  address.sun_path[0] = '\0';  // abstract: nothing to clean up
  ASSERT_EQ(bind(fd, reinterpret_cast<const sockaddr*>(&address),
                 static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size())),
            0);
  setenv("NOTIFY_SOCKET", name.c_str(), 1);
  Child child = Spawn({"--model", CHORD_DEFAULT_MODEL, "--bind", "tcp://127.0.0.1:0"});
  unsetenv("NOTIFY_SOCKET");
  ASSERT_GT(child.pid, 0);
  auto receive = [fd] {
    pollfd item{fd, POLLIN, 0};
    if (poll(&item, 1, 30000) <= 0) return std::string();
    char buffer[64];
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : std::string();
  };
  EXPECT_EQ(receive(), "READY=1");
  EXPECT_EQ(ReadLine(child.stdout_fd, 5).rfind("chord-loader listening on", 0), 0u);
  kill(child.pid, SIGTERM);
  EXPECT_EQ(receive(), "STOPPING=1");
  EXPECT_EQ(WaitExit(child.pid), 0);
  close(child.stdout_fd);
  close(fd);
}

TEST_F(LoaderMainTest, FailsClearlyOnBadInput) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{},
        {"--model", "/nonexistent/model.gguf"},
        {"--model", CHORD_DEFAULT_MODEL, "--bind", "not-an-endpoint"},
        {"--model", CHORD_DEFAULT_MODEL, "--log-level", "loud"},
        {"--model", CHORD_DEFAULT_MODEL, "--metrics-port", "70000"}}) {
    Child child = Spawn(args);
    ASSERT_GT(child.pid, 0);
    EXPECT_NE(WaitExit(child.pid), 0) << (args.empty() ? "(no flags)" : args.back());
    close(child.stdout_fd);
  }
}

}  // namespace
}  // namespace chord
