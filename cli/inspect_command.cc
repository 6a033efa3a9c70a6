#include "cli/commands.h"

namespace chord::cli {

Subcommand AddInspectCommand(CLI::App& parent) {
  Subcommand command;
  command.app = parent.add_subcommand("inspect", "(being written)");
  command.run = [] { return 1; };
  return command;
}

}  // namespace chord::cli
