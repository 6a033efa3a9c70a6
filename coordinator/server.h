// The coordinator's services wired together: the scheduler (control socket,
// data plane) and the gRPC server (chord.v1.Inference, grpc.health.v1 and
// reflection). Health is SERVING only while every stage of the plan is ready.
// With an API key, Inference calls need it; health and reflection stay open.
//
// Thread-safety: Start/Shutdown from one thread; the services run on their own.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/api_security.h"
#include "coordinator/api_service.h"
#include "coordinator/scheduler.h"

namespace chord::coordinator {

struct ServerOptions {
  SchedulerOptions scheduler;
  std::string grpc_host = "127.0.0.1";
  int grpc_port = 50051;  // 0: chosen by the OS
  RequestLimits limits;
  std::string chat_template;  // chat format for GenerateRequest.chat; empty: recognized from the model
  std::string api_key;  // non-empty: chord.v1.Inference calls need "authorization: Bearer <key>"
  TlsFiles tls;         // enabled: gRPC over TLS (mutual with a client CA)
};

class CoordinatorServer {
 public:
  // `model` must outlive the server. UNAVAILABLE when a port cannot be bound,
  // INVALID_ARGUMENT when the TLS files cannot be read.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(zmq::context_t& context,
                                                                  const ServerOptions& options,
                                                                  const ModelContext& model);
  ~CoordinatorServer();

  std::string grpc_address() const;  // host:port actually bound
  const std::string& control_endpoint() const { return scheduler_->control_endpoint(); }
  Scheduler& scheduler() { return *scheduler_; }
  grpc::Server& grpc_server() { return *server_; }

  // NOT_SERVING, new requests refused, in-flight ones get `grace` to finish,
  // workers are told to shut down, then the gRPC server stops.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  CoordinatorServer() = default;
  void SetHealth(bool serving);

  std::string host_;
  int port_ = 0;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<InferenceService> service_;
  std::unique_ptr<grpc::Server> server_;
  bool shut_down_ = false;
};

}  // namespace chord::coordinator
