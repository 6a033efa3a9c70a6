// chord.v1.Inference and grpc.health.v1 through an in-process channel, with a
// fake worker serving the plan over real ZeroMQ sockets.
#include <grpcpp/generic/generic_stub.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "coordinator/fake_worker.h"
#include "coordinator/grpc_status.h"
#include "coordinator/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord::coordinator {
namespace {

using testing::FakeToken;
using testing::FakeWorker;
using testing::FakeWorkerOptions;

bool WaitFor(const std::function<bool()>& condition) {
  const auto until = Clock::now() + std::chrono::seconds(5);
  while (Clock::now() < until && !condition()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return condition();
}

class ApiServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = testing::LoadTestModel();
    if (!model.ok()) GTEST_SKIP() << "no test model: " << model.status();
    model_ = *std::move(model);
    StartServer(DefaultOptions());
    channel_ = server_->grpc_server().InProcessChannel(grpc::ChannelArguments());
    stub_ = chord::v1::Inference::NewStub(channel_);
  }
  static ServerOptions DefaultOptions() {
    ServerOptions options;
    options.grpc_port = 0;
    options.scheduler.pool.kv_slots = 2;
    options.scheduler.pool.n_ctx = 64;
    options.scheduler.pool.worker_timeout = std::chrono::milliseconds(400);
    options.scheduler.pool.heartbeat_interval = std::chrono::milliseconds(50);
    options.limits.n_ctx = 64;
    options.limits.max_tokens_limit = 64;
    return options;
  }
  void StartServer(const ServerOptions& options) {
    auto server = CoordinatorServer::Start(context_, options, *model_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  void TearDown() override {
    server_.reset();
    worker_.reset();
  }
  void StartWorker(FakeWorkerOptions options = {}) {
    worker_ = std::make_unique<FakeWorker>(context_, server_->control_endpoint(), options);
    ASSERT_TRUE(WaitFor([&] { return server_->scheduler().serving(); }));
  }

  // grpc.health.v1.Health/Check for the whole server: 1 SERVING, 2 NOT_SERVING.
  int Health() {
    grpc::GenericStub stub(channel_);
    grpc::ClientContext context;
    grpc::Slice empty(std::string{});  // an empty HealthCheckRequest: every field default
    grpc::ByteBuffer request(&empty, 1), response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                   [&](grpc::Status status) { done.set_value(status); });
    if (!done.get_future().get().ok()) return -1;
    std::vector<grpc::Slice> slices;
    (void)response.Dump(&slices);
    std::string bytes;
    for (const auto& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
  }

  struct Result {
    grpc::Status status;
    std::vector<uint32_t> tokens;
    std::string text;
    chord::v1::FinalInfo final;
    std::vector<chord::v1::GenerateResponse> messages;
  };
  Result Generate(const chord::v1::GenerateRequest& request,
                  std::chrono::milliseconds deadline = std::chrono::seconds(10), const std::string& api_key = "") {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + deadline);
    if (!api_key.empty()) context.AddMetadata("authorization", "Bearer " + api_key);
    auto reader = stub_->Generate(&context, request);
    Result result;
    chord::v1::GenerateResponse message;
    while (reader->Read(&message)) {
      result.messages.push_back(message);
      for (uint32_t t : message.token_ids()) result.tokens.push_back(t);
      result.text += message.text();
      if (message.has_final()) result.final = message.final();
    }
    result.status = reader->Finish();
    return result;
  }

  zmq::context_t context_{1};
  std::unique_ptr<ModelContext> model_;
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<FakeWorker> worker_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<chord::v1::Inference::Stub> stub_;
};

TEST_F(ApiServiceTest, HealthIsServingOnlyWhileThePlanIsReady) {
  EXPECT_EQ(Health(), 2);
  chord::v1::GenerateRequest request;
  request.set_prompt("Once");
  EXPECT_EQ(Generate(request).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  StartWorker();
  EXPECT_TRUE(WaitFor([&] { return Health() == 1; }));
  worker_->GoSilent();
  EXPECT_TRUE(WaitFor([&] { return Health() == 2; }));
}

TEST_F(ApiServiceTest, MetadataCalls) {
  StartWorker();
  grpc::ClientContext c1;
  chord::v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&c1, {}, &info).ok());
  EXPECT_EQ(info.sha256(), "test-sha");
  EXPECT_EQ(info.vocab_size(), static_cast<uint32_t>(model_->tokenizer->vocab_size()));
  EXPECT_EQ(info.n_layer(), static_cast<uint32_t>(model_->config.n_layer));
  EXPECT_EQ(info.max_context(), 64u);
  EXPECT_EQ(info.bos_id(), model_->tokenizer->bos_id());
  EXPECT_EQ(info.tokenizer(), "llama");

