#include "coordinator/server.h"

#include "coordinator/chat_template.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "common/base/status.h"

namespace chord::coordinator {

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(zmq::context_t& context,
                                                                            const ServerOptions& options,
                                                                            const ModelContext& model) {
  std::unique_ptr<CoordinatorServer> server(new CoordinatorServer());
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, GrpcServerCredentials(options.tls));
  auto scheduler = Scheduler::Start(context, options.scheduler, model);
  if (!scheduler.ok()) return scheduler.status();
  server->scheduler_ = *std::move(scheduler);
  ASSIGN_OR_RETURN(const std::optional<ChatFormat> chat_format,
                   ResolveChatFormat(*model.header, options.chat_template));
  server->service_ = std::make_unique<InferenceService>(model, *server->scheduler_, options.limits, chat_format,
                                                        options.api_key);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(options.grpc_host, ":", options.grpc_port),
                           credentials, &server->port_);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve gRPC on ", options.grpc_host, ":", options.grpc_port));
  }
  server->host_ = options.grpc_host;
  server->SetHealth(false);
  server->scheduler_->SetServingCallback([s = server.get()](bool serving) { s->SetHealth(serving); });
  // The scheduler may have become ready before the callback was installed.
  server->SetHealth(server->scheduler_->serving());
  return server;
}

CoordinatorServer::~CoordinatorServer() { Shutdown(std::chrono::milliseconds(0)); }

std::string CoordinatorServer::grpc_address() const { return absl::StrCat(host_, ":", port_); }

void CoordinatorServer::SetHealth(bool serving) {
  if (server_ == nullptr || shut_down_) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);
}

void CoordinatorServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  SetHealth(false);
  shut_down_ = true;
  if (scheduler_ != nullptr) {
    scheduler_->SetServingCallback(nullptr);
    scheduler_->Drain(grace);
  }
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_->Wait();
  }
  log::Info("coordinator stopped");
}

}  // namespace chord::coordinator
