// LoaderClient against small fake loaders that misbehave on purpose: corrupt,
// duplicate, silent. The real service is exercised in loader/weight_service_test.cc.
#include "loader/client/loader_client.h"

#include <xxhash.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "common/wire/wire.h"
#include "gtest/gtest.h"

namespace chord {
namespace {

namespace pb = wire::pb;
using std::chrono::milliseconds;

struct FakeBehaviour {
  bool answer_hello = true;
  std::string role = "loader";
  bool answer_requests = true;
  int corrupt_replies = 0;           // how many replies get one byte flipped; -1: all
  bool duplicate_and_stray = false;  // each reply twice, plus one for an unknown request id
};

// A ROUTER that serves one tensor's bytes as the loader would, with faults.
class FakeLoader {
 public:
  FakeLoader(zmq::context_t& context, std::string tensor_name, std::vector<uint8_t> bytes,
             FakeBehaviour behaviour)
      : socket_(context, zmq::socket_type::router),
        name_(std::move(tensor_name)),
        bytes_(std::move(bytes)),
        behaviour_(std::move(behaviour)) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("tcp://127.0.0.1:*");
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
    thread_ = std::thread([this] { Loop(); });
  }
  ~FakeLoader() {
    stop_ = true;
    thread_.join();
  }
  const std::string& endpoint() const { return endpoint_; }
  int requests() const { return requests_.load(); }

 private:
  void Loop() {
    while (!stop_) {
      zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 1, milliseconds(10));
      if (!(items[0].revents & ZMQ_POLLIN)) continue;
      auto message = wire::Receive(socket_, /*router=*/true);
      ASSERT_TRUE(message.ok() && message->has_value());
      Answer(**message);
    }
  }

  void Answer(const wire::Message& message) {
    pb::Envelope reply;
    if (message.envelope.has_hello()) {
      if (!behaviour_.answer_hello) return;
      *reply.mutable_hello() = wire::MakeHello(behaviour_.role, "fake", "feedbeef");
      ASSERT_TRUE(wire::Send(socket_, reply, {}, message.identity).ok());
      return;
    }
    ASSERT_TRUE(message.envelope.has_tensor_request());
    ++requests_;
    if (!behaviour_.answer_requests) return;
    const pb::TensorRequest& request = message.envelope.tensor_request();
    ASSERT_EQ(request.name(), name_);
    ASSERT_LE(request.offset() + request.length(), bytes_.size());
    std::vector<uint8_t> payload(bytes_.begin() + request.offset(),
                                 bytes_.begin() + request.offset() + request.length());
    pb::TensorChunk* chunk = reply.mutable_tensor_chunk();
    chunk->set_request_id(request.request_id());
    chunk->set_name(request.name());
    chunk->set_offset(request.offset());
    chunk->set_length(request.length());
    chunk->set_xxh3_64(XXH3_64bits(payload.data(), payload.size()));
    if (behaviour_.corrupt_replies != 0) {
      payload[payload.size() / 2] ^= 0x40;  // after the checksum: the client must notice
      if (behaviour_.corrupt_replies > 0) --behaviour_.corrupt_replies;
    }
    ASSERT_TRUE(wire::Send(socket_, reply, payload, message.identity).ok());
    if (behaviour_.duplicate_and_stray) {
      ASSERT_TRUE(wire::Send(socket_, reply, payload, message.identity).ok());
      chunk->set_request_id(request.request_id() + 1000000);
      std::fill(payload.begin(), payload.end(), 0);
      chunk->set_xxh3_64(XXH3_64bits(payload.data(), payload.size()));
      ASSERT_TRUE(wire::Send(socket_, reply, payload, message.identity).ok());
    }
  }

  zmq::socket_t socket_;
  std::string endpoint_;
  const std::string name_;
  const std::vector<uint8_t> bytes_;
  FakeBehaviour behaviour_;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

class LoaderClientTest : public ::testing::Test {
 protected:
  LoaderClientTest() {
    bytes_.resize(10000);
    uint32_t state = 12345;
    for (uint8_t& byte : bytes_) {
      state = state * 1664525u + 1013904223u;
      byte = static_cast<uint8_t>(state >> 24);
    }
    tensor_.name = "blk.0.ffn_up.weight";
    tensor_.n_bytes = bytes_.size();
    options_.node_id = "test";
    options_.chunk_bytes = 1024;  // 10 chunks, the last one short
    options_.max_outstanding = 3;
    options_.timeout = milliseconds(100);
    options_.max_attempts = 3;
  }

