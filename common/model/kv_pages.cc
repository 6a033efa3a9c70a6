#include "common/model/kv_pages.h"

#include "absl/strings/str_format.h"

namespace chord {

absl::StatusOr<int64_t> KvPageCount(int64_t kv_tokens, int64_t kv_slots, int64_t n_ctx,
                                    int64_t page_size) {
  if (page_size < 1 || page_size > 1024 || (page_size & (page_size - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the KV page size must be a power of two in [1, 1024], not %d", page_size));
  }
  if (kv_slots <= 0 || n_ctx <= 0 || kv_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KV sizes must be positive: kv_slots %d, n_ctx %d, kv_tokens %d", kv_slots, n_ctx, kv_tokens));
  }
  const int64_t per_sequence = KvPagesFor(n_ctx, page_size);
  if (kv_tokens == 0) {
    if (per_sequence > (int64_t{1} << 40) / kv_slots) {
      return absl::InvalidArgumentError("kv_slots x n_ctx is too large");
    }
    return kv_slots * per_sequence;
  }
  if (kv_tokens > (int64_t{1} << 40)) return absl::InvalidArgumentError("kv_tokens is too large");
  const int64_t pages = KvPagesFor(kv_tokens, page_size);
  if (pages < per_sequence) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "kv_tokens %d holds less than one full context of %d positions", kv_tokens, n_ctx));
  }
  return pages;
}

}  // namespace chord
