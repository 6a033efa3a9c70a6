#include "cli/commands.h"

namespace chord::cli {

Subcommand AddMkmodelCommand(CLI::App& parent) {
  Subcommand command;
  command.app = parent.add_subcommand("mkmodel", "(being written)");
  command.run = [] { return 1; };
  return command;
}

}  // namespace chord::cli
