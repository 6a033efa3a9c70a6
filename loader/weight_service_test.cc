#include "loader/weight_service.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "cli/mkmodel/mkmodel.h"
#include "gtest/gtest.h"
#include "loader/client/loader_client.h"

namespace chord::loader {
namespace {

namespace pb = wire::pb;

// sha256sum's answer, computed outside chord.
std::string Sha256Sum(const std::string& path) {
  std::string command = "sha256sum '" + path + "'";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  char line[256] = {};
  const bool read = std::fgets(line, sizeof(line), pipe) != nullptr;
  pclose(pipe);
  if (!read) return "";
  return std::string(line).substr(0, 64);
}

// The service on a loopback port picked by the OS, run on its own thread.
class Served {
 public:
  explicit Served(const std::string& path, WeightServiceOptions options = Loopback())
      : path_(path), options_(std::move(options)) {
    auto file = gguf::GgufFile::Open(path);
    EXPECT_TRUE(file.ok()) << file.status();
    if (!file.ok()) return;
    file_ = *std::move(file);
    auto sha = Sha256Hex(file_->bytes());
    EXPECT_TRUE(sha.ok());
    sha256_ = *sha;
    auto zap = wire::ZapHandler::StartFor(context_, options_.curve);  // CURVE: before the bind
    EXPECT_TRUE(zap.ok()) << zap.status();
    if (zap.ok()) zap_ = *std::move(zap);
    Start();
  }
  ~Served() { Stop(); }

  static WeightServiceOptions Loopback() {
    WeightServiceOptions options;
    options.bind = "tcp://127.0.0.1:0";
    return options;
  }

  // Stops the service and starts a new one on the same endpoint, as a
  // restarted loader process would be: it remembers no peer.
  void Restart() {
    options_.bind = endpoint();
    Stop();
    Start();
  }

  bool ok() const { return service_ != nullptr; }
  bool stopped() const { return stopped_.load(); }  // Run() returned
  const gguf::GgufFile& file() const { return *file_; }
  const std::string& sha256() const { return sha256_; }
  const std::string& endpoint() const { return service_->endpoint(); }
  WeightService& service() { return *service_; }
  zmq::context_t& context() { return context_; }

  absl::StatusOr<std::unique_ptr<LoaderClient>> Connect(LoaderClientOptions options = {}) {
    if (options.node_id.empty()) options.node_id = "test";
    return LoaderClient::Connect(context_, endpoint(), sha256_, options);
  }

