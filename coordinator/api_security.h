// What the coordinator's public APIs (gRPC and the OpenAI-compatible HTTP
// front door) share about security: the bearer token clients must send and
// the check of the token they did send.
//
// Thread-safety: free functions, no state.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace chord::coordinator {

// The bearer token: the first line of `key_file` (surrounding whitespace
// dropped) when a file is given, else `env_value` (CHORD_API_KEY, read by
// main), else empty (no auth). INVALID_ARGUMENT for an unreadable or empty
// file.
absl::StatusOr<std::string> ResolveApiKey(const std::string& key_file, const char* env_value);

// True when `authorization` is "Bearer <key>". The comparison takes the same
// time wherever the strings differ, so the answer time does not leak the key.
bool BearerMatches(std::string_view authorization, std::string_view key);

}  // namespace chord::coordinator
