#include "coordinator/http/http_server.h"

#include <httplib.h>

#include <chrono>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "common/base/status.h"
#include "coordinator/api_security.h"
#include "coordinator/http/client_connection.h"
#include "coordinator/http/openai_api.h"

namespace chord::coordinator::http {
namespace {

using nlohmann::json;

constexpr std::chrono::milliseconds kPoll{20};
constexpr std::chrono::milliseconds kClientCheck{100};  // how often a non-streaming request checks its client

uint64_t RandomSeed() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return engine();
}

void SendError(httplib::Response& res, const absl::Status& status, std::string_view code = "") {
  res.status = HttpStatusFor(status);
  res.set_content(DumpJson(ErrorBody(status, code)), "application/json");
}

// One HTTP generation: its n scheduler requests and what they have produced.
struct Job {
  GenerationBackend* backend = nullptr;
  const Tokenizer* tokenizer = nullptr;
  ResponseMeta meta;
  bool include_usage = false;
  std::vector<std::string> ids;
  std::vector<std::shared_ptr<RequestStream>> streams;
  std::vector<ChoiceOutput> outputs;
  std::vector<bool> done, started;
  size_t remaining = 0;

  void AbortUnfinished() {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i >= done.size() || !done[i]) backend->Abort(ids[i]);
    }
  }
};

// The event's output as a delta; also appended to the choice's total.
ChoiceOutput Apply(const StreamEvent& event, ChoiceOutput& total) {
  ChoiceOutput delta;
  delta.text = event.response.text();
  delta.token_ids.assign(event.response.token_ids().begin(), event.response.token_ids().end());
  delta.logprobs.assign(event.response.logprobs().begin(), event.response.logprobs().end());
  if (event.response.has_final()) delta.final = event.response.final();
  total.text += delta.text;
  total.token_ids.insert(total.token_ids.end(), delta.token_ids.begin(), delta.token_ids.end());
  total.logprobs.insert(total.logprobs.end(), delta.logprobs.begin(), delta.logprobs.end());
  if (delta.final.has_value()) total.final = delta.final;
  return delta;
}

// Pops what each unfinished stream has ready, calling `on_delta(index,
// delta)` for it. A failed event ends the job with its status.
absl::Status PollOnce(Job& job, const std::function<bool(int, const ChoiceOutput&)>& on_delta) {
  for (size_t i = 0; i < job.streams.size(); ++i) {
    if (job.done[i]) continue;
    std::optional<StreamEvent> event =
        job.streams[i]->Pop(job.remaining == 1 ? kPoll : std::chrono::milliseconds(1));
    if (!event.has_value()) continue;
    if (!event->status.ok()) {
      job.done[i] = true;
      --job.remaining;
      return event->status;
    }
    ChoiceOutput delta = Apply(*event, job.outputs[i]);
    if (event->last()) {
      job.done[i] = true;
      --job.remaining;
    }
    if (!on_delta(static_cast<int>(i), delta)) return absl::CancelledError("the client went away");
  }
  return absl::OkStatus();
}

}  // namespace

class HttpServer::Handlers {
 public:
  Handlers(HttpServerOptions options, const Tokenizer& tokenizer, GenerationBackend& backend)
      : options_(std::move(options)), tokenizer_(tokenizer), backend_(backend) {}

  void Register(httplib::Server& server);

 private:
  bool Authorized(const httplib::Request& req, httplib::Response& res) const;
  absl::StatusOr<std::shared_ptr<Job>> Submit(const OpenAiRequest& request, Endpoint endpoint);
  void Generate(const httplib::Request& req, httplib::Response& res, Endpoint endpoint);
  void Respond(Job& job, const httplib::Request& req, httplib::Response& res);
  void Stream(std::shared_ptr<Job> job, httplib::Response& res);

  HttpServerOptions options_;
  const Tokenizer& tokenizer_;
  GenerationBackend& backend_;
  std::atomic<uint64_t> next_id_{1};
};

