// What the coordinator's public APIs (gRPC and the OpenAI-compatible HTTP
// front door) share about security: the bearer token clients must send, the
// check of the token they did send, and the TLS files both ports serve with.
//
// On gRPC the token is checked at the top of each chord.v1.Inference handler
// (CheckBearer), so grpc.health.v1 and reflection stay open: probes and
// tooling need no token. (An AuthMetadataProcessor would run for secure
// channels only, and gRPC 1.51's server interceptors cannot fail a call.)
//
// Thread-safety: free functions, no state.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
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

// OK when `key` is empty or the call's "authorization" metadata is
// "Bearer <key>"; UNAUTHENTICATED otherwise.
grpc::Status CheckBearer(const grpc::ServerContext& context, std::string_view key);

struct TlsFiles {
  std::string cert_file, key_file;  // PEM; both set: serve TLS
  std::string client_ca_file;       // PEM; set: clients must present a certificate it signed
  bool enabled() const { return !cert_file.empty(); }
};

// Insecure credentials when `tls` is not enabled, else TLS with its
// certificate (mutual TLS with a client CA). INVALID_ARGUMENT when a file
// cannot be read or only one of cert and key is given.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> GrpcServerCredentials(const TlsFiles& tls);

}  // namespace chord::coordinator
