#include "cli/serve/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/base/status.h"

namespace chord::serve {

ChildProcess::ChildProcess(std::string name, std::string binary, std::vector<std::string> args,
                           LineCallback on_line)
    : name_(std::move(name)), binary_(std::move(binary)), args_(std::move(args)), on_line_(std::move(on_line)) {}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(std::string name, std::string binary,
                                                                   std::vector<std::string> args,
                                                                   LineCallback on_line) {
  std::unique_ptr<ChildProcess> child(
      new ChildProcess(std::move(name), std::move(binary), std::move(args), std::move(on_line)));
  RETURN_IF_ERROR(child->Spawn());
  return child;
}

absl::Status ChildProcess::Spawn() {
  int fds[2];
  // O_CLOEXEC: siblings started later must not hold this pipe open, or EOF never comes.
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return absl::UnavailableError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  // Everything the child needs is built before fork(): only async-signal-safe
  // calls may run between fork and exec in a threaded parent.
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(binary_.c_str()));
  for (const std::string& arg : args_) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return absl::UnavailableError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);  // the parent died before prctl took effect
    ::dup2(fds[1], STDOUT_FILENO);
    ::dup2(fds[1], STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  pid_ = pid;
  reader_ = std::thread([this, fd = fds[0]] { ReadLoop(fd); });
  return absl::OkStatus();
}

void ChildProcess::ReadLoop(int fd) {
  std::string pending;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    pending.append(buffer, static_cast<size_t>(n));
    size_t newline;
    while ((newline = pending.find('\n')) != std::string::npos) {
      std::string line = pending.substr(0, newline);
      pending.erase(0, newline + 1);
      if (on_line_) on_line_(line);
      std::lock_guard<std::mutex> lock(mu_);
      lines_.push_back(std::move(line));
      cv_.notify_all();
    }
  }
  ::close(fd);
  std::lock_guard<std::mutex> lock(mu_);
  if (!pending.empty()) {
    if (on_line_) on_line_(pending);
    lines_.push_back(std::move(pending));
  }
  eof_ = true;
  cv_.notify_all();
}

absl::StatusOr<std::string> ChildProcess::WaitForLine(std::string_view marker, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock<std::mutex> lock(mu_);
  size_t scanned = 0;
  for (;;) {
    for (; scanned < lines_.size(); ++scanned) {
      const size_t at = lines_[scanned].find(marker);
      if (at == std::string::npos) continue;
      std::string rest = lines_[scanned].substr(at + marker.size());
      while (!rest.empty() && (rest.front() == ' ' || rest.front() == ':')) rest.erase(0, 1);
      while (!rest.empty() && std::isspace(static_cast<unsigned char>(rest.back()))) rest.pop_back();
      return rest;
    }
    if (eof_) {
      return absl::UnavailableError(
          absl::StrCat(name_, " exited before printing '", std::string(marker), "'"));
    }
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && scanned == lines_.size() && !eof_) {
      return absl::DeadlineExceededError(
          absl::StrCat(name_, " did not print '", std::string(marker), "' within ", timeout.count(), " ms"));
    }
  }
}

std::optional<int> ChildProcess::Poll() {
  std::lock_guard<std::mutex> lock(mu_);
  if (wait_status_.has_value() || pid_ <= 0) return wait_status_;
  int status = 0;
  const pid_t done = ::waitpid(pid_, &status, WNOHANG);
  if (done == pid_) wait_status_ = status;
  return wait_status_;
}

void ChildProcess::Signal(int signal) {
  if (!Poll().has_value()) ::kill(pid_, signal);
}

int ChildProcess::Stop(std::chrono::milliseconds grace) {
  if (!Poll().has_value()) {
    ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + grace;
    while (!Poll().has_value() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!Poll().has_value()) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      std::lock_guard<std::mutex> lock(mu_);
      wait_status_ = status;
    }
  }
  if (reader_.joinable()) reader_.join();
  std::lock_guard<std::mutex> lock(mu_);
  return *wait_status_;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) Stop(std::chrono::seconds(5));
}

std::string ChildProcess::Output() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const std::string& line : lines_) absl::StrAppend(&out, line, "\n");
  return out;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("killed by signal ", WTERMSIG(status), " (", ::strsignal(WTERMSIG(status)), ")");
  }
  return absl::StrCat("wait status ", status);
}

bool IsCleanExit(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status) == 0;
  return WIFSIGNALED(status) && (WTERMSIG(status) == SIGTERM || WTERMSIG(status) == SIGINT);
}

std::string SelfDirectory() {
  std::error_code error;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return ".";
  return self.parent_path().string();
}

}  // namespace chord::serve
