// ZeroMQ framing of chord's internal messages (see proto/chord/internal/v1/internal.proto):
// an Envelope frame, then an optional raw payload frame; ROUTER sockets see the
// peer's identity frame first. One place converts absl::Status to and from the
// wire Status, and checks the protocol version of a Hello.
//
// Thread-safety: as ZeroMQ sockets themselves: a socket is used by one thread.
// Receive functions never trust the peer: a message with the wrong number of
// frames or an envelope that does not parse is DATA_LOSS, and never crashes.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "chord/internal/v1/internal.pb.h"
#include "zmq.hpp"

namespace chord::wire {

namespace pb = ::chord::internal::v1;

inline constexpr uint32_t kProtocolVersion = pb::PROTOCOL_VERSION_CURRENT;

// The most tokens one step may hold: stages refuse more (it bounds the
// activation buffers a peer can make them allocate), so the coordinator
// never builds a larger one.
inline constexpr int64_t kMaxStepTokens = 4096;

struct Message {
  std::string identity;    // ROUTER sockets only; empty otherwise
  std::string peer_key;    // the sender's CURVE public key (Z85) as ZAP admitted it; empty on plaintext
  pb::Envelope envelope;
  zmq::message_t payload;  // empty when the message had no payload frame
  bool has_payload = false;
};

// Sends [identity] envelope [payload]. `identity` empty for non-ROUTER sockets.
// UNAVAILABLE when the socket cannot take the message (e.g. would block with dontwait).
absl::Status Send(zmq::socket_t& socket, const pb::Envelope& envelope,
                  std::span<const uint8_t> payload = {}, std::string_view identity = {},
                  bool dont_wait = false);

// Receives one message. With `router` the first frame is taken as the identity.
// Returns std::nullopt when no message is waiting and `dont_wait` is set.
absl::StatusOr<std::optional<Message>> Receive(zmq::socket_t& socket, bool router,
                                               bool dont_wait = false);

pb::Status ToProto(const absl::Status& status, std::string_view origin_node);
absl::Status FromProto(const pb::Status& status);

pb::Hello MakeHello(std::string_view role, std::string_view node_id, std::string_view model_sha256);
// OK when the peer speaks this protocol version and (when both know it) the same model.
absl::Status CheckHello(const pb::Hello& hello, std::string_view expected_model_sha256);

// Copies the payload as float32 rows into `out`: DATA_LOSS unless it holds
// exactly rows * cols floats (the header's claim is checked against the frame
// length before anything is read). Copying also fixes any frame misalignment.
absl::Status CopyPayloadFloats(const Message& message, uint64_t rows, uint64_t cols,
                               std::vector<float>* out);

// The system clock in microseconds since the Unix epoch: the time base of the
// timestamps that cross hosts (Heartbeat.sent_unix_micros,
// StepHeader.deadline_unix_micros), so only as close across hosts as their
// clocks are (NTP).
int64_t UnixMicrosNow();

}  // namespace chord::wire
