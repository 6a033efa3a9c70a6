// How chord's gRPC clients (`chord generate --server`, `chord serve`'s
// readiness probe, the integration tests) reach a coordinator whose API may
// be served over TLS, with or without client certificates.
//
// Thread-safety: free functions, no state.
#pragma once

#include <grpcpp/security/credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace chord::serve {

struct ClientTls {
  std::string ca_file;              // PEM: TLS, trusting this CA; empty: plaintext
  std::string cert_file, key_file;  // PEM: this client's certificate (mutual TLS); optional
};

// Insecure credentials without a CA file, else TLS ones. INVALID_ARGUMENT
// when a file cannot be read, or a certificate comes without its key.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientCredentials(const ClientTls& tls);

}  // namespace chord::serve
