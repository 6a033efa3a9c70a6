#include "common/wire/handshake.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace chord::wire {
namespace {

// A monitor endpoint no other socket of the process uses.
std::string MonitorEndpoint() {
  static std::atomic<uint64_t> next{0};
  return absl::StrCat("inproc://chord-handshake-", next.fetch_add(1));
}

}  // namespace

HandshakeWatch::HandshakeWatch(zmq::context_t& context, zmq::socket_t& socket)
    : socket_(socket), events_(context, zmq::socket_type::pair) {
  const std::string endpoint = MonitorEndpoint();
  if (zmq_socket_monitor(socket_.handle(), endpoint.c_str(), ZMQ_EVENT_HANDSHAKE_SUCCEEDED) != 0) {
    throw zmq::error_t();
  }
  events_.set(zmq::sockopt::linger, 0);
  events_.connect(endpoint);
}

HandshakeWatch::~HandshakeWatch() { zmq_socket_monitor(socket_.handle(), nullptr, 0); }

bool HandshakeWatch::Linked(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!linked_) {
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    zmq::pollitem_t item{events_.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, std::max(left, std::chrono::milliseconds(0))) == 0) break;
    // An event is two frames: a 16-bit event id and a 32-bit value, then the
    // endpoint.
    zmq::message_t frame;
    if (!events_.recv(frame, zmq::recv_flags::none)) break;
    uint16_t id = 0;
    if (frame.size() >= sizeof(id)) std::memcpy(&id, frame.data(), sizeof(id));
    while (frame.more() && events_.recv(frame, zmq::recv_flags::none)) {
    }
    linked_ = id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
  }
  return linked_;
}

}  // namespace chord::wire
