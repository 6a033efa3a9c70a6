// Malformed and hostile gRPC requests against a real coordinator: bytes that
// are not a protobuf (sent with grpc::GenericStub), truncated messages, wrong
// wire types, invalid UTF-8, enormous repeated fields and strings, absurd
// sampling values, duplicate request ids. Each must get a status that says
// what is wrong, within a bounded time, and the server must keep serving:
// a normal request afterwards gets exactly the in-process tokens.
#include <chrono>
#include <cmath>
#include <atomic>
#include <future>
#include <random>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_helpers.h"

namespace chord::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using Code = grpc::StatusCode;

constexpr int64_t kCtxSize = 256;
constexpr int kMaxTokens = 40;
constexpr uint32_t kVocab = 512;  // stories260K
// Every call below must be answered well within this.
constexpr milliseconds kCallDeadline{20000};

const std::string kGenerate = "/chord.v1.Inference/Generate";
const std::string kTokenize = "/chord.v1.Inference/Tokenize";
const std::string kDetokenize = "/chord.v1.Inference/Detokenize";
const std::string kAbort = "/chord.v1.Inference/Abort";

// Protobuf wire encoding by hand, to send what a generated client would refuse to.
std::string Varint(uint64_t value) {
  std::string out;
  do {
    uint8_t byte = value & 0x7f;
    value >>= 7;
    if (value != 0) byte |= 0x80;
    out.push_back(static_cast<char>(byte));
  } while (value != 0);
  return out;
}
std::string VarintField(int field, uint64_t value) { return Varint(uint64_t(field) << 3) + Varint(value); }
std::string BytesField(int field, const std::string& bytes) {
  return Varint((uint64_t(field) << 3) | 2) + Varint(bytes.size()) + bytes;
}

class MalformedGrpcTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<nlohmann::json> local = RunChordJson(
        {"generate", "--json", "--model", CHORD_DEFAULT_MODEL, "--prompt", "Once upon a time",
         "--temperature", "0", "--ignore-eos", "--max-tokens", std::to_string(kMaxTokens),
         "--ctx-size", std::to_string(kCtxSize), "--threads", "1"});
    ASSERT_TRUE(local.ok()) << local.status();
    expected_ = new std::vector<int32_t>((*local)["token_ids"].get<std::vector<int32_t>>());
    auto cluster = StartCluster(CHORD_DEFAULT_MODEL, 2, 4, kCtxSize);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
    delete expected_;
    expected_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    channel_ = grpc::CreateChannel(cluster_->grpc_address(), grpc::InsecureChannelCredentials());
    stub_ = v1::Inference::NewStub(channel_);
  }

  // After each case: every process runs and a normal request streams the in-process tokens.
  void TearDown() override {
    if (cluster_ == nullptr) return;
    for (size_t i = 0; i < cluster_->size(); ++i) {
      ASSERT_FALSE(cluster_->child(i).Poll().has_value())
          << cluster_->child(i).name() << " exited:\n" << cluster_->child(i).Output();
    }
    const StreamResult normal = Generate(*stub_, GreedyRequest("Once upon a time", kMaxTokens),
                                         milliseconds(60000));
    ASSERT_TRUE(normal.status.ok()) << normal.status.error_message();
    EXPECT_EQ(normal.token_ids, *expected_);
    EXPECT_TRUE(WaitUntilIdle(*stub_, milliseconds(10000)));
  }

  // One raw call: `bytes` as the request message. A server-streaming method
  // answered with more than one message reads as an error here, so this is
  // for requests that must be refused.
  grpc::Status RawCall(const std::string& method, const std::string& bytes) {
    grpc::GenericStub generic(channel_);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    std::promise<grpc::Status> done;
    generic.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                      [&](grpc::Status status) { done.set_value(std::move(status)); });
    return done.get_future().get();  // bounded by the call's deadline
  }

  StreamResult Call(const v1::GenerateRequest& request) {
    const Clock::time_point start = Clock::now();
    StreamResult result = Generate(*stub_, request, kCallDeadline);
    EXPECT_LT(Clock::now() - start, kCallDeadline);
    return result;
  }

  static serve::LocalCluster* cluster_;
  static std::vector<int32_t>* expected_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

