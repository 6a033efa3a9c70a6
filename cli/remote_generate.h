// `chord generate --server HOST:PORT`: the same flags as local generation,
// sent to a chord server's gRPC API; text streams to stdout as it arrives and
// --json prints the same one-line object as local mode.
#pragma once

#include "cli/generate_common.h"

namespace chord::cli {

// Exit code: 0 done, 1 the server failed or could not be reached.
int RunRemoteGenerate(const GenerateFlags& flags);

}  // namespace chord::cli
