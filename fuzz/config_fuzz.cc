// Fuzz target: the configuration parsers (common/config). The whole input is
// read three ways:
//   - as a cluster YAML file (ParseClusterConfig); a config that parses must
//     print (ToYaml) as YAML that parses back to the same config;
//   - as a byte size (ParseByteSize, the memory_budget field and --worker-budget);
//   - one line per argument, as chord-coordinator's command line
//     (CoordinatorFlags over a CLI11 app), then applied to the default section.
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/config/cluster_config.h"
#include "common/config/coordinator_flags.h"
#include "fuzz/fuzz_target.h"

namespace chord::fuzz {
namespace {

void ParseYaml(std::string_view text) {
  const absl::StatusOr<ClusterConfig> config = ParseClusterConfig(text);
  if (!config.ok()) return;
  const std::string printed = config->ToYaml();
  const absl::StatusOr<ClusterConfig> again = ParseClusterConfig(printed);
  if (!again.ok()) {
    std::fprintf(stderr, "ToYaml printed:\n%s\nwhich does not parse: %s\n", printed.c_str(),
                 std::string(again.status().message()).c_str());
  }
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->ToYaml() == printed);
  (void)ValidateCoordinatorSection(config->coordinator);
}

void ParseSize(std::string_view text) {
  const absl::StatusOr<uint64_t> bytes = ParseByteSize(text);
  // A plain number is taken as is.
  if (bytes.ok() && !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
        return c >= '0' && c <= '9';
      }) && text.size() < 19) {
    FUZZ_CHECK(*bytes == std::stoull(std::string(text)));
  }
}

void ParseFlags(std::string_view text) {
  std::vector<std::string> args;
  size_t start = 0;
  while (start <= text.size() && args.size() < 64) {
    const size_t end = std::min(text.find('\n', start), text.size());
    args.emplace_back(text.substr(start, end - start));
    start = end + 1;
  }
  std::reverse(args.begin(), args.end());  // CLI::App::parse takes them last first
  CLI::App app("chord-coordinator");
  CoordinatorFlags flags(app);
  try {
    app.parse(args);
  } catch (const CLI::ParseError&) {
    return;  // main() prints these and exits 2
  }
  (void)ValidateCoordinatorSection(flags.Apply(CoordinatorSection()));
}

int Run(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  ParseYaml(text);
  ParseSize(text);
  ParseFlags(text);
  return 0;
}

}  // namespace

int FuzzConfig(const uint8_t* data, size_t size) { return Run(data, size); }

}  // namespace chord::fuzz

CHORD_FUZZ_ENTRY(chord::fuzz::FuzzConfig)
