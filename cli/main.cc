// `chord`: the user's command. Wiring only: each subcommand lives in its own file.
#include <cstdio>
#include <vector>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "common/base/log.h"

int main(int argc, char** argv) {
  CLI::App app{"chord: serve Llama-family GGUF models across processes and machines"};
  app.require_subcommand(1);
  std::string log_level = "info";
  bool log_json = false;
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str();
  app.add_flag("--log-json", log_json, "write log lines as JSON objects");

  std::vector<chord::cli::Subcommand> subcommands = {
      chord::cli::AddInspectCommand(app),
      chord::cli::AddMkmodelCommand(app),
      chord::cli::AddGenerateCommand(app),
      chord::cli::AddKeygenCommand(app),
      chord::cli::AddServeCommand(app),
  };

  CLI11_PARSE(app, argc, argv);

  chord::log::Level level;
  if (!chord::log::ParseLevel(log_level, &level)) {
    std::fprintf(stderr, "chord: unknown --log-level '%s'\n", log_level.c_str());
    return 2;
  }
  chord::log::Init(level, log_json);

  for (const auto& subcommand : subcommands) {
    if (subcommand.app->parsed()) return subcommand.run();
  }
  return 2;
}
