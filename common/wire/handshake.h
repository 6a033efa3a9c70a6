// Whether a connecting ZeroMQ socket's peer is there: connect returns at once
// (ZeroMQ dials and retries in the background), so a link that can never come
// up (a firewalled port, a wrong address, a CURVE key the peer refuses) would
// otherwise only show as messages that never arrive. Chained steps need the
// last stage's link to stage 0 (proto/PROTOCOL.md): the stage reports when it
// is up, and the coordinator chains only where it is.
#pragma once

#include <chrono>

#include "zmq.hpp"

namespace chord::wire {

// Watches one socket's connections for a completed ZMTP handshake (with
// CURVE: both keys accepted). Create it before the socket connects, and
// destroy it before the socket closes.
class HandshakeWatch {
 public:
  // Throws zmq::error_t where the socket cannot be monitored.
  HandshakeWatch(zmq::context_t& context, zmq::socket_t& socket);
  ~HandshakeWatch();
  HandshakeWatch(const HandshakeWatch&) = delete;
  HandshakeWatch& operator=(const HandshakeWatch&) = delete;

  // True once a connection of the socket has completed its handshake,
  // waiting up to `timeout` for it (0: only what has happened so far).
  bool Linked(std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

 private:
  zmq::socket_t& socket_;
  zmq::socket_t events_;
  bool linked_ = false;
};

}  // namespace chord::wire
