// A whole chord deployment on loopback: one chord-loader, one
// chord-coordinator and N chord-worker child processes, started in dependency
// order with port 0 where possible (the ports are read back from the
// children's "listening on" lines). `chord serve` runs one and supervises it;
// the integration tests and the serving benchmark start them too.
//
// Thread-safety: Start/Restart/Stop from one thread (the one that started the
// cluster, since the children die with it); the accessors are const.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "cli/serve/child_process.h"
#include "cli/serve/grpc_client.h"

namespace chord::serve {

struct LocalClusterOptions {
  std::string bin_dir;       // holds chord-loader, chord-coordinator, chord-worker
  std::string model;         // GGUF path; empty: the loader takes it from config_path
  std::string config_path;   // cluster YAML passed to every child (optional)
  int workers = 2;
  int grpc_port = 0;         // 0: a free port
  int kv_slots = 0;          // 0: the coordinator's default
  int64_t ctx_size = -1;     // -1: the coordinator's default
  int threads_per_worker = 0;  // 0: the worker's default
  std::vector<std::string> log_args;  // e.g. {"--log-level", "warn"}, given to every child
  std::vector<std::string> coordinator_args;  // extra flags, e.g. {"--http-port", "8080"}
  std::vector<std::string> loader_args;       // e.g. {"--max-bandwidth", "500M"}
  std::vector<std::string> worker_args;       // e.g. {"--memory-budget", "200M"}, every worker
  std::vector<std::vector<std::string>> per_worker_args;  // worker i also gets per_worker_args[i]
  std::vector<int> worker_devices;            // worker i gets --device worker_devices[i % size]
  // How workers reach the loader on this host: "ipc" (a Unix socket: no TCP
  // stack between them) or "tcp" (loopback).
  std::string loader_transport = "ipc";
  ClientTls probe_tls;  // how the readiness probe reaches a coordinator serving TLS
  // Receives every line of every child, with the child's name ("loader", "coordinator", "w0"...).
  std::function<void(const std::string& child, std::string_view line)> on_line;
  std::chrono::milliseconds start_timeout{120000};
};

class LocalCluster {
 public:
  // Starts everything and waits until the coordinator's health is SERVING.
  // On failure every started child is stopped and the error names the child
  // (with the tail of its output).
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(LocalClusterOptions options);
  ~LocalCluster();  // Stop() if still running

  const std::string& grpc_address() const { return grpc_address_; }  // "127.0.0.1:PORT"
  int grpc_port() const { return grpc_port_; }
  const std::string& loader_endpoint() const { return loader_endpoint_; }
  const std::string& control_endpoint() const { return control_endpoint_; }

  size_t size() const { return children_.size(); }
  ChildProcess& child(size_t index) { return *children_[index]; }

  // Starts child `index` again with the same arguments (bound to the same
  // ports it had) after it exited; waits for its ready line if it has one.
  absl::Status Restart(size_t index);

  // Stops the coordinator first (SIGTERM: it drains its requests, then tells
  // the workers and the loader to stop), then whatever still runs: workers,
  // then loader. Each child gets `grace` after its SIGTERM before a SIGKILL.
  // Returns the children that did not exit cleanly, as "name: how".
  std::vector<std::string> Stop(std::chrono::milliseconds grace);

 private:
  struct Spec {
    std::string name;
    std::string binary;
    std::vector<std::string> args;
    std::string ready_marker;  // empty: none
  };

  explicit LocalCluster(LocalClusterOptions options) : options_(std::move(options)) {}
  absl::StatusOr<std::string> Launch(Spec spec);
  absl::Status StartAll();

  LocalClusterOptions options_;
  std::string ipc_path_;  // the loader's socket file, when it binds ipc
  std::vector<Spec> specs_;
  std::vector<std::unique_ptr<ChildProcess>> children_;
  std::string loader_endpoint_;
  std::string control_endpoint_;
  std::string grpc_address_;
  int grpc_port_ = 0;
};

// "tcp://127.0.0.1:5555" -> 5555; "127.0.0.1:50051" -> 50051.
absl::StatusOr<int> PortOf(std::string_view address);

}  // namespace chord::serve
