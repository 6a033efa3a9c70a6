// grpc.health.v1 checks against a chord coordinator, without generated stubs:
// the request (service "") is the empty message and the answer's only field is
// the status enum, so a generic call with hand-read bytes is enough.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace grpc {
class ChannelCredentials;
}

namespace chord::serve {

enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };

// One Health/Check call (health needs no API key). Errors are the RPC's
// status (UNAVAILABLE while the server is not listening yet). `credentials`
// null: plaintext. Thread-safe.
absl::StatusOr<HealthStatus> CheckHealth(const std::string& address, std::chrono::milliseconds timeout,
                                         std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);

// Polls CheckHealth until it answers SERVING. DEADLINE_EXCEEDED after `timeout`
// (the message carries the last answer or error).
absl::Status WaitUntilServing(const std::string& address, std::chrono::milliseconds timeout,
                              std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);

}  // namespace chord::serve
