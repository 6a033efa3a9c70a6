// Whether the client of a request being handled is still connected.
//
// cpp-httplib 0.11 (Debian 12's) hands a handler no socket and no way to
// learn that its client has gone (Request::is_connection_closed came in
// 0.20). A non-streaming generation writes nothing until it ends, so it
// would otherwise run to max_tokens for nobody. This finds the request's
// socket (through the TLS session for HTTPS; for plain HTTP, the socket whose
// local and peer addresses are the request's) and asks the kernel whether
// the peer has closed it (POLLRDHUP).
//
// A client that half-closes (shutdown(SHUT_WR)) after its request counts as
// gone; HTTP clients do not do that. Thread-safety: use from the handler's
// thread, while the handler runs (the socket stays open that long).
#pragma once

namespace httplib {
struct Request;
}

namespace chord::coordinator::http {

class ClientConnection {
 public:
  explicit ClientConnection(const httplib::Request& req);

  bool found() const { return fd_ >= 0; }
  // True once the peer has closed or reset the connection; false while it is
  // open or when the socket was not found.
  bool Closed() const;

 private:
  int fd_ = -1;
};

}  // namespace chord::coordinator::http
