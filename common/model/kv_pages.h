// How a stage's KV cache is counted: in pages of `page_size` positions, shared
// by every sequence slot. The coordinator and every worker compute the same
// page count from the plan (kv_tokens, kv_slots, n_ctx, page size), so the
// coordinator's bookkeeping of which sequence holds how many pages is exactly
// what each stage can hold.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace chord {

// Positions per page when the plan does not say.
inline constexpr int64_t kDefaultKvPageSize = 16;

// Pages that hold positions [0, positions).
inline int64_t KvPagesFor(int64_t positions, int64_t page_size) {
  return (positions + page_size - 1) / page_size;
}

// The pages of a stage's KV cache. `kv_tokens` 0 reserves a full context for
// every slot (no sequence is ever preempted); otherwise the pool holds
// kv_tokens positions rounded up to whole pages, and must hold at least one
// full context (so a sequence alone always fits). INVALID_ARGUMENT for a page
// size that is not a power of two in [1, 1024], non-positive sizes or a pool
// below one context.
absl::StatusOr<int64_t> KvPageCount(int64_t kv_tokens, int64_t kv_slots, int64_t n_ctx,
                                    int64_t page_size);

}  // namespace chord