void HttpServer::Handlers::Register(httplib::Server& server) {
  server.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool ok = backend_.serving();
    res.status = ok ? 200 : 503;
    res.set_content(DumpJson({{"status", ok ? "ok" : "unavailable"}}), "application/json");
  });
  server.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    json model = {
        {"id", options_.model_id}, {"object", "model"}, {"created", 0}, {"owned_by", "chord"}};
    res.set_content(DumpJson({{"object", "list"}, {"data", json::array({model})}}),
                    "application/json");
  });
  server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Generate(req, res, Endpoint::kCompletions);
  });
  server.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Generate(req, res, Endpoint::kChat);
  });
  server.set_error_handler(httplib::Server::HandlerWithResponse(
      [](const httplib::Request& req, httplib::Response& res) -> httplib::Server::HandlerResponse {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        SendError(res,
                  res.status == 404
                      ? absl::NotFoundError(absl::StrCat("no route ", req.method, " ", req.path))
                      : absl::InvalidArgumentError(absl::StrCat("HTTP ", res.status)));
        return httplib::Server::HandlerResponse::Handled;
      }));
  server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr error) {
        std::string what = "internal error";
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        log::Error("http: handler failed: %s", what);
        SendError(res, absl::InternalError(what));
      });
}

bool HttpServer::Handlers::Authorized(const httplib::Request& req, httplib::Response& res) const {
  if (options_.api_key.empty()) return true;
  const std::string header = req.get_header_value("Authorization");
  if (BearerMatches(header, options_.api_key)) return true;
  SendError(res,
            absl::UnauthenticatedError(header.empty() ? "missing Authorization: Bearer <key>"
                                                      : "the API key is wrong"),
            "invalid_api_key");
  return false;
}

absl::StatusOr<std::shared_ptr<Job>> HttpServer::Handlers::Submit(const OpenAiRequest& request,
                                                                  Endpoint endpoint) {
  chord::v1::GenerateRequest generate = request.generate;
  if (endpoint == Endpoint::kChat) {
    RETURN_IF_ERROR(ChatToPrompt(options_.chat_format, request.messages, tokenizer_, generate));
  }
  auto job = std::make_shared<Job>();
  job->backend = &backend_;
  job->tokenizer = &tokenizer_;
  job->meta = {endpoint,
               absl::StrCat(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-",
                            next_id_.fetch_add(1), "-", RandomSeed() % 1000000000),
               std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count(),
               options_.model_id};
  job->include_usage = request.include_usage;
  for (int i = 0; i < request.n; ++i) {
    chord::v1::GenerateRequest one = generate;
    // Choices differ by seed; a given seed keeps every choice reproducible.
    if (one.sampling().has_seed()) one.mutable_sampling()->set_seed(one.sampling().seed() + i);
    one.set_request_id(absl::StrCat(job->meta.id, "-", i));
    absl::StatusOr<ValidatedRequest> validated =
        ValidateGenerateRequest(one, tokenizer_, options_.limits, RandomSeed());
    absl::StatusOr<std::shared_ptr<RequestStream>> stream =
        validated.ok() ? backend_.Submit(*std::move(validated)) : validated.status();
    if (!stream.ok()) {
      job->done.assign(job->ids.size(), false);
      job->AbortUnfinished();
      return stream.status();
    }
    job->ids.push_back(one.request_id());
    job->streams.push_back(*std::move(stream));
  }
  job->outputs.resize(job->ids.size());
  job->done.assign(job->ids.size(), false);
  job->started.assign(job->ids.size(), false);
  job->remaining = job->ids.size();
  return job;
}

void HttpServer::Handlers::Generate(const httplib::Request& req, httplib::Response& res,
                                    Endpoint endpoint) {
  if (!Authorized(req, res)) return;
  absl::StatusOr<OpenAiRequest> request = ParseOpenAiRequest(req.body, endpoint);
  if (!request.ok()) return SendError(res, request.status());
  if (!request->model.empty() && request->model != options_.model_id) {
    return SendError(res,
                     absl::NotFoundError(absl::StrCat("the model '", request->model,
                                                      "' does not exist; this server "
                                                      "serves '",
                                                      options_.model_id, "'")),
                     "model_not_found");
  }
  absl::StatusOr<std::shared_ptr<Job>> job = Submit(*request, endpoint);
  if (!job.ok()) return SendError(res, job.status());
  if (request->stream) return Stream(*std::move(job), res);
  Respond(**job, req, res);
}

