#include "cli/serve/grpc_client.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"

namespace chord::serve {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  if (!in || !(text << in.rdbuf()))
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  return text.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientCredentials(const ClientTls& tls) {
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError("a client certificate needs its key, and the reverse");
  }
  if (tls.ca_file.empty()) {
    if (!tls.cert_file.empty())
      return absl::InvalidArgumentError("a client certificate needs TLS (a CA file)");
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions options;
  ASSIGN_OR_RETURN(options.pem_root_certs, ReadFile(tls.ca_file));
  if (!tls.cert_file.empty()) {
    ASSIGN_OR_RETURN(options.pem_cert_chain, ReadFile(tls.cert_file));
    ASSIGN_OR_RETURN(options.pem_private_key, ReadFile(tls.key_file));
  }
  return grpc::SslCredentials(options);
}

}  // namespace chord::serve