  grpc::ClientContext c2;
  chord::v1::TokenizeRequest tokenize;
  tokenize.set_text("Once upon a time");
  tokenize.set_add_special(true);
  chord::v1::TokenizeResponse tokens;
  ASSERT_TRUE(stub_->Tokenize(&c2, tokenize, &tokens).ok());
  ASSERT_GT(tokens.token_ids_size(), 2);
  EXPECT_EQ(tokens.token_ids(0), static_cast<uint32_t>(model_->tokenizer->bos_id()));

  grpc::ClientContext c3;
  chord::v1::DetokenizeRequest detokenize;
  for (int i = 1; i < tokens.token_ids_size(); ++i) detokenize.add_token_ids(tokens.token_ids(i));
  chord::v1::DetokenizeResponse text;
  ASSERT_TRUE(stub_->Detokenize(&c3, detokenize, &text).ok());
  EXPECT_EQ(text.text(), "Once upon a time");

  grpc::ClientContext c4;
  detokenize.add_token_ids(1u << 30);
  EXPECT_EQ(stub_->Detokenize(&c4, detokenize, &text).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  grpc::ClientContext c5;
  chord::v1::ServerInfo server;
  ASSERT_TRUE(stub_->GetServerInfo(&c5, {}, &server).ok());
  EXPECT_EQ(server.plan_version(), 1u);
  EXPECT_EQ(server.kv_slots(), 2u);
  ASSERT_EQ(server.workers_size(), 1);
  EXPECT_EQ(server.workers(0).worker_id(), "w0");
  EXPECT_TRUE(server.workers(0).alive());
  EXPECT_EQ(server.workers(0).end_layer(), static_cast<uint32_t>(model_->config.n_layer));
}

TEST_F(ApiServiceTest, GenerateStreamsAndBadRequestsDoNotStopTheServer) {
  StartWorker();
  chord::v1::GenerateRequest bad;
  bad.mutable_sampling()->set_top_p(2);
  bad.set_prompt("Once");
  EXPECT_EQ(Generate(bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  chord::v1::GenerateRequest long_prompt;
  for (int i = 0; i < 70; ++i) long_prompt.mutable_prompt_token_ids()->add_ids(300);
  EXPECT_EQ(Generate(long_prompt).status.error_code(), grpc::StatusCode::OUT_OF_RANGE);

  chord::v1::GenerateRequest request;
  request.mutable_prompt_token_ids()->add_ids(1);
  request.mutable_prompt_token_ids()->add_ids(300);
  request.set_max_tokens(4);
  request.set_logprobs(2);
  request.set_request_id("mine");
  Result result = Generate(request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.tokens, (std::vector<uint32_t>{FakeToken(2), FakeToken(3), FakeToken(4), FakeToken(5)}));
  for (const auto& message : result.messages) {
    EXPECT_EQ(message.request_id(), "mine");
    EXPECT_EQ(message.logprobs_size(), message.token_ids_size());
    for (const auto& top : message.logprobs()) EXPECT_EQ(top.entries_size(), 2);
  }
  EXPECT_EQ(result.final.finish_reason(), chord::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(result.final.usage().completion_tokens(), 4u);
  EXPECT_NE(result.final.seed(), 0u);  // chosen by the server, and reported
  std::vector<TokenId> ids(result.tokens.begin(), result.tokens.end());
  EXPECT_EQ(result.text, Detokenize(*model_->tokenizer, ids));
}

// GenerateRequest.chat renders the messages with the server's chat template,
// as /v1/chat/completions does; a model without one refuses chat input.
TEST_F(ApiServiceTest, ChatInputIsRenderedWithTheChatTemplate) {
  StartWorker();
  chord::v1::GenerateRequest request;
  chord::v1::ChatMessage* system = request.mutable_chat()->add_messages();
  system->set_role("system");
  system->set_content("You tell short stories.");
  chord::v1::ChatMessage* user = request.mutable_chat()->add_messages();
  user->set_role("user");
  user->set_content("A story about a cat");
  request.set_max_tokens(3);
  Result refused = Generate(request);  // stories260K carries no chat template
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(refused.status.error_message(), ::testing::HasSubstr("chat template"));

  worker_.reset();
  server_.reset();
  ServerOptions options = DefaultOptions();
  options.chat_template = "chatml";
  options.scheduler.pool.n_ctx = 128;  // the rendered turns spell their markers in this small vocabulary
  options.limits.n_ctx = 128;
  StartServer(options);
  channel_ = server_->grpc_server().InProcessChannel(grpc::ChannelArguments());
  stub_ = chord::v1::Inference::NewStub(channel_);
  StartWorker();
  Result chat = Generate(request);
  ASSERT_TRUE(chat.status.ok()) << chat.status.error_message();
  auto rendered = RenderChat(ChatFormat::kChatMl, {{"system", "You tell short stories."},
                                                   {"user", "A story about a cat"}});
  ASSERT_TRUE(rendered.ok());
  const size_t expected = model_->tokenizer->Encode(*rendered, true, true).size();
  EXPECT_EQ(chat.final.usage().prompt_tokens(), expected);
  EXPECT_EQ(chat.tokens.size(), 3u);

  request.mutable_chat()->mutable_messages(0)->set_role("narrator");  // no such role
  EXPECT_EQ(Generate(request).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ApiServiceTest, AbortEndsARunningGeneration) {
  FakeWorkerOptions slow;
  slow.step_delay = std::chrono::milliseconds(20);
  StartWorker(slow);
  chord::v1::GenerateRequest request;
  request.set_prompt("Once");
  request.set_request_id("long");
  request.set_max_tokens(50);
  auto running = std::async(std::launch::async, [&] { return Generate(request); });
  ASSERT_TRUE(WaitFor([&] { return worker_->steps_answered() >= 2; }));
  grpc::ClientContext context;
  chord::v1::AbortRequest abort;
  abort.set_request_id("long");
  chord::v1::AbortResponse response;
  ASSERT_TRUE(stub_->Abort(&context, abort, &response).ok());
  EXPECT_TRUE(response.found());
  Result result = running.get();
  ASSERT_TRUE(result.status.ok());
  EXPECT_EQ(result.final.finish_reason(), chord::v1::FINISH_REASON_ABORT);
  grpc::ClientContext again;
  ASSERT_TRUE(stub_->Abort(&again, abort, &response).ok());
  EXPECT_FALSE(response.found());
}

TEST_F(ApiServiceTest, DeadlineStopsTheRequestAndFreesItsSlot) {
  FakeWorkerOptions slow;
  slow.step_delay = std::chrono::milliseconds(20);
  StartWorker(slow);
  chord::v1::GenerateRequest request;
  request.set_prompt("Once");
  request.set_max_tokens(60);
  Result result = Generate(request, std::chrono::milliseconds(150));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitFor([&] { return worker_->freed_slots().contains(0); }));
  EXPECT_TRUE(WaitFor([&] { return server_->scheduler().ServerInfo().running_requests() == 0; }));
}

TEST(GrpcStatusTest, ConvertsBothWays) {
  const absl::Status status = absl::ResourceExhaustedError("queue full");
  const grpc::Status converted = ToGrpcStatus(status);
  EXPECT_EQ(converted.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(converted.error_message(), "queue full");
  EXPECT_EQ(FromGrpcStatus(converted), status);
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

// The API with a bearer token and TLS, on a real port (in-process channels
// carry no TLS), with certificates made by the openssl command.
class ApiSecurityTest : public ApiServiceTest {
 protected:
  void SetUp() override {
    auto model = testing::LoadTestModel();
    if (!model.ok()) GTEST_SKIP() << "no test model: " << model.status();
    model_ = *std::move(model);
    dir_ = std::filesystem::temp_directory_path() / ("chord_grpc_tls_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    // The server's certificate names 127.0.0.1, which gRPC checks; the
    // client's is self-signed and is its own CA.
    for (const auto& [name, subject] : {std::pair{"server", "/CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"},
                                        std::pair{"client", "/CN=chord-test-client"}}) {
      const std::string command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj " + std::string(subject) +
                                  " -keyout " + Path(name, "key") + " -out " + Path(name, "crt") + " >/dev/null 2>&1";
      if (std::system(command.c_str()) != 0) GTEST_SKIP() << "the openssl command cannot make a test certificate";
    }
  }
  void TearDown() override {
    ApiServiceTest::TearDown();
    std::filesystem::remove_all(dir_);
  }
  std::string Path(const std::string& name, const std::string& ext) const {
    return (dir_ / (name + "." + ext)).string();
  }
  static std::string Read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  // Serves on a free port with the server certificate, the key "sekret" and
  // (when `mutual`) the client certificate as the client CA; one fake worker.
  void StartSecure(bool mutual) {
    ServerOptions options = DefaultOptions();
    options.api_key = "sekret";
    options.tls = {Path("server", "crt"), Path("server", "key"), mutual ? Path("client", "crt") : ""};
    StartServer(options);
    StartWorker();
  }
  // A client over TCP: TLS trusting the server's certificate (with the
  // client's own when `with_cert`), or plaintext.
  void Connect(bool tls, bool with_cert = false) {
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (tls) {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = Read(Path("server", "crt"));
      if (with_cert) {
        ssl.pem_cert_chain = Read(Path("client", "crt"));
        ssl.pem_private_key = Read(Path("client", "key"));
      }
      credentials = grpc::SslCredentials(ssl);
    }
    channel_ = grpc::CreateChannel(server_->grpc_address(), credentials);
    stub_ = chord::v1::Inference::NewStub(channel_);
  }
  static chord::v1::GenerateRequest FourTokens() {
    chord::v1::GenerateRequest request;
    request.mutable_prompt_token_ids()->add_ids(1);
    request.mutable_prompt_token_ids()->add_ids(300);
    request.set_max_tokens(4);
    return request;
  }
  static std::vector<uint32_t> FourFakeTokens() { return {FakeToken(2), FakeToken(3), FakeToken(4), FakeToken(5)}; }

  std::filesystem::path dir_;
};

TEST_F(ApiSecurityTest, TheApiNeedsTheTokenAndHealthDoesNot) {
  StartSecure(/*mutual=*/false);
  Connect(/*tls=*/true);
  const auto deadline = std::chrono::seconds(10);
  Result ok = Generate(FourTokens(), deadline, "sekret");
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.tokens, FourFakeTokens());
  EXPECT_EQ(Generate(FourTokens(), deadline).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Generate(FourTokens(), deadline, "sekreT").status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Generate(FourTokens(), deadline, "sekret-and-more").status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // The unary calls too.
  grpc::ClientContext c1;
  chord::v1::TokenizeResponse tokens;
  EXPECT_EQ(stub_->Tokenize(&c1, {}, &tokens).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext c2;
  chord::v1::ModelInfo info;
  c2.AddMetadata("authorization", "Bearer sekret");
  EXPECT_TRUE(stub_->GetModelInfo(&c2, {}, &info).ok());
  // Health is open: probes carry no token.
  EXPECT_EQ(Health(), 1);
}

TEST_F(ApiSecurityTest, TlsPortRefusesPlaintextClients) {
  StartSecure(/*mutual=*/false);
  Connect(/*tls=*/false);
  Result plain = Generate(FourTokens(), std::chrono::seconds(3), "sekret");
  EXPECT_EQ(plain.status.error_code(), grpc::StatusCode::UNAVAILABLE) << plain.status.error_message();
  EXPECT_TRUE(plain.tokens.empty());
  EXPECT_EQ(Health(), -1);
}

TEST_F(ApiSecurityTest, MutualTlsNeedsAClientCertificate) {
  StartSecure(/*mutual=*/true);
  Connect(/*tls=*/true, /*with_cert=*/false);
  EXPECT_EQ(Generate(FourTokens(), std::chrono::seconds(3), "sekret").status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
  Connect(/*tls=*/true, /*with_cert=*/true);
  Result ok = Generate(FourTokens(), std::chrono::seconds(10), "sekret");
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.tokens, FourFakeTokens());
}

TEST_F(ApiSecurityTest, UnreadableTlsFilesAreRefused) {
  ServerOptions options = DefaultOptions();
  options.tls = {"/nonexistent/server.crt", Path("server", "key"), ""};
  EXPECT_EQ(CoordinatorServer::Start(context_, options, *model_).status().code(), absl::StatusCode::kInvalidArgument);
  options.tls = {Path("server", "crt"), "", ""};
  EXPECT_EQ(CoordinatorServer::Start(context_, options, *model_).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chord::coordinator