 private:
  void Start() {
    const std::string name = std::filesystem::path(path_).filename().string();
    auto service = WeightService::Create(context_, *file_, sha256_, name, options_);
    // ZeroMQ closes a socket in the background: after a Stop() the endpoint
    // may stay bound for a moment (a new process would not have to wait).
    for (int i = 0; i < 100 && !service.ok(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      service = WeightService::Create(context_, *file_, sha256_, name, options_);
    }
    EXPECT_TRUE(service.ok()) << service.status();
    if (!service.ok()) return;
    service_ = *std::move(service);
    stopped_ = false;
    thread_ = std::thread([this] {
      EXPECT_TRUE(service_->Run().ok());
      stopped_ = true;
    });
  }
  void Stop() {
    if (service_) service_->RequestStop();
    if (thread_.joinable()) thread_.join();
    service_.reset();
  }

  std::string path_;
  WeightServiceOptions options_;
  std::unique_ptr<gguf::GgufFile> file_;  // outlives the context (payloads borrow its mapping)
  std::string sha256_;
  zmq::context_t context_{1};
  std::unique_ptr<wire::ZapHandler> zap_;  // null on plaintext
  std::unique_ptr<WeightService> service_;
  std::atomic<bool> stopped_{false};
  std::thread thread_;
};

// Fetches every tensor and compares it with the file's own bytes.
// Received bytes are counted exactly unless replies were lost and asked again.
void ExpectAllTensorsMatch(LoaderClient& client, const gguf::GgufFile& file,
                           bool exact_count = true) {
  const uint64_t before = client.bytes_received();
  uint64_t total = 0;
  for (const gguf::TensorInfo& tensor : file.tensors()) {
    std::vector<uint8_t> bytes(tensor.n_bytes, 0xA5);
    ASSERT_TRUE(client.FetchTensor(tensor, bytes.data()).ok()) << tensor.name;
    ASSERT_EQ(0, std::memcmp(bytes.data(), tensor.data, tensor.n_bytes)) << tensor.name;
    total += tensor.n_bytes;
  }
  if (exact_count) {
    EXPECT_EQ(client.bytes_received() - before, total);
  } else {
    EXPECT_GE(client.bytes_received() - before, total);
  }
}

// A raw DEALER, for messages a LoaderClient would never send.
class RawPeer {
 public:
  RawPeer(zmq::context_t& context, const std::string& endpoint)
      : socket_(context, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(endpoint);
  }
  void SendFrames(const std::vector<std::string>& frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      socket_.send(zmq::buffer(frames[i]),
                   i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  void Send(const pb::Envelope& envelope) { ASSERT_TRUE(wire::Send(socket_, envelope).ok()); }
  void Hello(uint32_t version = wire::kProtocolVersion, const std::string& sha = "") {
    pb::Envelope envelope;
    *envelope.mutable_hello() = wire::MakeHello("worker", "raw", sha);
    envelope.mutable_hello()->set_protocol_version(version);
    Send(envelope);
  }
  // The next message, or nullopt after `wait`.
  std::optional<wire::Message> Receive(std::chrono::milliseconds wait = std::chrono::seconds(5)) {
    zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 1, wait);
    if (!(items[0].revents & ZMQ_POLLIN)) return std::nullopt;
    auto message = wire::Receive(socket_, false);
    EXPECT_TRUE(message.ok()) << message.status();
    if (!message.ok()) return std::nullopt;
    return std::move(*message);
  }
  std::optional<wire::Message> Request(const std::string& name, uint64_t offset, uint64_t length) {
    pb::Envelope envelope;
    pb::TensorRequest* request = envelope.mutable_tensor_request();
    request->set_request_id(77);
    request->set_name(name);
    request->set_offset(offset);
    request->set_length(length);
    Send(envelope);
    return Receive();
  }

 private:
  zmq::socket_t socket_;
};

TEST(WeightServiceTest, ModelInfoMatchesTheFile) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  EXPECT_EQ(served.sha256(), Sha256Sum(CHORD_DEFAULT_MODEL));
  auto client = served.Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  auto info = (*client)->FetchModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->model_sha256, Sha256Sum(CHORD_DEFAULT_MODEL));
  EXPECT_EQ(info->file_name, "stories260K.gguf");
  const gguf::GgufFile& file = served.file();
  EXPECT_EQ(info->header->data_offset(), file.data_offset());
  EXPECT_EQ(info->header->metadata().size(), file.metadata().size());
  ASSERT_EQ(info->header->tensors().size(), file.tensors().size());
  for (size_t i = 0; i < file.tensors().size(); ++i) {
    const gguf::TensorInfo& got = info->header->tensors()[i];
    const gguf::TensorInfo& want = file.tensors()[i];
    EXPECT_EQ(got.name, want.name);
    EXPECT_EQ(got.type, want.type);
    EXPECT_EQ(got.dims, want.dims);
    EXPECT_EQ(got.offset, want.offset);
    EXPECT_EQ(got.n_bytes, want.n_bytes);
    EXPECT_EQ(got.data, nullptr);
  }
  EXPECT_EQ(info->header->GetString("general.architecture").value_or(""), "llama");
}

TEST(WeightServiceTest, FetchesEveryTensorOfTheDefaultModel) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  auto client = served.Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  ExpectAllTensorsMatch(**client, served.file());
  // The service counts a chunk after sending it, so the client can hold the
  // last chunk a moment before the count includes it.
  uint64_t sent = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  do {
    sent = 0;
    for (const auto& [peer, stats] : served.service().Stats()) {
      if (stats.node_id == "test") sent += stats.bytes_sent;
    }
    if (sent == (*client)->bytes_received()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  } while (std::chrono::steady_clock::now() < until);
  EXPECT_EQ(sent, (*client)->bytes_received());
}

TEST(WeightServiceTest, FetchesEveryTensorOfAGeneratedModel) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("loader_test_" + std::to_string(getpid()) + ".gguf"))
                               .string();
  mkmodel::MkmodelOptions options;
  options.seed = 11;
  options.file_type = mkmodel::FileType::kQ4_K_M;
  ASSERT_TRUE(mkmodel::WriteModel(options, path).ok());
  {
    Served served(path);
    ASSERT_TRUE(served.ok());
    EXPECT_EQ(served.sha256(), Sha256Sum(path));
    LoaderClientOptions client_options;
    client_options.chunk_bytes = 64 << 10;
    auto client = served.Connect(client_options);
    ASSERT_TRUE(client.ok()) << client.status();
    ASSERT_TRUE((*client)->FetchModelInfo().ok());
    ExpectAllTensorsMatch(**client, served.file());
  }
  std::filesystem::remove(path);
}

