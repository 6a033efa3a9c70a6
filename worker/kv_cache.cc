#include "worker/kv_cache.h"

#include <bit>
#include <cstring>
#include <limits>

#include "common/base/status.h"
#include "common/quant/quant.h"

namespace chord {

absl::StatusOr<KvCache> KvCache::Create(const KvCacheShape& shape) {
  if (shape.type != DType::kF32 && shape.type != DType::kF16) {
    return absl::InvalidArgumentError("the KV cache type must be f32 or f16");
  }
  if (shape.n_layers <= 0 || shape.n_slots <= 0 || shape.n_ctx <= 0 || shape.n_embd_kv <= 0) {
    return absl::InvalidArgumentError("KV cache dimensions must be positive");
  }
  ASSIGN_OR_RETURN(const int64_t n_pages,
                   KvPageCount(shape.kv_tokens, shape.n_slots, shape.n_ctx, shape.page_size));
  const int64_t element = shape.type == DType::kF16 ? 2 : 4;
  const int64_t row_bytes = shape.n_embd_kv * element;
  // pages x layers x 2 (K and V) x page_size rows; checked against overflow.
  const __int128 total =
      static_cast<__int128>(n_pages) * shape.n_layers * 2 * shape.page_size * row_bytes;
  if (total > std::numeric_limits<int64_t>::max() / 2) {
    return absl::ResourceExhaustedError("KV cache size overflows");
  }
  return KvCache(shape, row_bytes, n_pages);
}

KvCache::KvCache(const KvCacheShape& shape, int64_t row_bytes, int64_t n_pages)
    : shape_(shape),
      row_bytes_(row_bytes),
      n_pages_(n_pages),
      page_bytes_(shape.n_layers * 2 * shape.page_size * row_bytes),
      page_shift_(std::countr_zero(static_cast<uint64_t>(shape.page_size))),
      storage_(static_cast<size_t>(n_pages * page_bytes_)),
      slot_pages_(static_cast<size_t>(shape.n_slots)) {
  free_pages_.reserve(static_cast<size_t>(n_pages));
  for (int64_t page = n_pages - 1; page >= 0; --page) free_pages_.push_back(static_cast<int32_t>(page));
}

int64_t KvCache::slot_pages(int64_t slot) const {
  return static_cast<int64_t>(slot_pages_[static_cast<size_t>(slot)].size());
}

absl::Status KvCache::Reserve(std::span<const SlotExtent> extents) {
  int64_t needed = 0;
  int64_t returned = 0;
  for (const SlotExtent& extent : extents) {
    CHORD_CHECK(extent.slot >= 0 && extent.slot < shape_.n_slots && extent.end >= 0 &&
                extent.end <= shape_.n_ctx);
    const int64_t held = slot_pages(extent.slot);
    const int64_t wanted = KvPagesFor(extent.end, shape_.page_size);
    if (extent.restart) {
      returned += held;
      needed += wanted;
    } else {
      needed += std::max<int64_t>(0, wanted - held);
    }
  }
  if (needed > free_pages() + returned) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the KV cache has %d free pages of %d positions, the step needs %d more", free_pages() + returned,
        shape_.page_size, needed));
  }
  for (const SlotExtent& extent : extents) {
    if (extent.restart) Release(extent.slot);
  }
  for (const SlotExtent& extent : extents) {
    std::vector<int32_t>& table = slot_pages_[static_cast<size_t>(extent.slot)];
    const auto wanted = static_cast<size_t>(KvPagesFor(extent.end, shape_.page_size));
    while (table.size() < wanted) {
      table.push_back(free_pages_.back());
      free_pages_.pop_back();
    }
  }
  return absl::OkStatus();
}

absl::Status KvCache::ReserveAll() {
  std::vector<SlotExtent> extents;
  for (int64_t slot = 0; slot < shape_.n_slots; ++slot) extents.push_back({slot, false, shape_.n_ctx});
  return Reserve(extents);
}

void KvCache::Release(int64_t slot) {
  std::vector<int32_t>& table = slot_pages_[static_cast<size_t>(slot)];
  // In reverse, so the slot's first page is the next one handed out.
  for (auto it = table.rbegin(); it != table.rend(); ++it) free_pages_.push_back(*it);
  table.clear();
}

kernels::KvView KvCache::View(int64_t layer, int64_t slot, int which) const {
  kernels::KvView view;
  view.type = shape_.type;
  view.data = storage_.data() + (layer * 2 + which) * shape_.page_size * row_bytes_;
  view.row_bytes = row_bytes_;
  view.pages = slot_pages_[static_cast<size_t>(slot)].data();
  view.page_shift = page_shift_;
  view.page_stride = page_bytes_;
  return view;
}

void KvCache::Store(int64_t layer, int64_t slot, int64_t position, const float* keys,
                    const float* values) {
  CHORD_CHECK(layer >= 0 && layer < shape_.n_layers && slot >= 0 && slot < shape_.n_slots &&
              position >= 0 && (position >> page_shift_) < slot_pages(slot));
  const float* sources[2] = {keys, values};
  for (int which = 0; which < 2; ++which) {
    auto* row = const_cast<uint8_t*>(View(layer, slot, which).Row(position));
    if (shape_.type == DType::kF32) {
      std::memcpy(row, sources[which], static_cast<size_t>(row_bytes_));
    } else {
      uint16_t* half = reinterpret_cast<uint16_t*>(row);
      for (int64_t i = 0; i < shape_.n_embd_kv; ++i) half[i] = quant::FloatToHalf(sources[which][i]);
    }
  }
}

kernels::KvView KvCache::Keys(int64_t layer, int64_t slot) const { return View(layer, slot, 0); }

kernels::KvView KvCache::Values(int64_t layer, int64_t slot) const { return View(layer, slot, 1); }

}  // namespace chord
