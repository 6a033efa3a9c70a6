// The `chord` command's subcommands. Each Add*Command registers its flags on
// `parent` and returns what main() runs when that subcommand is chosen (the
// process exit code: 0 success, 1 runtime failure, 2 bad usage).
#pragma once

#include <functional>

#include "CLI/CLI.hpp"

namespace chord::cli {

struct Subcommand {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

Subcommand AddInspectCommand(CLI::App& parent);
Subcommand AddMkmodelCommand(CLI::App& parent);
Subcommand AddGenerateCommand(CLI::App& parent);
Subcommand AddKeygenCommand(CLI::App& parent);
Subcommand AddServeCommand(CLI::App& parent);

}  // namespace chord::cli
