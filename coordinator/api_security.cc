#include "coordinator/api_security.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace chord::coordinator {
namespace {

bool SameSecret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

absl::StatusOr<std::string> ResolveApiKey(const std::string& key_file, const char* env_value) {
  if (key_file.empty()) return std::string(env_value == nullptr ? "" : absl::StripAsciiWhitespace(env_value));
  std::ifstream in(key_file);
  std::string key;
  if (!in || !std::getline(in, key)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read the API key file ", key_file));
  }
  key = std::string(absl::StripAsciiWhitespace(key));
  if (key.empty()) return absl::InvalidArgumentError(absl::StrCat("the API key file ", key_file, " is empty"));
  return key;
}

bool BearerMatches(std::string_view authorization, std::string_view key) {
  constexpr std::string_view kBearer = "Bearer ";
  return !key.empty() && authorization.starts_with(kBearer) &&
         SameSecret(authorization.substr(kBearer.size()), key);
}

}  // namespace chord::coordinator