serve::LocalCluster* MalformedGrpcTest::cluster_ = nullptr;
std::vector<int32_t>* MalformedGrpcTest::expected_ = nullptr;

// The request never reaches chord's code when gRPC cannot parse it; gRPC's
// own answer for that is INTERNAL ("failed to parse"): what matters is that
// it is an error, and that the server survives.
void ExpectRefused(const grpc::Status& status, std::set<Code> codes, const std::string& what) {
  EXPECT_TRUE(codes.contains(status.error_code()))
      << what << ": got " << status.error_code() << " " << status.error_message();
}

TEST_F(MalformedGrpcTest, BytesThatAreNotAProtobuf) {
  std::mt19937_64 rng(7);
  for (const std::string& method : {kGenerate, kTokenize, kDetokenize, kAbort}) {
    for (int i = 0; i < 20; ++i) {
      std::string bytes(1 + rng() % 4096, '\0');
      for (char& c : bytes) c = static_cast<char>(rng());
      const grpc::Status status = RawCall(method, bytes);
      // Random bytes sometimes parse (as unknown fields): then the request is empty.
      if (status.ok()) continue;
      ExpectRefused(status, {Code::INTERNAL, Code::INVALID_ARGUMENT, Code::OUT_OF_RANGE}, method);
    }
  }
  // A field header that promises more bytes than follow; a varint that never ends.
  ExpectRefused(RawCall(kGenerate, "\x0a\xff\xff\x03" "abc"), {Code::INTERNAL}, "truncated prompt");
  ExpectRefused(RawCall(kGenerate, std::string(20, '\xff')), {Code::INTERNAL}, "endless varint");
  // An empty message is a valid, empty request: no input.
  ExpectRefused(RawCall(kGenerate, ""), {Code::INVALID_ARGUMENT}, "empty request");
}

TEST_F(MalformedGrpcTest, TruncatedProtobufs) {
  v1::GenerateRequest request = GreedyRequest("Once upon a time there was", 20);
  request.add_stop("the end");
  (*request.mutable_sampling()->mutable_logit_bias())[3] = 1.5f;
  const std::string bytes = request.SerializeAsString();
  int unparsable = 0;
  for (size_t cut = 1; cut < bytes.size(); ++cut) {
    const std::string prefix = bytes.substr(0, cut);
    v1::GenerateRequest parsed;
    if (!parsed.ParseFromString(prefix)) {
      // Cut inside a field: gRPC cannot parse it either.
      ++unparsable;
      ExpectRefused(RawCall(kGenerate, prefix), {Code::INTERNAL}, "cut at " + std::to_string(cut));
      continue;
    }
    // Cut between fields: a shorter valid request (the same bytes). It is
    // refused, or served: a stream, which a unary raw call cannot read.
    const StreamResult result = Call(parsed);
    if (!result.status.ok()) {
      ExpectRefused(result.status, {Code::INVALID_ARGUMENT}, "cut at " + std::to_string(cut));
    }
  }
  EXPECT_GT(unparsable, 0);
}

