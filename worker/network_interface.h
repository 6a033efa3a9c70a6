// The network interface that holds an IPv4 address: where NCCL's own
// traffic is kept (NCCL_SOCKET_IFNAME) when the cluster file names none.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace chord {

// "lo" for 127.0.0.1 on Linux. NOT_FOUND when no interface holds `address`
// (or it is not a dotted IPv4 address, e.g. a wildcard).
absl::StatusOr<std::string> InterfaceHolding(const std::string& address);

// The host part of a ZeroMQ tcp:// endpoint ("tcp://10.0.0.2:5600" ->
// "10.0.0.2"); empty for other transports.
std::string EndpointHost(const std::string& endpoint);

}  // namespace chord
