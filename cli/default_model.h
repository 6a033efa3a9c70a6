// Where the bundled default model (stories260K) is found: next to the binary's
// source tree as configured at build time, or via $CHORD_DEFAULT_MODEL.
#pragma once

#include <cstdlib>
#include <string>

namespace chord::cli {

inline std::string DefaultModelPath() {
  if (const char* path = std::getenv("CHORD_DEFAULT_MODEL"); path != nullptr && *path != '\0') {
    return path;
  }
  return CHORD_INSTALLED_DEFAULT_MODEL;
}

}  // namespace chord::cli
