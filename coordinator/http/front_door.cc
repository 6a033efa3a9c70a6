#include "coordinator/http/front_door.h"

#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "common/base/status.h"

namespace chord::coordinator::http {

class FrontDoor::SchedulerBackend : public GenerationBackend {
 public:
  explicit SchedulerBackend(Scheduler& scheduler) : scheduler_(scheduler) {}
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(ValidatedRequest request) override {
    return scheduler_.Submit(std::move(request));
  }
  bool Abort(const std::string& request_id) override { return scheduler_.Abort(request_id); }
  bool serving() const override { return scheduler_.serving(); }

 private:
  Scheduler& scheduler_;
};

absl::StatusOr<std::unique_ptr<FrontDoor>> FrontDoor::Start(const FrontDoorOptions& settings,
                                                            const ModelContext& model,
                                                            Scheduler& scheduler,
                                                            const RequestLimits& limits) {
  if (settings.port < 0) return nullptr;
  std::unique_ptr<FrontDoor> door(new FrontDoor());
  const std::string& host = settings.host;
  HttpServerOptions options;
  options.host = host;
  options.port = settings.port;
  options.model_id = model.config.name.empty() ? model.file_name : model.config.name;
  options.limits = limits;
  ASSIGN_OR_RETURN(options.chat_format, ResolveChatFormat(*model.header, settings.chat_template));
  options.api_key = settings.api_key;
  options.tls = settings.tls;
  if (!options.api_key.empty() && !options.tls.enabled() && host != "127.0.0.1" &&
      host != "localhost") {
    log::Warn(
        "http: the API key crosses the network in clear text; configure --tls-cert and --tls-key");
  }
  log::Info("http: model id '%s', chat template %s, auth %s, tls %s", options.model_id,
            options.chat_format ? std::string(ChatFormatName(*options.chat_format))
                                : "none (chat requests get 400)",
            options.api_key.empty() ? "off" : "bearer",
            !options.tls.enabled() ? "off" : options.tls.client_ca_file.empty() ? "on" : "mutual");
  door->backend_ = std::make_unique<SchedulerBackend>(scheduler);
  ASSIGN_OR_RETURN(door->server_,
                   HttpServer::Start(std::move(options), *model.tokenizer, *door->backend_));
  door->scheme_ = door->server_->tls() ? "https" : "http";
  door->host_ = host;
  return door;
}

FrontDoor::~FrontDoor() {
  if (server_ != nullptr) server_->Stop();
}

std::string FrontDoor::address() const {
  return absl::StrCat(scheme_, "://", host_, ":", server_->port());
}

}  // namespace chord::coordinator::http
