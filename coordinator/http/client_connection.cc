#include "coordinator/http/client_connection.h"

#include <httplib.h>
#include <netdb.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <charconv>
#include <filesystem>
#include <string>
#include <system_error>

namespace chord::coordinator::http {
namespace {

using AddressOf = int (*)(int, sockaddr*, socklen_t*);

// Formats the address as cpp-httplib does for Request::remote_addr and
// local_addr (numeric host, host-order port).
bool Address(int fd, AddressOf get, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (get(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return false;
  if (addr.ss_family == AF_INET) {
    port = ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    port = ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
  } else {
    return false;
  }
  char host[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof(host), nullptr, 0,
                  NI_NUMERICHOST) != 0) {
    return false;
  }
  ip = host;
  return true;
}

bool Matches(int fd, const httplib::Request& req) {
  std::string ip;
  int port = 0;
  return Address(fd, ::getsockname, ip, port) && ip == req.local_addr && port == req.local_port &&
         Address(fd, ::getpeername, ip, port) && ip == req.remote_addr && port == req.remote_port;
}

// The open socket whose (local, peer) pair is the request's; -1 if none. A
// TCP connection's address pair is unique, and the client's own end (when
// it lives in this process, as in tests) has the pair the other way round.
int FindSocket(const httplib::Request& req) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", error)) {
    const std::string name = entry.path().filename().string();
    int fd = -1;
    if (std::from_chars(name.data(), name.data() + name.size(), fd).ec != std::errc()) continue;
    if (Matches(fd, req)) return fd;
  }
  return -1;
}

}  // namespace

ClientConnection::ClientConnection(const httplib::Request& req) {
  fd_ = req.ssl != nullptr ? SSL_get_fd(req.ssl) : FindSocket(req);
}

bool ClientConnection::Closed() const {
  if (fd_ < 0) return false;
  pollfd watch{fd_, POLLRDHUP, 0};
  if (::poll(&watch, 1, 0) <= 0) return false;
  return (watch.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

}  // namespace chord::coordinator::http
