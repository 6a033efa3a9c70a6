#include "common/wire/curve.h"

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "common/wire/wire.h"
#include "gtest/gtest.h"

namespace chord::wire {
namespace {

constexpr auto kPatience = std::chrono::milliseconds(2000);
constexpr auto kSilence = std::chrono::milliseconds(600);

class CurveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("chord_curve_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  CurveKeyPair NewPair() {
    absl::StatusOr<CurveKeyPair> keys = GenerateCurveKeyPair();
    EXPECT_TRUE(keys.ok()) << keys.status();
    return *keys;
  }

  // A CURVE ROUTER server on an OS-picked loopback port; returns its endpoint.
  std::string BindServer(zmq::socket_t& server, const CurveKeyPair& keys) {
    EXPECT_TRUE(MakeCurveServer(server, keys).ok());
    server.set(zmq::sockopt::linger, 0);
    server.bind("tcp://127.0.0.1:*");
    return server.get(zmq::sockopt::last_endpoint);
  }

  // A running ZAP handler admitting `allowed`.
  std::unique_ptr<ZapHandler> StartZap(std::vector<std::string> allowed) {
    absl::StatusOr<std::unique_ptr<ZapHandler>> zap =
        ZapHandler::Start(context_, std::move(allowed));
    EXPECT_TRUE(zap.ok()) << zap.status();
    return zap.ok() ? std::move(*zap) : nullptr;
  }

  // A CURVE ROUTER server (`server_`, `endpoint_`) whose ZAP handler (`zap_`) admits `allowed`.
  void StartServer(const CurveKeyPair& server_keys, std::vector<std::string> allowed) {
    zap_ = StartZap(std::move(allowed));
    ASSERT_NE(zap_, nullptr);
    server_.emplace(context_, zmq::socket_type::router);
    endpoint_ = BindServer(*server_, server_keys);
  }

  // A DEALER connected to `endpoint` that has sent "ping": CURVE with `own`
  // trusting `server_key`, or plaintext when `own` is null.
  zmq::socket_t SendPing(const std::string& endpoint, const CurveKeyPair* own,
                         const std::string& server_key) {
    zmq::socket_t client(context_, zmq::socket_type::dealer);
    client.set(zmq::sockopt::linger, 0);
    if (own != nullptr) {
      EXPECT_TRUE(MakeCurveClient(client, *own, server_key).ok());
    }
    client.connect(endpoint);
    client.send(zmq::str_buffer("ping"));
    return client;
  }

  // Whether `server` receives "ping" within `wait`; answers it with "pong".
  static bool ServerGetsPing(zmq::socket_t& server, std::chrono::milliseconds wait) {
    zmq::pollitem_t item{server.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, wait) <= 0) return false;
    zmq::message_t identity, body;
    EXPECT_TRUE(server.recv(identity));
    EXPECT_TRUE(server.recv(body));
    EXPECT_EQ(body.to_string(), "ping");
    server.send(identity, zmq::send_flags::sndmore);
    server.send(zmq::str_buffer("pong"));
    return true;
  }

  std::filesystem::path dir_;
  zmq::context_t context_{1};  // first: outlives the sockets below
  std::unique_ptr<ZapHandler> zap_;
  std::optional<zmq::socket_t> server_;
  std::string endpoint_;
};

