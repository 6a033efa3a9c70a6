#include "coordinator/api_security.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/base/status.h"

namespace chord::coordinator {
namespace {

bool SameSecret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path);
  std::stringstream text;
  if (!in || !(text << in.rdbuf()) || text.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read the ", what, " ", path, " (PEM)"));
  }
  return text.str();
}

}  // namespace

absl::StatusOr<std::string> ResolveApiKey(const std::string& key_file, const char* env_value) {
  if (key_file.empty())
    return std::string(env_value == nullptr ? "" : absl::StripAsciiWhitespace(env_value));
  std::ifstream in(key_file);
  std::string key;
  if (!in || !std::getline(in, key)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read the API key file ", key_file));
  }
  key = std::string(absl::StripAsciiWhitespace(key));
  if (key.empty())
    return absl::InvalidArgumentError(absl::StrCat("the API key file ", key_file, " is empty"));
  return key;
}

bool BearerMatches(std::string_view authorization, std::string_view key) {
  constexpr std::string_view kBearer = "Bearer ";
  return !key.empty() && authorization.starts_with(kBearer) &&
         SameSecret(authorization.substr(kBearer.size()), key);
}

grpc::Status CheckBearer(const grpc::ServerContext& context, std::string_view key) {
  if (key.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto found = metadata.find("authorization");
  if (found == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing authorization: Bearer <key> metadata");
  }
  if (!BearerMatches(std::string_view(found->second.data(), found->second.size()), key)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the API key is wrong");
  }
  return grpc::Status::OK;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> GrpcServerCredentials(
    const TlsFiles& tls) {
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key file");
  }
  if (!tls.enabled()) {
    if (!tls.client_ca_file.empty())
      return absl::InvalidArgumentError("a client CA needs a TLS certificate");
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(tls.cert_file, "TLS certificate"));
  ASSIGN_OR_RETURN(pair.private_key, ReadPem(tls.key_file, "TLS key"));
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!tls.client_ca_file.empty()) {
    ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(tls.client_ca_file, "client CA"));
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

}  // namespace chord::coordinator
