// The OpenAI-compatible HTTP front door (cpp-httplib): POST /v1/completions,
// POST /v1/chat/completions (JSON or server-sent events), GET /v1/models,
// GET /health. Requests go through ValidateGenerateRequest to the same
// scheduler the gRPC service uses; `n` choices are n scheduler requests.
// A client that goes away has its requests aborted, streaming or not.
//
// Thread-safety: Start/Stop from one thread; handlers run on the server's own
// thread pool. Errors: Start gives UNAVAILABLE when the port cannot be bound,
// INVALID_ARGUMENT for unreadable TLS files; request errors are answered in
// OpenAI's error shape and never stop the server.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/gguf/gguf_file.h"
#include "common/tokenizer/tokenizer.h"
#include "coordinator/api_security.h"
#include "coordinator/chat_template.h"
#include "coordinator/request_stream.h"
#include "coordinator/request_validation.h"

namespace httplib {
class Server;
}

namespace chord::coordinator::http {

// Where requests go: the scheduler in the coordinator, a fake in tests.
// Implementations must be thread-safe.
class GenerationBackend {
 public:
  virtual ~GenerationBackend() = default;
  virtual absl::StatusOr<std::shared_ptr<RequestStream>> Submit(ValidatedRequest request) = 0;
  virtual bool Abort(const std::string& request_id) = 0;
  virtual bool serving() const = 0;  // false while loading or draining
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;          // 0: chosen by the OS
  std::string model_id;  // what /v1/models lists and requests may name
  RequestLimits limits;
  std::optional<ChatFormat> chat_format;  // none: chat requests get 400
  std::string api_key;  // non-empty: "Authorization: Bearer <key>" required on /v1/*
  TlsFiles tls;         // enabled: HTTPS (client certificates required with a client CA)
  int threads = 16;
};

class HttpServer {
 public:
  // `tokenizer` and `backend` must outlive the server.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(HttpServerOptions options,
                                                           const Tokenizer& tokenizer,
                                                           GenerationBackend& backend);
  ~HttpServer();  // Stop()

  int port() const { return port_; }
  bool tls() const { return tls_; }
  // Stops accepting and waits for the handlers to return (streams see their
  // requests end as the backend drains).
  void Stop();

 private:
  class Handlers;
  HttpServer() = default;

  int port_ = 0;
  bool tls_ = false;
  std::unique_ptr<Handlers> handlers_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace chord::coordinator::http