TEST_F(CurveTest, KeyFilesRoundTripWithPrivateSecretFile) {
  const CurveKeyPair keys = NewPair();
  const std::string prefix = (dir_ / "node").string();
  ASSERT_TRUE(WriteCurveKeyPair(keys, prefix, /*overwrite=*/false).ok());

  struct stat info {};
  ASSERT_EQ(::stat((prefix + ".key").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  absl::StatusOr<CurveKeyPair> read = ReadCurveSecretKey(prefix + ".key");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->secret_key, keys.secret_key);
  EXPECT_EQ(read->public_key, keys.public_key);  // derived from the secret
  absl::StatusOr<std::string> pub = ReadCurvePublicKey(prefix + ".pub");
  ASSERT_TRUE(pub.ok()) << pub.status();
  EXPECT_EQ(*pub, keys.public_key);

  const CurveKeyPair other = NewPair();
  EXPECT_EQ(WriteCurveKeyPair(other, prefix, false).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_EQ(::chmod((prefix + ".key").c_str(), 0644), 0);
  ASSERT_TRUE(WriteCurveKeyPair(other, prefix, /*overwrite=*/true).ok());
  ASSERT_EQ(::stat((prefix + ".key").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);  // narrowed again on overwrite
  EXPECT_EQ(ReadCurveSecretKey(prefix + ".key")->public_key, other.public_key);
}

TEST_F(CurveTest, MalformedKeysAndEmptyListsAreErrors) {
  std::ofstream(dir_ / "bad.pub") << "# comment\nnot-a-key\n";
  EXPECT_EQ(ReadCurvePublicKey((dir_ / "bad.pub").string()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadCurvePublicKey((dir_ / "missing.pub").string()).status().code(),
            absl::StatusCode::kNotFound);
  std::filesystem::create_directories(dir_ / "empty");
  EXPECT_EQ(LoadCurveAllowList((dir_ / "empty").string()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ZapHandler::Start(context_, {"short"}).ok());
}

TEST_F(CurveTest, AllowListFromDirectoryAndFile) {
  const CurveKeyPair a = NewPair();
  const CurveKeyPair b = NewPair();
  std::filesystem::create_directories(dir_ / "keys");
  ASSERT_TRUE(WriteCurveKeyPair(a, (dir_ / "keys" / "a").string(), false).ok());
  ASSERT_TRUE(WriteCurveKeyPair(b, (dir_ / "keys" / "b").string(), false).ok());
  absl::StatusOr<std::vector<std::string>> from_dir = LoadCurveAllowList((dir_ / "keys").string());
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  EXPECT_EQ(from_dir->size(), 2u);  // the .key files are not public keys and are skipped
  std::ofstream(dir_ / "list.txt") << a.public_key << "\n\n# b\n" << b.public_key << "\n";
  absl::StatusOr<std::vector<std::string>> from_file =
      LoadCurveAllowList((dir_ / "list.txt").string());
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(*from_file, (std::vector<std::string>{a.public_key, b.public_key}));
}

TEST_F(CurveTest, AllowedKeyExchangesMessages) {
  const CurveKeyPair server_keys = NewPair();
  const CurveKeyPair client_keys = NewPair();
  StartServer(server_keys, {client_keys.public_key});
  if (HasFatalFailure()) return;

  // Through the key files, as processes do.
  ASSERT_TRUE(WriteCurveKeyPair(client_keys, (dir_ / "client").string(), false).ok());
  ASSERT_TRUE(WriteCurveKeyPair(server_keys, (dir_ / "server").string(), false).ok());
  zmq::socket_t client(context_, zmq::socket_type::dealer);
  client.set(zmq::sockopt::linger, 0);
  ASSERT_TRUE(MakeCurveClientFromFiles(client, (dir_ / "client.key").string(),
                                       (dir_ / "server.pub").string())
                  .ok());
  client.connect(endpoint_);
  client.send(zmq::str_buffer("ping"));
  ASSERT_TRUE(ServerGetsPing(*server_, kPatience));
  zmq::pollitem_t item{client.handle(), 0, ZMQ_POLLIN, 0};
  ASSERT_EQ(zmq::poll(&item, 1, kPatience), 1);
  zmq::message_t reply;
  ASSERT_TRUE(client.recv(reply));
  EXPECT_EQ(reply.to_string(), "pong");
  EXPECT_GE(zap_->admitted_count(), 1);
  EXPECT_EQ(zap_->refused_count(), 0);
}

TEST_F(CurveTest, UnknownKeyIsRefused) {
  const CurveKeyPair server_keys = NewPair();
  const CurveKeyPair allowed_keys = NewPair();
  const CurveKeyPair stranger_keys = NewPair();
  StartServer(server_keys, {allowed_keys.public_key});
  if (HasFatalFailure()) return;

  zmq::socket_t stranger = SendPing(endpoint_, &stranger_keys, server_keys.public_key);
  EXPECT_FALSE(ServerGetsPing(*server_, kSilence));
  EXPECT_GE(zap_->refused_count(), 1);
  EXPECT_EQ(zap_->admitted_count(), 0);

  // The same server still admits the allowed key afterwards.
  zmq::socket_t allowed = SendPing(endpoint_, &allowed_keys, server_keys.public_key);
  EXPECT_TRUE(ServerGetsPing(*server_, kPatience));
}

TEST_F(CurveTest, PlaintextPeerIsRefusedByCurveServer) {
  const CurveKeyPair server_keys = NewPair();
  StartServer(server_keys, {NewPair().public_key});
  if (HasFatalFailure()) return;

  zmq::socket_t plain = SendPing(endpoint_, nullptr, "");
  EXPECT_FALSE(ServerGetsPing(*server_, kSilence));
}

TEST_F(CurveTest, WrongServerKeyNeverConnects) {
  const CurveKeyPair server_keys = NewPair();
  const CurveKeyPair client_keys = NewPair();
  StartServer(server_keys, {client_keys.public_key});
  if (HasFatalFailure()) return;

  // A client that trusts a different server key (e.g. an impostor's) cannot talk.
  zmq::socket_t client = SendPing(endpoint_, &client_keys, NewPair().public_key);
  EXPECT_FALSE(ServerGetsPing(*server_, kSilence));
}

// The setup processes load from their flags and config: all or nothing.
TEST_F(CurveTest, SetupFromFilesIsAllOrNothing) {
  absl::StatusOr<CurveSetup> plain = LoadCurveSetup(CurveFiles{});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->enabled());
  zmq::socket_t socket(context_, zmq::socket_type::dealer);
  EXPECT_TRUE(SecureClient(socket, *plain, "").ok());  // plaintext: nothing to do
  EXPECT_TRUE(RequireCoordinatorKey(*plain).ok());

  const CurveKeyPair own = NewPair();
  const CurveKeyPair coordinator = NewPair();
  ASSERT_TRUE(WriteCurveKeyPair(own, (dir_ / "own").string(), false).ok());
  ASSERT_TRUE(WriteCurveKeyPair(coordinator, (dir_ / "coordinator").string(), false).ok());
  std::filesystem::create_directories(dir_ / "allowed");
  std::filesystem::copy_file(dir_ / "coordinator.pub", dir_ / "allowed" / "coordinator.pub");

  CurveFiles files;
  files.secret_key = (dir_ / "own.key").string();
  EXPECT_EQ(LoadCurveSetup(files).status().code(), absl::StatusCode::kInvalidArgument);  // no allow-list
  files.allow = (dir_ / "allowed").string();
  absl::StatusOr<CurveSetup> setup = LoadCurveSetup(files);
  ASSERT_TRUE(setup.ok()) << setup.status();
  EXPECT_TRUE(setup->enabled());
  EXPECT_EQ(setup->own.public_key, own.public_key);
  EXPECT_EQ(setup->allowed, std::vector<std::string>{coordinator.public_key});
  EXPECT_EQ(RequireCoordinatorKey(*setup).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SecureClient(socket, *setup, "").code(), absl::StatusCode::kInvalidArgument);
  files.coordinator_public_key = (dir_ / "coordinator.pub").string();
  setup = LoadCurveSetup(files);
  ASSERT_TRUE(setup.ok()) << setup.status();
  EXPECT_EQ(setup->coordinator_public_key, coordinator.public_key);
  EXPECT_TRUE(RequireCoordinatorKey(*setup).ok());
  EXPECT_EQ(RequireLoaderKey(*setup).code(), absl::StatusCode::kInvalidArgument);

  CurveFiles only_public;
  only_public.loader_public_key = (dir_ / "coordinator.pub").string();
  EXPECT_EQ(LoadCurveSetup(only_public).status().code(), absl::StatusCode::kInvalidArgument);
  files.loader_public_key = (dir_ / "missing.pub").string();
  EXPECT_EQ(LoadCurveSetup(files).status().code(), absl::StatusCode::kNotFound);
}

// wire::Receive reports the key ZAP authenticated: the coordinator takes a
// worker's data-socket key from it, never from what the worker claims.
TEST_F(CurveTest, ReceivedMessagesCarryTheAuthenticatedKey) {
  const CurveKeyPair server_keys = NewPair();
  const CurveKeyPair client_keys = NewPair();
  StartServer(server_keys, {client_keys.public_key});
  if (HasFatalFailure()) return;
  CurveSetup client_setup;
  client_setup.own = client_keys;
  zmq::socket_t client(context_, zmq::socket_type::dealer);
  client.set(zmq::sockopt::linger, 0);
  ASSERT_TRUE(SecureClient(client, client_setup, server_keys.public_key).ok());
  client.connect(endpoint_);
  pb::Envelope envelope;
  envelope.mutable_heartbeat()->set_plan_version(7);
  ASSERT_TRUE(Send(client, envelope).ok());
  zmq::pollitem_t item{server_->handle(), 0, ZMQ_POLLIN, 0};
  ASSERT_EQ(zmq::poll(&item, 1, kPatience), 1);
  absl::StatusOr<std::optional<Message>> received = Receive(*server_, /*router=*/true);
  ASSERT_TRUE(received.ok()) << received.status();
  ASSERT_TRUE(received->has_value());
  EXPECT_EQ((*received)->peer_key, client_keys.public_key);
  EXPECT_EQ((*received)->envelope.heartbeat().plan_version(), 7u);
}

}  // namespace
}  // namespace chord::wire
