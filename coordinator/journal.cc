#include "coordinator/journal.h"

#include <algorithm>

namespace chord::coordinator {

std::span<const TokenId> Journal::Range(size_t begin, size_t count) const {
  begin = std::min(begin, tokens_.size());
  count = std::min(count, tokens_.size() - begin);
  return std::span<const TokenId>(tokens_).subspan(begin, count);
}

}  // namespace chord::coordinator
