// Connecting a ZeroMQ socket and learning whether the peer is there: connect
// itself returns at once (ZeroMQ dials and retries in the background), so a
// link that can never come up (a firewalled port, a wrong address, a CURVE key
// the peer refuses) would only show as messages that never arrive. Chained
// steps need the last stage's link to stage 0 (proto/PROTOCOL.md): the stage
// reports whether it came up, and the coordinator chains only where it did.
#pragma once

#include <chrono>
#include <string>

#include "zmq.hpp"

namespace chord::wire {

// Connects `socket` to `endpoint` and waits up to `timeout` for one of its
// connections to complete the ZMTP handshake (with CURVE: both keys
// accepted). True when one did; false at the timeout, the socket still
// connected and ZeroMQ still retrying. Throws zmq::error_t as connect does.
bool ConnectAndAwaitHandshake(zmq::context_t& context, zmq::socket_t& socket,
                              const std::string& endpoint, std::chrono::milliseconds timeout);

}  // namespace chord::wire
