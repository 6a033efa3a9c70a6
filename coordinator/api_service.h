// chord.v1.Inference over gRPC: validates requests, hands them to the
// scheduler and streams their events; answers the metadata calls from the
// ModelContext. Thread-safe (gRPC calls the handlers on its own threads).
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "chord/v1/inference.grpc.pb.h"
#include "coordinator/chat_template.h"
#include "coordinator/model_context.h"
#include "coordinator/request_validation.h"
#include "coordinator/scheduler.h"

namespace chord::coordinator {

class InferenceService final : public chord::v1::Inference::Service {
 public:
  // `model` and `scheduler` must outlive the service. `chat_format` renders
  // GenerateRequest.chat (none: such requests are refused). A non-empty
  // `api_key` is required as "authorization: Bearer <key>" on every call.
  InferenceService(const ModelContext& model, Scheduler& scheduler, RequestLimits limits,
                   std::optional<ChatFormat> chat_format, std::string api_key);

  grpc::Status Generate(grpc::ServerContext* context, const chord::v1::GenerateRequest* request,
                        grpc::ServerWriter<chord::v1::GenerateResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const chord::v1::AbortRequest* request,
                     chord::v1::AbortResponse* response) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const chord::v1::TokenizeRequest* request,
                        chord::v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context, const chord::v1::DetokenizeRequest* request,
                          chord::v1::DetokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const chord::v1::GetModelInfoRequest* request,
                            chord::v1::ModelInfo* response) override;
  grpc::Status GetServerInfo(grpc::ServerContext* context, const chord::v1::GetServerInfoRequest* request,
                             chord::v1::ServerInfo* response) override;

 private:
  const ModelContext& model_;
  Scheduler& scheduler_;
  RequestLimits limits_;
  const std::optional<ChatFormat> chat_format_;
  const std::string api_key_;
  std::atomic<uint64_t> next_request_number_{1};
};

}  // namespace chord::coordinator