void HttpServer::Handlers::Respond(Job& job, const httplib::Request& req, httplib::Response& res) {
  // Nothing is written until the end, so a client that leaves is only seen
  // by watching its socket.
  const ClientConnection client(req);
  if (!client.found()) log::Debug("http: cannot watch the connection of %s:%d", req.remote_addr, req.remote_port);
  auto next_check = std::chrono::steady_clock::now() + kClientCheck;
  while (job.remaining > 0) {
    absl::Status status = PollOnce(job, [](int, const ChoiceOutput&) { return true; });
    if (status.ok() && std::chrono::steady_clock::now() >= next_check) {
      next_check = std::chrono::steady_clock::now() + kClientCheck;
      if (client.Closed()) status = absl::CancelledError("the client went away");
    }
    if (!status.ok()) {
      job.AbortUnfinished();
      return SendError(res, status);
    }
  }
  res.set_content(DumpJson(ResponseBody(job.meta, job.outputs, tokenizer_)), "application/json");
}

void HttpServer::Handlers::Stream(std::shared_ptr<Job> job, httplib::Response& res) {
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [job](size_t, httplib::DataSink& sink) {
        auto write = [&](const std::string& text) { return sink.write(text.data(), text.size()); };
        absl::Status status = PollOnce(*job, [&](int index, const ChoiceOutput& delta) {
          if (delta.text.empty() && delta.token_ids.empty() && !delta.final.has_value())
            return true;
          const bool first = !job->started[static_cast<size_t>(index)];
          job->started[static_cast<size_t>(index)] = true;
          return write(SseEvent(ChunkBody(job->meta, index, delta, first, *job->tokenizer)));
        });
        if (absl::IsCancelled(status)) return false;  // the releaser aborts the rest
        if (!status.ok()) {
          job->AbortUnfinished();
          write(SseEvent(ErrorBody(status)));
        } else if (job->remaining > 0) {
          return true;
        } else if (job->include_usage) {
          if (!write(SseEvent(UsageChunkBody(job->meta, job->outputs)))) return false;
        }
        write(std::string(kSseDone));
        sink.done();
        return true;
      },
      [job](bool success) {
        if (!success || job->remaining > 0) job->AbortUnfinished();
      });
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(HttpServerOptions options,
                                                              const Tokenizer& tokenizer,
                                                              GenerationBackend& backend) {
  std::unique_ptr<HttpServer> server(new HttpServer());
  const TlsFiles& files = options.tls;
  const bool tls = files.enabled() || !files.key_file.empty();
  if (tls) {
    if (files.cert_file.empty() || files.key_file.empty()) {
      return absl::InvalidArgumentError("HTTPS needs both a certificate and a key file");
    }
    auto ssl = std::make_unique<httplib::SSLServer>(
        files.cert_file.c_str(), files.key_file.c_str(),
        files.client_ca_file.empty() ? nullptr : files.client_ca_file.c_str());
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot load the TLS certificate ", files.cert_file,
                                                     ", key ", files.key_file, " or client CA ",
                                                     files.client_ca_file));
    }
    server->server_ = std::move(ssl);
  } else {
    server->server_ = std::make_unique<httplib::Server>();
  }
  server->tls_ = tls;
  const int threads = std::max(2, options.threads);
  server->server_->new_task_queue = [threads] {
    return new httplib::ThreadPool(static_cast<size_t>(threads));
  };
  server->server_->set_payload_max_length(16 << 20);
  const std::string host = options.host;
  const int port = options.port;
  server->handlers_ = std::make_unique<Handlers>(std::move(options), tokenizer, backend);
  server->handlers_->Register(*server->server_);
  server->port_ = port == 0 ? server->server_->bind_to_any_port(host)
                            : (server->server_->bind_to_port(host, port) ? port : -1);
  if (server->port_ <= 0)
    return absl::UnavailableError(absl::StrCat("cannot serve HTTP on ", host, ":", port));
  server->thread_ = std::thread([s = server->server_.get()] { s->listen_after_bind(); });
  // stop() only reaches a server that is already listening.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!server->server_->is_running() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return server;
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Stop() {
  if (server_ != nullptr) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace chord::coordinator::http