TEST(WeightServiceTest, SmallChunksWithWindowsOfOneAndEight) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  for (int window : {1, 8}) {
    LoaderClientOptions options;
    options.chunk_bytes = 1000;  // not a divisor of any tensor size: short last chunks
    options.max_outstanding = window;
    auto client = served.Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    ExpectAllTensorsMatch(**client, served.file());
  }
}

TEST(WeightServiceTest, UnknownTensorIsNotFound) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  auto client = served.Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  gguf::TensorInfo missing;
  missing.name = "blk.99.attn_q.weight";
  missing.n_bytes = 64;
  std::vector<uint8_t> out(64);
  EXPECT_EQ((*client)->FetchTensor(missing, out.data()).code(), absl::StatusCode::kNotFound);
}

TEST(WeightServiceTest, RangesOutsideTheTensorAreRejected) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  const gguf::TensorInfo& tensor = served.file().tensors().front();
  RawPeer peer(served.context(), served.endpoint());
  peer.Hello();
  ASSERT_TRUE(peer.Receive().has_value());
  const std::vector<std::pair<uint64_t, uint64_t>> bad = {{0, 0},
                                                          {tensor.n_bytes, 1},
                                                          {1, tensor.n_bytes},
                                                          {~uint64_t{0}, 2},
                                                          {0, kMaxTensorChunkBytes + 1}};
  for (const auto& [offset, length] : bad) {
    auto reply = peer.Request(tensor.name, offset, length);
    ASSERT_TRUE(reply.has_value());
    ASSERT_TRUE(reply->envelope.has_tensor_chunk());
    EXPECT_EQ(reply->envelope.tensor_chunk().request_id(), 77u);
    EXPECT_EQ(reply->envelope.tensor_chunk().status().code(),
              static_cast<int>(absl::StatusCode::kInvalidArgument))
        << offset << "+" << length;
    EXPECT_FALSE(reply->has_payload);
  }
  // The last byte alone is inside.
  auto reply = peer.Request(tensor.name, tensor.n_bytes - 1, 1);
  ASSERT_TRUE(reply.has_value() && reply->has_payload);
  EXPECT_EQ(*static_cast<const uint8_t*>(reply->payload.data()), tensor.data[tensor.n_bytes - 1]);

  // Through the client: a tensor claimed larger than the loader's.
  auto client = served.Connect();
  ASSERT_TRUE(client.ok());
  gguf::TensorInfo larger = tensor;
  larger.n_bytes += 1;
  std::vector<uint8_t> out(larger.n_bytes);
  EXPECT_EQ((*client)->FetchTensor(larger, out.data()).code(), absl::StatusCode::kInvalidArgument);
}

TEST(WeightServiceTest, MalformedMessagesAreDroppedAndServiceContinues) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  RawPeer peer(served.context(), served.endpoint());
  peer.SendFrames({"\xff\xff\xff garbage"});
  peer.SendFrames({""});
  peer.SendFrames({"a", "b", "c"});
  pb::Envelope step;
  step.mutable_step()->set_step_id(3);
  peer.Send(step);  // a body the loader does not serve
  {
    pb::Envelope hello;
    *hello.mutable_hello() = wire::MakeHello("worker", "raw", "");
    std::string bytes;
    hello.SerializeToString(&bytes);
    peer.SendFrames({bytes, "unexpected payload"});
  }
  EXPECT_FALSE(peer.Receive(std::chrono::milliseconds(200)).has_value());

  // The same peer still gets served once it says Hello properly.
  peer.Hello();
  auto hello = peer.Receive();
  ASSERT_TRUE(hello.has_value() && hello->envelope.has_hello());
  EXPECT_FALSE(hello->envelope.hello().has_status());
  const gguf::TensorInfo& tensor = served.file().tensors().back();
  auto chunk = peer.Request(tensor.name, 0, tensor.n_bytes);
  ASSERT_TRUE(chunk.has_value() && chunk->has_payload);
  EXPECT_EQ(0, std::memcmp(chunk->payload.data(), tensor.data, tensor.n_bytes));

  uint64_t dropped = 0;
  for (const auto& [name, stats] : served.service().Stats()) dropped += stats.dropped;
  EXPECT_EQ(dropped, 5u);  // the empty frame parses as an envelope with no body

  auto client = served.Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->FetchModelInfo().ok());
}

TEST(WeightServiceTest, RequestsBeforeHelloAreRefused) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  RawPeer peer(served.context(), served.endpoint());
  auto reply = peer.Request(served.file().tensors().front().name, 0, 16);
  ASSERT_TRUE(reply.has_value() && reply->envelope.has_tensor_chunk());
  EXPECT_EQ(reply->envelope.tensor_chunk().status().code(),
            static_cast<int>(absl::StatusCode::kUnauthenticated));
  EXPECT_FALSE(reply->has_payload);
}

