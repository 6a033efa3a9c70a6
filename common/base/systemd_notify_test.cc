#include "common/base/systemd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace chord {
namespace {

// A datagram socket bound where systemd would listen: a path, or an abstract
// name when `path` starts with '@'. Returns the fd.
int BindNotifySocket(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  if (path[0] == '@') address.sun_path[0] = '\0';
  const socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  EXPECT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&address), length), 0) << std::strerror(errno);
  return fd;
}

std::string Receive(int fd) {
  char buffer[256];
  const ssize_t n = ::recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
  return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : std::string();
}

TEST(SystemdNotifyTest, NothingToDoOutsideSystemd) {
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_TRUE(NotifySystemd("READY=1").ok());
}

TEST(SystemdNotifyTest, SendsTheStateToAPathAndAnAbstractSocket) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("chord_notify_" + std::to_string(::getpid()))).string();
  std::filesystem::remove(path);
  const std::string abstract = "@chord_notify_" + std::to_string(::getpid());
  for (const std::string& where : {path, abstract}) {
    const int fd = BindNotifySocket(where);
    ::setenv("NOTIFY_SOCKET", where.c_str(), 1);
    EXPECT_TRUE(NotifySystemd("READY=1").ok()) << where;
    EXPECT_EQ(Receive(fd), "READY=1") << where;
    EXPECT_TRUE(NotifySystemd("STOPPING=1").ok()) << where;
    EXPECT_EQ(Receive(fd), "STOPPING=1") << where;
    ::close(fd);
  }
  std::filesystem::remove(path);
  // Named but gone, or not a socket path at all: an error to log, never a crash.
  ::setenv("NOTIFY_SOCKET", path.c_str(), 1);
  EXPECT_EQ(NotifySystemd("READY=1").code(), absl::StatusCode::kUnavailable);
  ::setenv("NOTIFY_SOCKET", "relative/path", 1);
  EXPECT_EQ(NotifySystemd("READY=1").code(), absl::StatusCode::kInvalidArgument);
  ::unsetenv("NOTIFY_SOCKET");
}

}  // namespace
}  // namespace chord
