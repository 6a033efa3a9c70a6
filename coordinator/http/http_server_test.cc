#include "coordinator/http/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "coordinator/http/openai_api.h"
#include "gtest/gtest.h"

namespace chord::coordinator::http {
namespace {

using nlohmann::json;

// The token a fake request produces at step `i`.
uint32_t FakeToken(size_t i) { return 300 + static_cast<uint32_t>(i % 40); }

// Answers every request with max_tokens FakeTokens, one event each, on its
// own thread; records what it was given.
class FakeBackend : public GenerationBackend {
 public:
  explicit FakeBackend(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  ~FakeBackend() override {
    for (std::thread& t : threads_) t.join();
  }

  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(ValidatedRequest request) override {
    if (!refusal.ok()) return refusal;
    auto stream = std::make_shared<RequestStream>();
    std::lock_guard lock(mutex_);
    submitted_.push_back(request);
    threads_.emplace_back([this, stream, request] { Produce(*stream, request); });
    return stream;
  }
  bool Abort(const std::string& request_id) override {
    std::lock_guard lock(mutex_);
    aborted_.insert(request_id);
    return true;
  }
  bool serving() const override { return serving_flag.load(); }

  std::vector<ValidatedRequest> submitted() const {
    std::lock_guard lock(mutex_);
    return submitted_;
  }
  std::set<std::string> aborted() const {
    std::lock_guard lock(mutex_);
    return aborted_;
  }

  std::atomic<bool> serving_flag{true};
  absl::Status refusal;
  std::chrono::milliseconds step_delay{0};

 private:
  void Produce(RequestStream& stream, const ValidatedRequest& request) {
    for (int i = 0; i < request.max_tokens; ++i) {
      if (aborted().contains(request.request_id))
        return Finish(stream, request, i, chord::v1::FINISH_REASON_ABORT);
      std::this_thread::sleep_for(step_delay);
      StreamEvent event;
      event.response.set_request_id(request.request_id);
      event.response.add_token_ids(FakeToken(static_cast<size_t>(i)));
      event.response.set_text(
          tokenizer_.TokenToPiece(static_cast<TokenId>(FakeToken(static_cast<size_t>(i)))));
      if (request.logprobs > 0) {
        auto* entry = event.response.add_logprobs()->add_entries();
        entry->set_id(FakeToken(static_cast<size_t>(i)));
        entry->set_logprob(-0.5f);
      }
      stream.Push(std::move(event));
    }
    Finish(stream, request, request.max_tokens, chord::v1::FINISH_REASON_LENGTH);
  }
  static void Finish(RequestStream& stream, const ValidatedRequest& request, int generated,
                     chord::v1::FinishReason reason) {
    StreamEvent event;
    event.response.set_request_id(request.request_id);
    chord::v1::FinalInfo& final = *event.response.mutable_final();
    final.set_finish_reason(reason);
    final.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(request.prompt.size()));
    final.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(generated));
    final.set_seed(request.sampling.seed);
    stream.Push(std::move(event));
  }

