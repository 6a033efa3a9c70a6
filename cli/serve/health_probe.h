// grpc.health.v1 checks against a chord coordinator, without generated stubs:
// the request (service "") is the empty message and the answer's only field is
// the status enum, so a generic call with hand-read bytes is enough.
#pragma once

#include <chrono>
#include <string>

#include "absl/status/statusor.h"

namespace chord::serve {

enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };

// One Health/Check call. Errors are the RPC's status (UNAVAILABLE while the
// server is not listening yet). Thread-safe.
absl::StatusOr<HealthStatus> CheckHealth(const std::string& address, std::chrono::milliseconds timeout);

// Polls CheckHealth until it answers SERVING. DEADLINE_EXCEEDED after `timeout`
// (the message carries the last answer or error).
absl::Status WaitUntilServing(const std::string& address, std::chrono::milliseconds timeout);

}  // namespace chord::serve
