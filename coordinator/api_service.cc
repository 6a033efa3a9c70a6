#include "coordinator/api_service.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "coordinator/api_security.h"
#include "coordinator/grpc_status.h"

namespace chord::coordinator {
namespace {

uint64_t RandomSeed() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return engine();
}

}  // namespace

InferenceService::InferenceService(const ModelContext& model, Scheduler& scheduler, RequestLimits limits,
                                   std::optional<ChatFormat> chat_format, std::string api_key)
    : model_(model),
      scheduler_(scheduler),
      limits_(limits),
      chat_format_(chat_format),
      api_key_(std::move(api_key)) {}

grpc::Status InferenceService::Generate(grpc::ServerContext* context,
                                        const chord::v1::GenerateRequest* request,
                                        grpc::ServerWriter<chord::v1::GenerateResponse>* writer) {
  if (grpc::Status auth = CheckBearer(*context, api_key_); !auth.ok()) return auth;
  chord::v1::GenerateRequest rendered;  // a chat request, as prompt token ids
  if (request->input_case() == chord::v1::GenerateRequest::kChat) {
    std::vector<ChatMessage> messages;
    for (const chord::v1::ChatMessage& m : request->chat().messages()) messages.push_back({m.role(), m.content()});
    rendered = *request;
    const absl::Status chat = ChatToPrompt(chat_format_, messages, *model_.tokenizer, rendered);
    if (!chat.ok()) return ToGrpcStatus(chat);
    request = &rendered;
  }
  absl::StatusOr<ValidatedRequest> validated =
      ValidateGenerateRequest(*request, *model_.tokenizer, limits_, RandomSeed());
  if (!validated.ok()) {
    log::RequestInfo(request->request_id().substr(0, 256), "refused: %s",
                     validated.status().ToString());
    return ToGrpcStatus(validated.status());
  }
  if (validated->request_id.empty()) {
    validated->request_id = absl::StrCat("req-", next_request_number_.fetch_add(1), "-", RandomSeed() % 1000000);
  }
  const std::string request_id = validated->request_id;
  absl::StatusOr<std::shared_ptr<RequestStream>> stream = scheduler_.Submit(*std::move(validated));
  if (!stream.ok()) {
    log::RequestInfo(request_id, "refused: %s", stream.status().ToString());
    return ToGrpcStatus(stream.status());
  }
  for (;;) {
    // Deadlines and client cancellation both show up as IsCancelled().
    if (context->IsCancelled()) {
      log::RequestInfo(request_id, "cancelled by the client or its deadline");
      scheduler_.Abort(request_id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled or ran past its deadline");
    }
    std::optional<StreamEvent> event = (*stream)->Pop(std::chrono::milliseconds(50));
    if (!event.has_value()) continue;
    if (!event->status.ok()) return ToGrpcStatus(event->status);
    if (!writer->Write(event->response)) {
      log::RequestInfo(request_id, "the client went away");
      scheduler_.Abort(request_id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    if (event->last()) return grpc::Status::OK;
  }
}

grpc::Status InferenceService::Abort(grpc::ServerContext* context, const chord::v1::AbortRequest* request,
                                     chord::v1::AbortResponse* response) {
  if (grpc::Status auth = CheckBearer(*context, api_key_); !auth.ok()) return auth;
  response->set_found(scheduler_.Abort(request->request_id()));
  return grpc::Status::OK;
}

grpc::Status InferenceService::Tokenize(grpc::ServerContext* context, const chord::v1::TokenizeRequest* request,
                                        chord::v1::TokenizeResponse* response) {
  if (grpc::Status auth = CheckBearer(*context, api_key_); !auth.ok()) return auth;
  for (const TokenId id : model_.tokenizer->Encode(request->text(), request->add_special())) {
    response->add_token_ids(static_cast<uint32_t>(id));
  }
  return grpc::Status::OK;
}

grpc::Status InferenceService::Detokenize(grpc::ServerContext* context, const chord::v1::DetokenizeRequest* request,
                                          chord::v1::DetokenizeResponse* response) {
  if (grpc::Status auth = CheckBearer(*context, api_key_); !auth.ok()) return auth;
  std::vector<TokenId> ids;
  for (const uint32_t id : request->token_ids()) {
    if (id >= static_cast<uint32_t>(model_.tokenizer->vocab_size())) {
      return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary")));
    }
    ids.push_back(static_cast<TokenId>(id));
  }
  response->set_text(chord::Detokenize(*model_.tokenizer, ids));
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetModelInfo(grpc::ServerContext* context, const chord::v1::GetModelInfoRequest*,
                                            chord::v1::ModelInfo* response) {
  if (grpc::Status auth = CheckBearer(*context, api_key_); !auth.ok()) return auth;
  response->set_name(model_.config.name.empty() ? model_.file_name : model_.config.name);
  response->set_architecture(model_.config.architecture);
  response->set_sha256(model_.sha256);
  response->set_vocab_size(static_cast<uint32_t>(model_.tokenizer->vocab_size()));
  response->set_max_context(static_cast<uint32_t>(limits_.n_ctx));
  response->set_n_layer(static_cast<uint32_t>(model_.config.n_layer));
  response->set_n_embd(static_cast<uint32_t>(model_.config.n_embd));
  response->set_bos_id(model_.tokenizer->bos_id());
  for (const TokenId id : model_.tokenizer->end_of_generation_ids()) {
    response->add_eos_ids(static_cast<uint32_t>(id));
  }
  response->set_max_tokens_limit(static_cast<uint32_t>(limits_.max_tokens_limit));
  response->set_tokenizer(std::string(model_.tokenizer->kind_name()));
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetServerInfo(grpc::ServerContext* context, const chord::v1::GetServerInfoRequest*,
                                             chord::v1::ServerInfo* response) {
  if (grpc::Status auth = CheckBearer(*context, api_key_); !auth.ok()) return auth;
  *response = scheduler_.ServerInfo();
  response->set_version(CHORD_VERSION);
  return grpc::Status::OK;
}

}  // namespace chord::coordinator
