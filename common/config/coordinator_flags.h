// chord-coordinator's command line over the cluster file's coordinator:
// section. Every flag given on the command line replaces the file's field;
// fields whose flags were not given keep the file's value (or the default).
//
// Thread-safety: one thread (main). The object must outlive app.parse(), and
// must not move: the overrides point into it.
#pragma once

#include <functional>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/config/cluster_config.h"

namespace chord {

class CoordinatorFlags {
 public:
  // Adds --grpc-port, --min-workers, --kv-slots, --ctx-size, --kv-type, --exact, --[no-]chain-steps,
  // --max-queue, --worker-timeout-ms, --grace-ms, --step-timeout-ms, --http-port, --http-host,
  // --chat-template, --api-key-file, --tls-cert, --tls-key and --tls-client-ca to `app`.
  explicit CoordinatorFlags(CLI::App& app);
  CoordinatorFlags(const CoordinatorFlags&) = delete;
  CoordinatorFlags& operator=(const CoordinatorFlags&) = delete;

  // `file` with the given flags applied.
  CoordinatorSection Apply(CoordinatorSection file) const;

 private:
  template <typename T>
  CLI::Option* Add(CLI::App& app, const char* name, T CoordinatorSection::*field, const char* help);
  // A flag without a value (--exact), likewise from its variable (CHORD_EXACT=true).
  CLI::Option* AddFlag(CLI::App& app, const char* name, bool CoordinatorSection::*field, const char* help);
  // Applies `option` to `field` in Apply when it was given.
  template <typename T>
  CLI::Option* Override(CLI::Option* option, T CoordinatorSection::*field);

  CoordinatorSection values_;
  std::vector<std::function<void(CoordinatorSection&)>> overrides_;
};

}  // namespace chord
