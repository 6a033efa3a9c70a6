#include "common/wire/handshake.h"

#include <chrono>
#include <memory>
#include <string>

#include "common/wire/curve.h"
#include "gtest/gtest.h"

namespace chord::wire {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kPatience{5000};
constexpr milliseconds kShortWait{300};

zmq::socket_t Push(zmq::context_t& context) {
  zmq::socket_t push(context, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  return push;
}

// A loopback endpoint nothing listens on: bound once, then closed (in a
// context of its own, whose end waits for the listener to be gone: closing a
// socket alone returns before its I/O thread lets the port go).
std::string DeadEndpoint() {
  zmq::context_t context;
  zmq::socket_t probe(context, zmq::socket_type::pull);
  probe.set(zmq::sockopt::linger, 0);
  probe.bind("tcp://127.0.0.1:*");
  std::string endpoint = probe.get(zmq::sockopt::last_endpoint);
  probe.close();
  context.close();
  return endpoint;
}

TEST(HandshakeTest, ALinkToAListeningPeerCompletesItsHandshake) {
  zmq::context_t context;
  zmq::socket_t pull(context, zmq::socket_type::pull);
  pull.set(zmq::sockopt::linger, 0);
  pull.bind("tcp://127.0.0.1:*");
  zmq::socket_t push = Push(context);
  HandshakeWatch watch(context, push);
  push.connect(pull.get(zmq::sockopt::last_endpoint));
  EXPECT_TRUE(watch.Linked(kPatience));
  EXPECT_TRUE(watch.Linked());  // and stays so
  // The socket works as any connected one.
  push.send(zmq::str_buffer("hi"));
  zmq::message_t got;
  zmq::pollitem_t item{pull.handle(), 0, ZMQ_POLLIN, 0};
  ASSERT_EQ(zmq::poll(&item, 1, kPatience), 1);
  ASSERT_TRUE(pull.recv(got));
  EXPECT_EQ(got.to_string(), "hi");
}

TEST(HandshakeTest, ALinkToNoOneIsNotLinkedUntilThePeerComes) {
  zmq::context_t context;
  const std::string endpoint = DeadEndpoint();
  zmq::socket_t push = Push(context);
  HandshakeWatch watch(context, push);
  push.connect(endpoint);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(watch.Linked(kShortWait));
  EXPECT_GE(std::chrono::steady_clock::now() - start, kShortWait);
  EXPECT_FALSE(watch.Linked());
  // ZeroMQ keeps dialling: a peer that binds later gets the link, and the
  // watch sees it.
  zmq::socket_t late(context, zmq::socket_type::pull);
  late.set(zmq::sockopt::linger, 0);
  late.bind(endpoint);
  EXPECT_TRUE(watch.Linked(kPatience));
  push.send(zmq::str_buffer("late"));
  zmq::pollitem_t item{late.handle(), 0, ZMQ_POLLIN, 0};
  EXPECT_EQ(zmq::poll(&item, 1, kPatience), 1);
}

TEST(HandshakeTest, ACurveLinkWithTheWrongServerKeyNeverCompletes) {
  zmq::context_t context;
  absl::StatusOr<CurveKeyPair> server_keys = GenerateCurveKeyPair();
  absl::StatusOr<CurveKeyPair> client_keys = GenerateCurveKeyPair();
  absl::StatusOr<CurveKeyPair> other_keys = GenerateCurveKeyPair();
  ASSERT_TRUE(server_keys.ok() && client_keys.ok() && other_keys.ok());
  absl::StatusOr<std::unique_ptr<ZapHandler>> zap =
      ZapHandler::Start(context, {client_keys->public_key});
  ASSERT_TRUE(zap.ok()) << zap.status();
  zmq::socket_t pull(context, zmq::socket_type::pull);
  pull.set(zmq::sockopt::linger, 0);
  ASSERT_TRUE(MakeCurveServer(pull, *server_keys).ok());
  pull.bind("tcp://127.0.0.1:*");
  const std::string endpoint = pull.get(zmq::sockopt::last_endpoint);

  zmq::socket_t wrong = Push(context);
  ASSERT_TRUE(MakeCurveClient(wrong, *client_keys, other_keys->public_key).ok());
  HandshakeWatch wrong_watch(context, wrong);
  wrong.connect(endpoint);
  EXPECT_FALSE(wrong_watch.Linked(kShortWait));

  zmq::socket_t right = Push(context);
  ASSERT_TRUE(MakeCurveClient(right, *client_keys, server_keys->public_key).ok());
  HandshakeWatch right_watch(context, right);
  right.connect(endpoint);
  EXPECT_TRUE(right_watch.Linked(kPatience));
}

}  // namespace
}  // namespace chord::wire