TEST_F(MalformedGrpcTest, WrongWireTypes) {
  // prompt (field 1) as a varint, max_tokens (field 4) as bytes, sampling
  // (field 5) as a varint: a parser keeps them as unknown fields, so the
  // request has no input.
  ExpectRefused(RawCall(kGenerate, VarintField(1, 5) + BytesField(4, "abc") + VarintField(5, 1)),
                {Code::INVALID_ARGUMENT, Code::INTERNAL}, "wrong wire types");
  // A prompt whose max_tokens is -1 as a 10-byte varint (read as 2^32 - 1).
  ExpectRefused(RawCall(kGenerate, BytesField(1, "Once") + VarintField(4, ~uint64_t{0})),
                {Code::INVALID_ARGUMENT}, "max_tokens -1");
  // sampling as a message whose temperature (field 1, a float) is a varint.
  ExpectRefused(RawCall(kGenerate, BytesField(1, "Once") + BytesField(5, VarintField(1, 3)) +
                                       VarintField(4, 0)),
                {Code::INVALID_ARGUMENT}, "float as varint");
  // Packed ids whose last varint never ends.
  ExpectRefused(RawCall(kDetokenize, BytesField(1, "abc\xff")), {Code::INTERNAL}, "Detokenize packed ids");
  // Packed ids that parse, outside the vocabulary.
  ExpectRefused(RawCall(kDetokenize, BytesField(1, Varint(kVocab) + Varint(~uint32_t{0}))),
                {Code::INVALID_ARGUMENT}, "Detokenize ids out of range");
}

TEST_F(MalformedGrpcTest, InvalidUtf8) {
  const std::string bad = "Once \xff\xfe upon \xc3";
  ExpectRefused(RawCall(kGenerate, BytesField(1, bad) + VarintField(4, 5)),
                {Code::INTERNAL, Code::INVALID_ARGUMENT}, "prompt");
  ExpectRefused(RawCall(kGenerate, BytesField(1, "Once") + VarintField(4, 5) + BytesField(6, bad)),
                {Code::INTERNAL, Code::INVALID_ARGUMENT}, "stop string");
  ExpectRefused(RawCall(kTokenize, BytesField(1, bad)), {Code::INTERNAL, Code::INVALID_ARGUMENT},
                "Tokenize text");
  ExpectRefused(RawCall(kAbort, BytesField(1, bad)), {Code::INTERNAL, Code::INVALID_ARGUMENT},
                "Abort id");
}

