// A loopback TCP port that was free a moment ago: for a child process's
// listener (a metrics or gRPC port) in tests and benchmarks on one machine.
// Another process may take it before the child binds it; callers that cannot
// retry should let the child pick port 0 instead.
#pragma once

namespace chord::serve {

// 0 when no socket could be bound.
int FreeLoopbackPort();

}  // namespace chord::serve
