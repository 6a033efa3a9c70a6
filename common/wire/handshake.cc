#include "common/wire/handshake.h"

#include <atomic>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace chord::wire {
namespace {

// A monitor endpoint no other socket of the process uses.
std::string MonitorEndpoint() {
  static std::atomic<uint64_t> next{0};
  return absl::StrCat("inproc://chord-handshake-", next.fetch_add(1));
}

}  // namespace

bool ConnectAndAwaitHandshake(zmq::context_t& context, zmq::socket_t& socket,
                              const std::string& endpoint, std::chrono::milliseconds timeout) {
  const std::string monitor = MonitorEndpoint();
  // Watched from before the connect, so that no event is missed.
  if (zmq_socket_monitor(socket.handle(), monitor.c_str(), ZMQ_EVENT_HANDSHAKE_SUCCEEDED) != 0) {
    throw zmq::error_t();
  }
  zmq::socket_t events(context, zmq::socket_type::pair);
  events.set(zmq::sockopt::linger, 0);
  events.connect(monitor);
  bool linked = false;
  try {
    socket.connect(endpoint);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!linked) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      zmq::pollitem_t item{events.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq::poll(&item, 1, left) == 0) break;
      // An event is two frames: 16-bit event id and 32-bit value, then the
      // endpoint.
      zmq::message_t frame;
      if (!events.recv(frame, zmq::recv_flags::none)) break;
      uint16_t id = 0;
      if (frame.size() >= sizeof(id)) std::memcpy(&id, frame.data(), sizeof(id));
      while (frame.more() && events.recv(frame, zmq::recv_flags::none)) {
      }
      linked = id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
    }
  } catch (...) {
    zmq_socket_monitor(socket.handle(), nullptr, 0);
    throw;
  }
  zmq_socket_monitor(socket.handle(), nullptr, 0);
  return linked;
}

}  // namespace chord::wire