TEST_F(MalformedGrpcTest, EnormousFields) {
  v1::GenerateRequest ids = GreedyRequest("", 5);
  ids.clear_prompt();
  for (int i = 0; i < 1000000; ++i) ids.mutable_prompt_token_ids()->add_ids(1);
  EXPECT_EQ(Call(ids).status.error_code(), Code::OUT_OF_RANGE);

  v1::GenerateRequest big_ids = GreedyRequest("", 5);
  big_ids.clear_prompt();
  for (uint32_t id : {1u, kVocab, 0xFFFFFFFFu}) big_ids.mutable_prompt_token_ids()->add_ids(id);
  EXPECT_EQ(Call(big_ids).status.error_code(), Code::INVALID_ARGUMENT);

  // Over gRPC's default 4 MiB message limit.
  v1::GenerateRequest too_big = GreedyRequest("", 5);
  too_big.clear_prompt();
  for (int i = 0; i < 3000000; ++i) too_big.mutable_prompt_token_ids()->add_ids(300);
  EXPECT_EQ(Call(too_big).status.error_code(), Code::RESOURCE_EXHAUSTED);

  // A 3 MiB prompt: refused once tokenized (the context holds 256 positions),
  // never run. Tokenizing it takes seconds under the sanitizers on a loaded
  // 2-core machine: the bound catches a hang, not a slow tokenizer.
  const Clock::time_point start = Clock::now();
  std::string text;
  while (text.size() < (3u << 20)) text += "Once upon a time there was a little dog. ";
  const StreamResult huge = Call(GreedyRequest(text, 5));
  EXPECT_EQ(huge.status.error_code(), Code::OUT_OF_RANGE) << huge.status.error_message();
  EXPECT_LT(Clock::now() - start, milliseconds(30000));

  v1::GenerateRequest stops = GreedyRequest("Once", 5);
  for (int i = 0; i < 5000; ++i) stops.add_stop("stop " + std::to_string(i));
  EXPECT_EQ(Call(stops).status.error_code(), Code::INVALID_ARGUMENT);
  v1::GenerateRequest long_stop = GreedyRequest("Once", 5);
  long_stop.add_stop(std::string(1 << 20, 's'));
  EXPECT_EQ(Call(long_stop).status.error_code(), Code::INVALID_ARGUMENT);

  v1::GenerateRequest long_id = GreedyRequest("Once", 5);
  long_id.set_request_id(std::string(1 << 20, 'r'));
  EXPECT_EQ(Call(long_id).status.error_code(), Code::INVALID_ARGUMENT);

  v1::GenerateRequest chat;
  chat.set_max_tokens(5);
  for (int i = 0; i < 20000; ++i) {
    v1::ChatMessage& m = *chat.mutable_chat()->add_messages();
    m.set_role(i % 2 == 0 ? "user" : "assistant");
    m.set_content("hello there");
  }
  const StreamResult chat_result = Call(chat);
  EXPECT_TRUE(chat_result.status.error_code() == Code::OUT_OF_RANGE ||
              chat_result.status.error_code() == Code::INVALID_ARGUMENT)
      << chat_result.status.error_code() << " " << chat_result.status.error_message();

  // Tokenize and Detokenize of large inputs: answered, in bounded time.
  grpc::ClientContext tokenize_context;
  tokenize_context.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  v1::TokenizeRequest tokenize;
  tokenize.set_text(text);
  v1::TokenizeResponse tokens;
  const grpc::Status tokenized = stub_->Tokenize(&tokenize_context, tokenize, &tokens);
  EXPECT_TRUE(tokenized.ok() || tokenized.error_code() == Code::INVALID_ARGUMENT ||
              tokenized.error_code() == Code::OUT_OF_RANGE)
      << tokenized.error_code() << " " << tokenized.error_message();

  grpc::ClientContext detokenize_context;
  detokenize_context.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  v1::DetokenizeRequest detokenize;
  for (int i = 0; i < 1000000; ++i) detokenize.add_token_ids(static_cast<uint32_t>(i % kVocab));
  v1::DetokenizeResponse text_out;
  const grpc::Status detokenized = stub_->Detokenize(&detokenize_context, detokenize, &text_out);
  EXPECT_TRUE(detokenized.ok() || detokenized.error_code() == Code::INVALID_ARGUMENT ||
              detokenized.error_code() == Code::OUT_OF_RANGE)
      << detokenized.error_code() << " " << detokenized.error_message();

  grpc::ClientContext bad_detokenize_context;
  bad_detokenize_context.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  v1::DetokenizeRequest bad_detokenize;
  bad_detokenize.add_token_ids(kVocab);
  EXPECT_EQ(stub_->Detokenize(&bad_detokenize_context, bad_detokenize, &text_out).error_code(),
            Code::INVALID_ARGUMENT);
}

