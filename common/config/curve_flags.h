// The CURVE flags every chord process shares (--curve-key, --curve-allow,
// --curve-coordinator-key, --curve-loader-key, or the CHORD_CURVE_* variables)
// over the cluster file: the process's own section names its secret key, the
// file's curve: section the allow-list and the servers' public keys. A flag
// or variable given replaces the file's field.
//
// Thread-safety: one thread (main). Must outlive app.parse() and not move.
#pragma once

#include <string>

#include "CLI/CLI.hpp"
#include "common/config/cluster_config.h"
#include "common/wire/curve.h"

namespace chord {

class CurveFlags {
 public:
  explicit CurveFlags(CLI::App& app);
  CurveFlags(const CurveFlags&) = delete;
  CurveFlags& operator=(const CurveFlags&) = delete;

  // The files to use: `config`'s (with `own_secret_key` from the process's
  // section) where no flag was given. `config` may be null (no --config).
  wire::CurveFiles Resolve(const ClusterConfig* config, const std::string& own_secret_key) const;

 private:
  wire::CurveFiles values_;
  CLI::Option* secret_key_;
  CLI::Option* allow_;
  CLI::Option* coordinator_key_;
  CLI::Option* loader_key_;
};

}  // namespace chord
