#include "coordinator/http/front_door.h"

#include <fstream>

#include "absl/strings/ascii.h"
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

namespace {

absl::StatusOr<std::string> ReadApiKey(const std::string& path) {
  std::ifstream in(path);
  std::string key;
  if (!in || !std::getline(in, key))
    return absl::InvalidArgumentError(absl::StrCat("cannot read the API key file ", path));
  key = std::string(absl::StripAsciiWhitespace(key));
  if (key.empty())
    return absl::InvalidArgumentError(absl::StrCat("the API key file ", path, " is empty"));
  return key;
}

}  // namespace

void AddHttpFlags(CLI::App& app, HttpFlags& flags) {
  app.add_option("--http-port", flags.port,
                 "OpenAI-compatible HTTP port (off unless given; 0: OS pick)");
  app.add_option("--chat-template", flags.chat_template,
                 "llama2, llama3, chatml, mistral, zephyr, gemma or phi3 (default: recognized from "
                 "the model)");
  app.add_option("--api-key-file", flags.api_key_file,
                 "file whose first line is the HTTP bearer token")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-cert", flags.tls_cert_file, "PEM certificate: serve HTTPS")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", flags.tls_key_file, "PEM private key of --tls-cert")
      ->check(CLI::ExistingFile);
}

absl::StatusOr<std::unique_ptr<FrontDoor>> FrontDoor::Start(const HttpFlags& flags,
                                                            const std::string& host,
                                                            const ModelContext& model,
                                                            Scheduler& scheduler,
                                                            const RequestLimits& limits) {
  if (flags.port < 0) return nullptr;
  std::unique_ptr<FrontDoor> door(new FrontDoor());
  HttpServerOptions options;
  options.host = host;
  options.port = flags.port;
  options.model_id = model.config.name.empty() ? model.file_name : model.config.name;
  options.limits = limits;
  ASSIGN_OR_RETURN(options.chat_format, ResolveChatFormat(*model.header, flags.chat_template));
  if (!flags.api_key_file.empty()) {
    ASSIGN_OR_RETURN(options.api_key, ReadApiKey(flags.api_key_file));
  }
  options.tls_cert_file = flags.tls_cert_file;
  options.tls_key_file = flags.tls_key_file;
  if (!options.api_key.empty() && options.tls_cert_file.empty() && host != "127.0.0.1" &&
      host != "localhost") {
    log::Warn(
        "http: the API key crosses the network in clear text; configure --tls-cert and --tls-key");
  }
  log::Info("http: model id '%s', chat template %s, auth %s, tls %s", options.model_id,
            options.chat_format ? std::string(ChatFormatName(*options.chat_format))
                                : "none (chat requests get 400)",
            options.api_key.empty() ? "off" : "bearer",
            options.tls_cert_file.empty() ? "off" : "on");
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
