// `chord keygen --out PREFIX`: a CURVE key pair for one chord process.
// PREFIX.key (secret, mode 0600) stays on that host; PREFIX.pub goes into the
// allow-list of every process it talks to (see deploy/README.md).
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "common/wire/curve.h"

namespace chord::cli {
namespace {

struct KeygenFlags {
  std::string out;
  bool force = false;
};

int RunKeygen(const KeygenFlags& flags) {
  absl::StatusOr<wire::CurveKeyPair> keys = wire::GenerateCurveKeyPair();
  if (!keys.ok()) {
    std::fprintf(stderr, "chord keygen: %s\n", std::string(keys.status().message()).c_str());
    return 1;
  }
  const absl::Status written = wire::WriteCurveKeyPair(*keys, flags.out, flags.force);
  if (!written.ok()) {
    std::fprintf(stderr, "chord keygen: %s\n", std::string(written.message()).c_str());
    return written.code() == absl::StatusCode::kAlreadyExists ? 2 : 1;
  }
  std::printf("wrote %s.key (secret, mode 0600) and %s.pub\npublic key: %s\n", flags.out.c_str(),
              flags.out.c_str(), keys->public_key.c_str());
  return 0;
}

}  // namespace

Subcommand AddKeygenCommand(CLI::App& parent) {
  auto flags = std::make_shared<KeygenFlags>();
  CLI::App* app = parent.add_subcommand(
      "keygen", "Write a CURVE key pair (PREFIX.key, secret; PREFIX.pub) for ZeroMQ links");
  app->add_option("--out", flags->out, "path prefix of the two files")->required();
  app->add_flag("--force", flags->force, "replace existing key files");
  return {app, [flags] { return RunKeygen(*flags); }};
}

}  // namespace chord::cli