TEST(WeightServiceTest, ProtocolOrModelMismatchIsRefused) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  RawPeer peer(served.context(), served.endpoint());
  peer.Hello(/*version=*/wire::kProtocolVersion + 1);
  auto hello = peer.Receive();
  ASSERT_TRUE(hello.has_value() && hello->envelope.has_hello());
  EXPECT_EQ(hello->envelope.hello().status().code(),
            static_cast<int>(absl::StatusCode::kFailedPrecondition));
  // Ignored from then on, even a correct Hello.
  peer.Hello();
  EXPECT_FALSE(peer.Receive(std::chrono::milliseconds(300)).has_value());

  LoaderClientOptions options;
  options.node_id = "other-model";
  auto client =
      LoaderClient::Connect(served.context(), served.endpoint(), std::string(64, '0'), options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(WeightServiceTest, ShutdownIsHonouredFromACoordinatorOnly) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  auto worker = served.Connect();
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE((*worker)->RequestShutdown("not yours to ask").ok());
  // Still serving (the request after the Shutdown is answered).
  EXPECT_TRUE((*worker)->FetchModelInfo().ok());
  EXPECT_FALSE(served.stopped());

  LoaderClientOptions options;
  options.role = "coordinator";
  auto coordinator = served.Connect(options);
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  EXPECT_TRUE((*coordinator)->RequestShutdown("the deployment stops").ok());
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!served.stopped() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(served.stopped());
}

// With CURVE the keys decide: peers outside the allow-list never get an
// answer, and a Shutdown counts only from the coordinator's key, whatever
// role a Hello claims.
TEST(WeightServiceTest, CurveAdmitsAllowedKeysAndOnlyTheCoordinatorKeyStopsIt) {
  auto pair = [] {
    absl::StatusOr<wire::CurveKeyPair> keys = wire::GenerateCurveKeyPair();
    EXPECT_TRUE(keys.ok()) << keys.status();
    return keys.ok() ? *keys : wire::CurveKeyPair{};
  };
  const wire::CurveKeyPair loader = pair(), coordinator = pair(), worker = pair(), stranger = pair();
  WeightServiceOptions options = Served::Loopback();
  options.curve.own = loader;
  options.curve.allowed = {coordinator.public_key, worker.public_key};
  options.curve.coordinator_public_key = coordinator.public_key;
  Served served(CHORD_DEFAULT_MODEL, options);
  ASSERT_TRUE(served.ok());
  auto client_options = [&](const wire::CurveKeyPair& own, const std::string& role) {
    LoaderClientOptions o;
    o.role = role;
    o.curve.own = own;
    o.curve.loader_public_key = loader.public_key;
    o.timeout = std::chrono::milliseconds(300);
    o.max_attempts = 1;
    return o;
  };

  // A worker's key claiming the coordinator's role is served, but cannot stop the loader.
  auto impostor = served.Connect(client_options(worker, "coordinator"));
  ASSERT_TRUE(impostor.ok()) << impostor.status();
  EXPECT_TRUE((*impostor)->FetchModelInfo().ok());
  EXPECT_TRUE((*impostor)->RequestShutdown("not yours to ask").ok());
  EXPECT_TRUE((*impostor)->FetchModelInfo().ok());
  EXPECT_FALSE(served.stopped());

  // Keys outside the allow-list, and plaintext, get no answer at all.
  EXPECT_FALSE(served.Connect(client_options(stranger, "worker")).ok());
  LoaderClientOptions plaintext = client_options(worker, "worker");
  plaintext.curve = {};
  EXPECT_FALSE(served.Connect(plaintext).ok());

  auto real = served.Connect(client_options(coordinator, "coordinator"));
  ASSERT_TRUE(real.ok()) << real.status();
  EXPECT_TRUE((*real)->RequestShutdown("the deployment stops").ok());
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!served.stopped() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(served.stopped());
}

TEST(WeightServiceTest, ServesSeveralClientsAtOnce) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  constexpr int kClients = 4;
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&served, i] {
      LoaderClientOptions options;
      options.node_id = "client" + std::to_string(i);
      options.chunk_bytes = 4096 << i;
      options.max_outstanding = 1 + i * 2;
      auto client = served.Connect(options);
      ASSERT_TRUE(client.ok()) << client.status();
      ExpectAllTensorsMatch(**client, served.file());
    });
  }
  for (std::thread& thread : threads) thread.join();
  int peers_served = 0;
  for (const auto& [name, stats] : served.service().Stats()) {
    if (stats.bytes_sent > 0) ++peers_served;
  }
  EXPECT_EQ(peers_served, kClients);
}

