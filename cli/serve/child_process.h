// A child process whose stdout and stderr are read line by line: `chord serve`
// supervises chord-loader, chord-coordinator and chord-worker with it, and the
// integration tests start the same processes through it.
//
// The child gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the thread that
// started it (start children from a thread that outlives them, e.g. main).
//
// Thread-safety: all methods may be called from any thread; Stop/Poll reap the
// child exactly once. The destructor stops a running child (SIGTERM, then SIGKILL).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace chord::serve {

class ChildProcess {
 public:
  // Called from the reader thread with every line the child prints (no newline).
  using LineCallback = std::function<void(std::string_view line)>;

  // UNAVAILABLE when the pipe or fork fails; a binary that cannot be executed
  // shows up as an exit with status 127.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(std::string name, std::string binary,
                                                             std::vector<std::string> args,
                                                             LineCallback on_line = nullptr);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Waits for an output line containing `marker` and returns the text after it
  // (trimmed). DEADLINE_EXCEEDED after `timeout`; UNAVAILABLE if the child
  // exits first. Lines seen before the call count.
  absl::StatusOr<std::string> WaitForLine(std::string_view marker, std::chrono::milliseconds timeout);

  // The child's wait status once it has exited (reaping it), nullopt while it runs.
  std::optional<int> Poll();

  // SIGTERM, up to `grace` for a clean exit, then SIGKILL. Returns the wait status.
  int Stop(std::chrono::milliseconds grace);

  // Sends `signal` without waiting (tests use it to simulate crashes).
  void Signal(int signal);

  const std::string& name() const { return name_; }
  const std::string& binary() const { return binary_; }
  const std::vector<std::string>& args() const { return args_; }
  pid_t pid() const { return pid_; }
  std::string Output() const;  // every line so far, newline-separated

 private:
  ChildProcess(std::string name, std::string binary, std::vector<std::string> args, LineCallback on_line);
  absl::Status Spawn();
  void ReadLoop(int fd);

  const std::string name_;
  const std::string binary_;
  const std::vector<std::string> args_;
  const LineCallback on_line_;
  pid_t pid_ = -1;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;  // guarded by mu_
  bool eof_ = false;                // guarded by mu_
  std::optional<int> wait_status_;  // guarded by mu_
  std::thread reader_;
};

// "exited 0", "exited 3", "killed by signal 9 (Killed)".
std::string DescribeWaitStatus(int status);

// True for a clean stop: exit code 0, or death by the SIGTERM/SIGINT we sent.
bool IsCleanExit(int status);

// The directory holding the running executable (from /proc/self/exe).
std::string SelfDirectory();

}  // namespace chord::serve