TEST_F(MalformedGrpcTest, AbsurdSamplingValues) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  auto with = [&](auto set) {
    v1::GenerateRequest request = GreedyRequest("Once", 5);
    set(*request.mutable_sampling());
    return request;
  };
  using S = v1::SamplingParams;
  const std::vector<std::pair<std::string, v1::GenerateRequest>> cases = {
      {"temperature NaN", with([&](S& s) { s.set_temperature(nan); })},
      {"temperature inf", with([&](S& s) { s.set_temperature(inf); })},
      {"temperature -1", with([&](S& s) { s.set_temperature(-1); })},
      {"top_p NaN", with([&](S& s) { s.set_top_p(nan); })},
      {"top_p 2", with([&](S& s) { s.set_top_p(2); })},
      {"min_p -inf", with([&](S& s) { s.set_min_p(-inf); })},
      {"repetition_penalty 0", with([&](S& s) { s.set_repetition_penalty(0); })},
      {"repetition_penalty inf", with([&](S& s) { s.set_repetition_penalty(inf); })},
      {"presence_penalty NaN", with([&](S& s) { s.set_presence_penalty(nan); })},
      {"frequency_penalty -inf", with([&](S& s) { s.set_frequency_penalty(-inf); })},
      {"logit_bias id = vocab", with([&](S& s) { (*s.mutable_logit_bias())[kVocab] = 1; })},
      {"logit_bias id max", with([&](S& s) { (*s.mutable_logit_bias())[0xFFFFFFFFu] = 1; })},
      {"logit_bias NaN", with([&](S& s) { (*s.mutable_logit_bias())[3] = nan; })},
      {"logit_bias +inf", with([&](S& s) { (*s.mutable_logit_bias())[3] = inf; })},
  };
  for (const auto& [name, request] : cases) {
    const StreamResult result = Call(request);
    EXPECT_EQ(result.status.error_code(), Code::INVALID_ARGUMENT)
        << name << ": " << result.status.error_message();
  }
  v1::GenerateRequest max_tokens = GreedyRequest("Once", 0);
  EXPECT_EQ(Call(max_tokens).status.error_code(), Code::INVALID_ARGUMENT);
  max_tokens.set_max_tokens(0xFFFFFFFFu);
  EXPECT_EQ(Call(max_tokens).status.error_code(), Code::INVALID_ARGUMENT);
  v1::GenerateRequest logprobs = GreedyRequest("Once", 5);
  logprobs.set_logprobs(0xFFFFFFFFu);
  EXPECT_EQ(Call(logprobs).status.error_code(), Code::INVALID_ARGUMENT);
  v1::GenerateRequest stop_ids = GreedyRequest("Once", 5);
  stop_ids.add_stop_token_ids(kVocab);
  EXPECT_EQ(Call(stop_ids).status.error_code(), Code::INVALID_ARGUMENT);

  // Every token banned (-inf is a legal bias): no token can be sampled. The
  // request may fail, but it must end, alone: a request batched with it keeps
  // its tokens.
  v1::GenerateRequest banned = GreedyRequest("Once", 5);
  banned.mutable_sampling()->set_temperature(0.8f);
  banned.mutable_sampling()->set_seed(1);
  for (uint32_t id = 0; id < kVocab; ++id) (*banned.mutable_sampling()->mutable_logit_bias())[id] = -inf;
  StreamResult neighbour;
  std::thread other([&] { neighbour = Generate(*stub_, GreedyRequest("Once upon a time", kMaxTokens)); });
  const StreamResult banned_result = Call(banned);
  other.join();
  EXPECT_TRUE(banned_result.status.ok() || banned_result.status.error_code() == Code::INVALID_ARGUMENT)
      << banned_result.status.error_code() << " " << banned_result.status.error_message();
  ASSERT_TRUE(neighbour.status.ok()) << neighbour.status.error_message();
  EXPECT_EQ(neighbour.token_ids, *expected_);
}

TEST_F(MalformedGrpcTest, DuplicateRequestIdAndUnknownAborts) {
  v1::GenerateRequest first = GreedyRequest("Once upon a time", kMaxTokens);
  first.set_request_id("same-id");
  std::atomic<bool> started{false};
  StreamResult first_result;
  std::thread runner([&] {
    first_result = Generate(*stub_, first, milliseconds(60000), [&](size_t) { started = true; });
  });
  const Clock::time_point until = Clock::now() + milliseconds(20000);
  while (!started.load() && Clock::now() < until) std::this_thread::sleep_for(milliseconds(1));
  ASSERT_TRUE(started.load());
  const StreamResult duplicate = Call(first);
  runner.join();
  // The duplicate is refused unless the first had already ended by then.
  if (!duplicate.status.ok()) {
    EXPECT_EQ(duplicate.status.error_code(), Code::ALREADY_EXISTS);
  }
  ASSERT_TRUE(first_result.status.ok()) << first_result.status.error_message();
  EXPECT_EQ(first_result.token_ids, *expected_);

  for (const std::string& id : {std::string("no-such-request"), std::string(), std::string(1 << 20, 'a')}) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
    v1::AbortRequest abort;
    abort.set_request_id(id);
    v1::AbortResponse response;
    const grpc::Status status = stub_->Abort(&context, abort, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_FALSE(response.found());
  }
}

}  // namespace
}  // namespace chord::testing
