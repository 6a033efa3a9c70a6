#include "common/wire/wire.h"

#include <chrono>
#include <cstring>
#include <vector>

#include "common/base/status.h"

namespace chord::wire {

absl::Status Send(zmq::socket_t& socket, const pb::Envelope& envelope,
                  std::span<const uint8_t> payload, std::string_view identity, bool dont_wait) {
  std::string bytes;
  if (!envelope.SerializeToString(&bytes)) return absl::InternalError("cannot serialize envelope");
  const zmq::send_flags wait = dont_wait ? zmq::send_flags::dontwait : zmq::send_flags::none;
  const bool more_after_envelope = !payload.empty();
  try {
    if (!identity.empty()) {
      if (!socket.send(zmq::buffer(identity.data(), identity.size()), zmq::send_flags::sndmore | wait)) {
        return absl::UnavailableError("peer cannot take a message now");
      }
    }
    const zmq::send_flags envelope_flags = more_after_envelope ? (zmq::send_flags::sndmore | wait) : wait;
    if (!socket.send(zmq::buffer(bytes), envelope_flags)) {
      return absl::UnavailableError("peer cannot take a message now");
    }
    if (more_after_envelope) {
      socket.send(zmq::buffer(payload.data(), payload.size()), wait);
    }
  } catch (const zmq::error_t& error) {
    return absl::UnavailableError(absl::StrCat("zmq send: ", error.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Message>> Receive(zmq::socket_t& socket, bool router, bool dont_wait) {
  std::vector<zmq::message_t> frames;
  try {
    zmq::message_t first;
    const auto got = socket.recv(first, dont_wait ? zmq::recv_flags::dontwait : zmq::recv_flags::none);
    if (!got) return std::optional<Message>();
    bool more = first.more();
    frames.push_back(std::move(first));
    while (more) {
      zmq::message_t frame;
      (void)socket.recv(frame, zmq::recv_flags::none);
      more = frame.more();
      if (frames.size() < 8) frames.push_back(std::move(frame));  // drain, but bound what we keep
    }
  } catch (const zmq::error_t& error) {
    return absl::UnavailableError(absl::StrCat("zmq receive: ", error.what()));
  }
  Message message;
  size_t next = 0;
  if (router) {
    message.identity = frames[0].to_string();
    next = 1;
  }
  const size_t rest = frames.size() - next;
  if (rest != 1 && rest != 2) {
    return absl::DataLossError(absl::StrCat("malformed message: ", frames.size(), " frames"));
  }
  if (!message.envelope.ParseFromArray(frames[next].data(), static_cast<int>(frames[next].size()))) {
    return absl::DataLossError("malformed message: the envelope does not parse");
  }
  const char* user_id = zmq_msg_gets(frames[next].handle(), "User-Id");
  if (user_id != nullptr) message.peer_key = user_id;
  if (rest == 2) {
    message.payload = std::move(frames[next + 1]);
    message.has_payload = true;
  }
  return std::optional<Message>(std::move(message));
}

pb::Status ToProto(const absl::Status& status, std::string_view origin_node) {
  pb::Status out;
  out.set_code(static_cast<int32_t>(status.code()));
  out.set_message(std::string(status.message()));
  out.set_origin_node(std::string(origin_node));
  return out;
}

absl::Status FromProto(const pb::Status& status) {
  if (status.code() == 0) return absl::OkStatus();
  const int code = status.code() > 0 && status.code() <= 16 ? status.code() : 2;  // 2: UNKNOWN
  std::string message = status.message();
  if (!status.origin_node().empty()) message = absl::StrCat(status.origin_node(), ": ", message);
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

pb::Hello MakeHello(std::string_view role, std::string_view node_id, std::string_view model_sha256) {
  pb::Hello hello;
  hello.set_protocol_version(kProtocolVersion);
  hello.set_role(std::string(role));
  hello.set_node_id(std::string(node_id));
  hello.set_model_sha256(std::string(model_sha256));
  return hello;
}

absl::Status CheckHello(const pb::Hello& hello, std::string_view expected_model_sha256) {
  if (hello.has_status()) RETURN_IF_ERROR(FromProto(hello.status()));
  if (hello.protocol_version() != kProtocolVersion) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "peer %s speaks protocol version %d, this process speaks %d", hello.node_id(),
        hello.protocol_version(), kProtocolVersion));
  }
  if (!expected_model_sha256.empty() && !hello.model_sha256().empty() &&
      hello.model_sha256() != expected_model_sha256) {
    return absl::FailedPreconditionError(absl::StrCat("peer ", hello.node_id(), " serves model ",
                                                      hello.model_sha256(), ", expected ",
                                                      std::string(expected_model_sha256)));
  }
  return absl::OkStatus();
}

absl::Status CopyPayloadFloats(const Message& message, uint64_t rows, uint64_t cols,
                               std::vector<float>* out) {
  if (cols != 0 && rows > UINT64_MAX / cols / sizeof(float)) {
    return absl::DataLossError("activation size overflows");
  }
  const uint64_t expected = rows * cols * sizeof(float);
  if (!message.has_payload || message.payload.size() != expected) {
    return absl::DataLossError(absl::StrFormat(
        "activation frame holds %d bytes, the header says %d x %d floats (%d bytes)",
        message.has_payload ? message.payload.size() : 0, rows, cols, expected));
  }
  out->resize(static_cast<size_t>(rows * cols));
  if (expected > 0) std::memcpy(out->data(), message.payload.data(), expected);
  return absl::OkStatus();
}

int64_t UnixMicrosNow() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace chord::wire
