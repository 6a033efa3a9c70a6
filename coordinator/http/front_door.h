// chord-coordinator's HTTP front door as main() starts it: an HttpServer on
// the coordinator's own scheduler (so HTTP and gRPC requests share KV slots,
// queue and batches).
//
// Thread-safety: Start/destruction from one thread.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/http/http_server.h"
#include "coordinator/model_context.h"
#include "coordinator/scheduler.h"

namespace chord::coordinator::http {

struct FrontDoorOptions {
  int port = -1;              // < 0: no HTTP server; 0: chosen by the OS
  std::string host = "127.0.0.1";
  std::string chat_template;  // empty: recognized from the model
  std::string api_key;        // non-empty: bearer token required on /v1/*
  TlsFiles tls;
};

class FrontDoor {
 public:
  // nullptr when options.port < 0. INVALID_ARGUMENT for an unknown chat
  // template or unreadable TLS files, UNAVAILABLE when the port is taken.
  // `model` and `scheduler` must outlive the front door.
  static absl::StatusOr<std::unique_ptr<FrontDoor>> Start(const FrontDoorOptions& options,
                                                          const ModelContext& model,
                                                          Scheduler& scheduler,
                                                          const RequestLimits& limits);
  ~FrontDoor();

  std::string address() const;  // scheme://host:port

 private:
  class SchedulerBackend;
  FrontDoor() = default;

  std::string scheme_, host_;
  std::unique_ptr<SchedulerBackend> backend_;
  std::unique_ptr<HttpServer> server_;
};

}  // namespace chord::coordinator::http
