#include "worker/network_interface.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include "absl/strings/str_cat.h"

namespace chord {

absl::StatusOr<std::string> InterfaceHolding(const std::string& address) {
  in_addr wanted{};
  if (inet_pton(AF_INET, address.c_str(), &wanted) != 1) {
    return absl::NotFoundError(absl::StrCat("'", address, "' is not an IPv4 address"));
  }
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return absl::NotFoundError("getifaddrs failed");
  std::string found;
  for (const ifaddrs* i = list; i != nullptr && found.empty(); i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
    const auto* in = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
    if (in->sin_addr.s_addr == wanted.s_addr) found = i->ifa_name;
  }
  freeifaddrs(list);
  if (found.empty()) return absl::NotFoundError(absl::StrCat("no interface holds ", address));
  return found;
}

std::string EndpointHost(const std::string& endpoint) {
  constexpr std::string_view kTcp = "tcp://";
  if (endpoint.rfind(kTcp, 0) != 0) return "";
  const std::string rest = endpoint.substr(kTcp.size());
  const size_t colon = rest.rfind(':');
  return colon == std::string::npos ? rest : rest.substr(0, colon);
}

}  // namespace chord
