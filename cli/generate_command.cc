#include "cli/commands.h"

namespace chord::cli {

Subcommand AddGenerateCommand(CLI::App& parent) {
  Subcommand command;
  command.app = parent.add_subcommand("generate", "(being written)");
  command.run = [] { return 1; };
  return command;
}

}  // namespace chord::cli