  const Tokenizer& tokenizer_;
  mutable std::mutex mutex_;
  std::vector<ValidatedRequest> submitted_;
  std::set<std::string> aborted_;
  std::vector<std::thread> threads_;
};

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(CHORD_DEFAULT_MODEL))
      GTEST_SKIP() << "no model at " << CHORD_DEFAULT_MODEL;
    auto file = gguf::GgufFile::Open(CHORD_DEFAULT_MODEL);
    ASSERT_TRUE(file.ok()) << file.status();
    header_ = *std::move(file);
    auto tokenizer = Tokenizer::FromGguf(*header_);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
    backend_ = std::make_unique<FakeBackend>(*tokenizer_);
    options_.model_id = "stories";
    options_.limits.n_ctx = 256;
    options_.limits.max_tokens_limit = 256;
  }
  void TearDown() override {
    server_.reset();
    backend_.reset();
  }
  void StartServer() {
    auto server = HttpServer::Start(options_, *tokenizer_, *backend_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(10, 0);
  }
  httplib::Result Post(const std::string& path, const json& body,
                       const httplib::Headers& headers = {}) {
    return client_->Post(path.c_str(), headers, body.dump(), "application/json");
  }
  // The `data:` payloads of an SSE body, [DONE] included.
  static std::vector<std::string> Events(const std::string& body) {
    std::vector<std::string> out;
    size_t at = 0;
    while (at < body.size()) {
      size_t end = body.find("\n\n", at);
      if (end == std::string::npos) end = body.size();
      const std::string block = body.substr(at, end - at);
      at = end + 2;
      EXPECT_TRUE(block.starts_with("data: ")) << block;
      if (block.size() >= 6) out.push_back(block.substr(6));
    }
    return out;
  }
  std::string FakeText(int n) const {
    std::string text;
    for (int i = 0; i < n; ++i)
      text += tokenizer_->TokenToPiece(static_cast<TokenId>(FakeToken(static_cast<size_t>(i))));
    return text;
  }

  std::unique_ptr<gguf::GgufFile> header_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<FakeBackend> backend_;
  HttpServerOptions options_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

void ExpectError(const httplib::Result& res, int status, std::string_view code = "") {
  ASSERT_TRUE(res) << "no response";
  EXPECT_EQ(res->status, status) << res->body;
  const json body = json::parse(res->body, nullptr, false);
  ASSERT_TRUE(body.is_object() && body.contains("error")) << res->body;
  EXPECT_TRUE(body["error"]["message"].is_string());
  EXPECT_TRUE(body["error"]["type"].is_string());
  if (!code.empty()) {
    EXPECT_EQ(body["error"]["code"], std::string(code));
  }
}

TEST_F(HttpServerTest, HealthFollowsTheBackend) {
  StartServer();
  backend_->serving_flag = false;
  auto res = client_->Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  backend_->serving_flag = true;
  res = client_->Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(HttpServerTest, ModelsListsTheServedModel) {
  StartServer();
  auto res = client_->Get("/v1/models");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  const json body = json::parse(res->body);
  EXPECT_EQ(body["object"], "list");
  ASSERT_EQ(body["data"].size(), 1u);
  EXPECT_EQ(body["data"][0]["id"], "stories");
  ExpectError(Post("/v1/completions", {{"model", "gpt-4"}, {"prompt", "x"}}), 404,
              "model_not_found");
  ExpectError(client_->Get("/v1/nothing"), 404);
}

TEST_F(HttpServerTest, CompletionGoesThroughValidation) {
  StartServer();
  auto res = Post("/v1/completions", {{"model", "stories"},
                                      {"prompt", "Once upon"},
                                      {"max_tokens", 5},
                                      {"seed", 9},
                                      {"temperature", 0}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  EXPECT_EQ(body["choices"][0]["text"], FakeText(5));
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  const std::vector<TokenId> prompt = tokenizer_->Encode("Once upon", true);
  EXPECT_EQ(body["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(body["usage"]["completion_tokens"], 5);
  const auto submitted = backend_->submitted();
  ASSERT_EQ(submitted.size(), 1u);
  EXPECT_EQ(submitted[0].prompt, prompt);
  EXPECT_EQ(submitted[0].sampling.seed, 9u);
  EXPECT_EQ(submitted[0].sampling.temperature, 0.0f);
}

TEST_F(HttpServerTest, NChoicesAreSeparateRequestsWithConsecutiveSeeds) {
  StartServer();
  auto res = Post("/v1/completions", {{"prompt", "a"}, {"max_tokens", 3}, {"n", 3}, {"seed", 7}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  ASSERT_EQ(body["choices"].size(), 3u);
  EXPECT_EQ(body["usage"]["completion_tokens"], 9);
  const auto submitted = backend_->submitted();
  ASSERT_EQ(submitted.size(), 3u);
  std::set<uint64_t> seeds;
  std::set<std::string> ids;
  for (const auto& r : submitted) {
    seeds.insert(r.sampling.seed);
    ids.insert(r.request_id);
  }
  EXPECT_EQ(seeds, (std::set<uint64_t>{7, 8, 9}));
  EXPECT_EQ(ids.size(), 3u);
}

TEST_F(HttpServerTest, StreamingCompletionFramesAndUsage) {
  StartServer();
  auto res = Post("/v1/completions", {{"prompt", "a"},
                                      {"max_tokens", 4},
                                      {"stream", true},
                                      {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  const std::vector<std::string> events = Events(res->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  json finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "text_completion");
    text += chunk["choices"][0]["text"].get<std::string>();
    if (!chunk["choices"][0]["finish_reason"].is_null())
      finish = chunk["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, FakeText(4));
  EXPECT_EQ(finish, "length");
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 4);
}

TEST_F(HttpServerTest, ChatNeedsATemplate) {
  StartServer();
  const json chat = {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 2}};
  ExpectError(Post("/v1/chat/completions", chat), 400);
  EXPECT_TRUE(backend_->submitted().empty());
}

TEST_F(HttpServerTest, ChatRendersTheTemplateAndStreamsDeltas) {
  options_.chat_format = ChatFormat::kLlama2;
  StartServer();
  const json chat = {
      {"messages",
       {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi"}}}},
      {"max_tokens", 3},
      {"stream", true},
      {"logprobs", true}};
  auto res = Post("/v1/chat/completions", chat);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const auto submitted = backend_->submitted();
  ASSERT_EQ(submitted.size(), 1u);
  const std::string rendered =
      *RenderChat(ChatFormat::kLlama2, {{"system", "Be brief."}, {"user", "Hi"}});
  EXPECT_EQ(submitted[0].prompt, tokenizer_->Encode(rendered, true, true));
  // "</s>" ends the turn.
  ASSERT_EQ(submitted[0].stop_token_ids.size(), 1u);
  EXPECT_EQ(submitted[0].stop_token_ids[0], tokenizer_->eos_id());
  const std::vector<std::string> events = Events(res->body);
  ASSERT_GE(events.size(), 2u);
  const json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_FLOAT_EQ(first["choices"][0]["logprobs"]["content"][0]["logprob"].get<float>(), -0.5f);
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    text += json::parse(events[i])["choices"][0]["delta"]["content"].get<std::string>();
  }
  EXPECT_EQ(text, FakeText(3));
}

TEST_F(HttpServerTest, ErrorsUseOpenAisShapeAndTheServerKeepsServing) {
  StartServer();
  ExpectError(client_->Post("/v1/completions", "{not json", "application/json"), 400);
  ExpectError(Post("/v1/completions", {{"prompt", "x"}, {"top_p", 0}}), 400);  // chord's validation
  ExpectError(Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 100000}}), 400);
  backend_->refusal = absl::ResourceExhaustedError("the queue is full");
  ExpectError(Post("/v1/completions", {{"prompt", "x"}}), 429);
  backend_->refusal = absl::UnavailableError("draining");
  ExpectError(Post("/v1/chat/completions", {{"prompt", "x"}}), 400);
  ExpectError(Post("/v1/completions", {{"prompt", "x"}}), 503);
  backend_->refusal = absl::OkStatus();
  auto res = Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(HttpServerTest, BearerTokenIsRequiredWhenConfigured) {
  options_.api_key = "sekret";
  StartServer();
  ExpectError(client_->Get("/v1/models"), 401, "invalid_api_key");
  ExpectError(Post("/v1/completions", {{"prompt", "x"}}, {{"Authorization", "Bearer wrong"}}), 401);
  auto res = Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}},
                  {{"Authorization", "Bearer sekret"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = client_->Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_TRUE(backend_->submitted().size() == 1u);
}

TEST_F(HttpServerTest, ClientLeavingMidStreamAbortsItsRequests) {
  backend_->step_delay = std::chrono::milliseconds(20);
  StartServer();
  const json body = {{"prompt", "x"}, {"max_tokens", 200}, {"stream", true}, {"n", 2}};
  int chunks = 0;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
  client_->send(req);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (backend_->aborted().size() < 2 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(backend_->aborted().size(), 2u);
  ASSERT_EQ(backend_->submitted().size(), 2u);
  EXPECT_TRUE(backend_->aborted().contains(backend_->submitted()[0].request_id));
}

// Sends a request on a socket of its own and returns the socket unread.
int PostRaw(int port, const std::string& path, const json& body) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) return -1;
  const std::string text = body.dump();
  const std::string request = absl::StrCat("POST ", path,
                                           " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                           "application/json\r\nContent-Length: ",
                                           text.size(), "\r\n\r\n", text);
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool WaitUntil(const std::function<bool()>& condition) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!condition() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

TEST_F(HttpServerTest, ClientLeavingANonStreamingRequestAbortsItsRequests) {
  backend_->step_delay = std::chrono::milliseconds(20);  // 200 tokens: 4 s if nobody aborts
  options_.chat_format = ChatFormat::kChatMl;
  StartServer();
  const json completion = {{"prompt", "x"}, {"max_tokens", 200}, {"n", 2}};
  const json chat = {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 200}};
  size_t submitted = 0;
  for (const auto& [path, body, n] : {std::tuple{"/v1/completions", completion, 2},
                                      std::tuple{"/v1/chat/completions", chat, 1}}) {
    SCOPED_TRACE(path);
    const auto start = std::chrono::steady_clock::now();
    const int fd = PostRaw(server_->port(), path, body);
    ASSERT_GE(fd, 0);
    submitted += static_cast<size_t>(n);
    ASSERT_TRUE(WaitUntil([&] { return backend_->submitted().size() == submitted; }));
    // Still connected: nothing is aborted.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_TRUE(backend_->aborted().size() + static_cast<size_t>(n) == submitted);
    ::close(fd);
    EXPECT_TRUE(WaitUntil([&] { return backend_->aborted().size() == submitted; }));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
    for (const ValidatedRequest& request : backend_->submitted()) {
      EXPECT_TRUE(backend_->aborted().contains(request.request_id)) << request.request_id;
    }
  }
  // The server goes on serving.
  auto res = Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(HttpServerTest, ResolvesTheChatFormat) {
  auto format = ResolveChatFormat(*header_, "chatml");
  ASSERT_TRUE(format.ok());
  EXPECT_EQ(*format, ChatFormat::kChatMl);
  EXPECT_FALSE(ResolveChatFormat(*header_, "jinja").ok());
  format = ResolveChatFormat(*header_, "");
  ASSERT_TRUE(format.ok());
  if (!header_->GetString("tokenizer.chat_template").ok()) {
    EXPECT_FALSE(format->has_value());
  }
}

TEST_F(HttpServerTest, BadTlsFilesAreRefused) {
  options_.tls.cert_file = "/nonexistent/cert.pem";
  options_.tls.key_file = "/nonexistent/key.pem";
  EXPECT_EQ(HttpServer::Start(options_, *tokenizer_, *backend_).status().code(),
            absl::StatusCode::kInvalidArgument);
  options_.tls.key_file = "";
  EXPECT_EQ(HttpServer::Start(options_, *tokenizer_, *backend_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HttpServerTest, ServesHttpsWithACertificate) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("chord_http_tls_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string cert = (dir / "cert.pem").string(), key = (dir / "key.pem").string();
  const std::string command =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -keyout " + key +
      " -out " + cert + " >/dev/null 2>&1";
  if (std::system(command.c_str()) != 0)
    GTEST_SKIP() << "the openssl command cannot make a test certificate";
  options_.tls.cert_file = cert;
  options_.tls.key_file = key;
  options_.api_key = "sekret";
  auto server = HttpServer::Start(options_, *tokenizer_, *backend_);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE((*server)->tls());
  httplib::SSLClient tls("127.0.0.1", (*server)->port());
  tls.enable_server_certificate_verification(false);
  auto res = tls.Post("/v1/completions", {{"Authorization", "Bearer sekret"}},
                      json({{"prompt", "x"}, {"max_tokens", 2}}).dump(), "application/json");
  ASSERT_TRUE(res) << "no HTTPS response";
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["choices"][0]["text"], FakeText(2));
  // A non-streaming HTTPS client that gives up has its request aborted too.
  backend_->step_delay = std::chrono::milliseconds(20);
  httplib::SSLClient leaving("127.0.0.1", (*server)->port());
  leaving.enable_server_certificate_verification(false);
  leaving.set_read_timeout(0, 300000);
  EXPECT_FALSE(leaving.Post("/v1/completions", {{"Authorization", "Bearer sekret"}},
                            json({{"prompt", "x"}, {"max_tokens", 200}}).dump(), "application/json"));
  EXPECT_TRUE(WaitUntil([&] { return backend_->aborted().size() == 1; }));
  backend_->step_delay = std::chrono::milliseconds(0);
  // Clear text is not answered on the TLS port.
  httplib::Client plain("127.0.0.1", (*server)->port());
  plain.set_read_timeout(2, 0);
  auto clear = plain.Get("/health");
  EXPECT_TRUE(!clear || clear->status != 200);
  server->reset();
  // Mutual TLS: the (self-signed) certificate is also the client CA; a
  // client without a certificate it signed gets no answer.
  options_.tls.client_ca_file = cert;
  server = HttpServer::Start(options_, *tokenizer_, *backend_);
  ASSERT_TRUE(server.ok()) << server.status();
  httplib::SSLClient anonymous("127.0.0.1", (*server)->port());
  anonymous.enable_server_certificate_verification(false);
  anonymous.set_read_timeout(2, 0);
  EXPECT_FALSE(anonymous.Get("/health"));
  httplib::SSLClient known("127.0.0.1", (*server)->port(), cert, key);
  known.enable_server_certificate_verification(false);
  auto health = known.Get("/health");
  ASSERT_TRUE(health) << "no answer with a client certificate";
  EXPECT_EQ(health->status, 200);
  server->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace chord::coordinator::http