TEST(WeightServiceTest, PacesChunksToItsBandwidthLimit) {
  WeightServiceOptions options = Served::Loopback();
  options.max_bytes_per_second = 4 << 20;  // 4 MiB/s
  Served served(CHORD_DEFAULT_MODEL, options);
  ASSERT_TRUE(served.ok());
  LoaderClientOptions client_options;
  client_options.chunk_bytes = 64 << 10;
  auto client = served.Connect(client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  uint64_t bytes = 0;
  for (const gguf::TensorInfo& t : served.file().tensors()) bytes += t.n_bytes;
  const auto start = std::chrono::steady_clock::now();
  ExpectAllTensorsMatch(**client, served.file());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double expected = static_cast<double>(bytes) / options.max_bytes_per_second;  // ~0.28 s
  EXPECT_GE(seconds, 0.95 * expected);
  EXPECT_LT(seconds, 20 * expected);  // loose: only that pacing is not pathological
}

TEST(WeightServiceTest, ServesOverIpc) {
  WeightServiceOptions options;
  options.bind = "ipc://" + (std::filesystem::temp_directory_path() /
                             ("chord-loader-test-" + std::to_string(getpid()) + ".ipc"))
                                .string();
  Served served(CHORD_DEFAULT_MODEL, options);
  ASSERT_TRUE(served.ok());
  EXPECT_EQ(served.endpoint(), options.bind);
  auto client = served.Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  ExpectAllTensorsMatch(**client, served.file());
}

// Over ipc the client maps the loader's file and takes only checksums; a
// local file that differs from the loader's (here: a copy with one byte
// flipped) fails a checksum and the client falls back to payloads.
TEST(WeightServiceTest, SameHostClientsReadTheMappedFileAndCheckIt) {
  const auto dir = std::filesystem::temp_directory_path();
  const std::string pid = std::to_string(getpid());
  for (const bool corrupt : {false, true}) {
    std::string local = CHORD_DEFAULT_MODEL;
    if (corrupt) {
      local = (dir / ("chord-loader-test-" + pid + ".gguf")).string();
      std::filesystem::copy_file(CHORD_DEFAULT_MODEL, local,
                                 std::filesystem::copy_options::overwrite_existing);
      std::fstream file(local, std::ios::in | std::ios::out | std::ios::binary);
      file.seekp(-1000, std::ios::end);  // inside the last tensor
      file.put('\x7f');
    }
    WeightServiceOptions options;
    options.bind = "ipc://" + (dir / ("chord-loader-test-" + pid + ".ipc")).string();
    options.file_path = local;
    Served served(CHORD_DEFAULT_MODEL, options);
    ASSERT_TRUE(served.ok());
    auto client = served.Connect();
    ASSERT_TRUE(client.ok()) << client.status();
    ASSERT_TRUE((*client)->FetchModelInfo().ok());  // learns the path, maps the file
    ExpectAllTensorsMatch(**client, served.file());
    uint64_t payload_bytes = 0;
    for (const auto& [peer, stats] : served.service().Stats()) payload_bytes += stats.bytes_sent;
    if (corrupt) {
      EXPECT_GT(payload_bytes, 0u);  // fell back to payloads after the mismatch
      std::filesystem::remove(local);
    } else {
      EXPECT_EQ(payload_bytes, 0u);  // every byte came from the mapping
    }
  }
}

// A client keeps its connection across a loader restart: requests time out
// while the loader is down and are asked again; the new loader, which does not
// know the client, answers UNAUTHENTICATED and the client says Hello again.
TEST(WeightServiceTest, AClientSurvivesALoaderRestart) {
  Served served(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(served.ok());
  LoaderClientOptions options;
  options.timeout = std::chrono::milliseconds(300);
  options.max_attempts = 8;
  auto client = served.Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  ExpectAllTensorsMatch(**client, served.file());
  served.Restart();
  ExpectAllTensorsMatch(**client, served.file(), /*exact_count=*/false);
  std::thread restart([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    served.Restart();
  });
  // The restart lands mid-fetch (or, on a slow machine, after it: also fine).
  ExpectAllTensorsMatch(**client, served.file(), /*exact_count=*/false);
  restart.join();
  ExpectAllTensorsMatch(**client, served.file(), /*exact_count=*/false);
}

TEST(Sha256HexTest, KnownDigests) {
  EXPECT_EQ(*Sha256Hex({}), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  const std::string abc = "abc";
  EXPECT_EQ(*Sha256Hex(std::span(reinterpret_cast<const uint8_t*>(abc.data()), abc.size())),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace chord::loader