  std::unique_ptr<FakeLoader> Fake(FakeBehaviour behaviour) {
    return std::make_unique<FakeLoader>(context_, tensor_.name, bytes_, std::move(behaviour));
  }

  zmq::context_t context_{1};
  std::vector<uint8_t> bytes_;
  gguf::TensorInfo tensor_;
  LoaderClientOptions options_;
};

TEST_F(LoaderClientTest, CorruptedChunkIsDetectedAndFetchedAgain) {
  auto fake = Fake({.corrupt_replies = 1});
  auto client = LoaderClient::Connect(context_, fake->endpoint(), "", options_);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> out(bytes_.size());
  ASSERT_TRUE((*client)->FetchTensor(tensor_, out.data()).ok());
  EXPECT_EQ(out, bytes_);
  EXPECT_EQ(fake->requests(), 11);  // ten chunks, one of them twice
}

TEST_F(LoaderClientTest, PersistentCorruptionIsDataLoss) {
  auto fake = Fake({.corrupt_replies = -1});
  auto client = LoaderClient::Connect(context_, fake->endpoint(), "", options_);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> out(bytes_.size());
  EXPECT_EQ((*client)->FetchTensor(tensor_, out.data()).code(), absl::StatusCode::kDataLoss);
}

TEST_F(LoaderClientTest, DuplicateAndStrayRepliesAreIgnored) {
  auto fake = Fake({.duplicate_and_stray = true});
  options_.max_outstanding = 1;
  auto client = LoaderClient::Connect(context_, fake->endpoint(), "", options_);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> out(bytes_.size());
  ASSERT_TRUE((*client)->FetchTensor(tensor_, out.data()).ok());
  EXPECT_EQ(out, bytes_);
  EXPECT_EQ(fake->requests(), 10);
  // Replies of the first call arriving late must not disturb a second one.
  std::vector<uint8_t> again(bytes_.size());
  ASSERT_TRUE((*client)->FetchTensor(tensor_, again.data()).ok());
  EXPECT_EQ(again, bytes_);
}

TEST_F(LoaderClientTest, SilentLoaderIsUnavailable) {
  auto fake = Fake({.answer_hello = false});
  const auto started = std::chrono::steady_clock::now();
  auto client = LoaderClient::Connect(context_, fake->endpoint(), "", options_);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(2));
}

TEST_F(LoaderClientTest, UnansweredRequestsAreUnavailableAfterTheAttempts) {
  auto fake = Fake({.answer_requests = false});
  auto client = LoaderClient::Connect(context_, fake->endpoint(), "", options_);
  ASSERT_TRUE(client.ok()) << client.status();
  gguf::TensorInfo one_chunk = tensor_;
  one_chunk.n_bytes = 500;
  std::vector<uint8_t> out(one_chunk.n_bytes);
  const auto started = std::chrono::steady_clock::now();
  EXPECT_EQ((*client)->FetchTensor(one_chunk, out.data()).code(), absl::StatusCode::kUnavailable);
  const auto took = std::chrono::steady_clock::now() - started;
  EXPECT_GE(took, 3 * options_.timeout);
  EXPECT_LT(took, std::chrono::seconds(3));
  EXPECT_EQ(fake->requests(), options_.max_attempts);
}

TEST_F(LoaderClientTest, RefusesAPeerThatIsNotALoader) {
  auto fake = Fake({.role = "worker"});
  auto client = LoaderClient::Connect(context_, fake->endpoint(), "", options_);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(LoaderClientTest, RefusesAnotherModel) {
  auto fake = Fake({});
  auto client = LoaderClient::Connect(context_, fake->endpoint(), "0123", options_);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(LoaderClientTest, RejectsBadOptions) {
  auto fake = Fake({});
  for (uint64_t chunk : {uint64_t{0}, kMaxTensorChunkBytes + 1}) {
    LoaderClientOptions options = options_;
    options.chunk_bytes = chunk;
    EXPECT_EQ(LoaderClient::Connect(context_, fake->endpoint(), "", options).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  LoaderClientOptions options = options_;
  options.max_outstanding = 0;
  EXPECT_EQ(LoaderClient::Connect(context_, fake->endpoint(), "", options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chord
