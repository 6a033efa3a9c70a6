#include "common/config/curve_flags.h"

namespace chord {

CurveFlags::CurveFlags(CLI::App& app) {
  secret_key_ = app.add_option("--curve-key", values_.secret_key,
                               "CURVE secret key file (chord keygen's PREFIX.key): encrypt and "
                               "authenticate the ZeroMQ links")
                    ->envname("CHORD_CURVE_KEY");
  allow_ = app.add_option("--curve-allow", values_.allow,
                          "directory of *.pub files, or a file of public keys: the peers admitted")
               ->envname("CHORD_CURVE_ALLOW");
  coordinator_key_ =
      app.add_option("--curve-coordinator-key", values_.coordinator_public_key,
                     "the coordinator's public key file (PREFIX.pub)")
          ->envname("CHORD_CURVE_COORDINATOR_KEY");
  loader_key_ = app.add_option("--curve-loader-key", values_.loader_public_key,
                               "the loader's public key file (PREFIX.pub)")
                    ->envname("CHORD_CURVE_LOADER_KEY");
}

wire::CurveFiles CurveFlags::Resolve(const ClusterConfig* config,
                                     const std::string& own_secret_key) const {
  wire::CurveFiles files;
  if (config != nullptr) {
    files.secret_key = own_secret_key;
    files.allow = config->curve.allow;
    files.coordinator_public_key = config->curve.coordinator_public_key;
    files.loader_public_key = config->curve.loader_public_key;
  }
  if (secret_key_->count() > 0) files.secret_key = values_.secret_key;
  if (allow_->count() > 0) files.allow = values_.allow;
  if (coordinator_key_->count() > 0) files.coordinator_public_key = values_.coordinator_public_key;
  if (loader_key_->count() > 0) files.loader_public_key = values_.loader_public_key;
  return files;
}

}  // namespace chord
