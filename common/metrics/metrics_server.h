// Serves a Registry over HTTP for Prometheus: GET /metrics answers the text
// exposition format; every other path is 404. One background thread pool
// (cpp-httplib's) answers scrapes; the server stops when destroyed.
//
// Thread-safety: Start() and the destructor from one thread; the registry may
// be updated from any thread while scrapes run. Ownership: `registry` must
// outlive the server.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/metrics/metrics.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace chord::metrics {

class MetricsServer {
 public:
  // Port 0 lets the OS pick (see port()). UNAVAILABLE when it cannot bind.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const Registry& registry,
                                                              const std::string& host, int port);
  // As Start(), but a negative port (the processes' "--metrics-port -1", off)
  // gives nullptr and OK.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> StartUnlessOff(const Registry& registry,
                                                                       const std::string& host,
                                                                       int port) {
    if (port < 0) return std::unique_ptr<MetricsServer>();
    return Start(registry, host, port);
  }
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }

 private:
  MetricsServer() = default;

  std::unique_ptr<httplib::Server> server_;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace chord::metrics
