#include "common/base/status.h"

#include <cstdio>
#include <cstdlib>

namespace chord::internal {

void CheckFailed(const char* file, int line, const char* condition) {
  std::fprintf(stderr, "chord: internal check failed at %s:%d: %s\n", file, line, condition);
  std::abort();
}

}  // namespace chord::internal
