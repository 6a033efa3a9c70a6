// The KV cache of a stage's layers, paged: a pool of pages, each holding
// `page_size` positions of keys and values (n_embd_kv elements per row, F32 or
// F16) for every layer of the stage, and a page table per sequence slot. A
// slot takes pages as its sequence grows and gives them back when it ends or
// restarts, so short sequences do not reserve a full context each and the
// pool can hold fewer positions than kv_slots x n_ctx (the coordinator
// preempts a sequence rather than overfill it; common/model/kv_pages.h).
// The pool is allocated once, up front, so its size is known and reported (it
// is not part of the weight budget).
//
// Thread-safety: rows may be written and read from the compute pool's threads
// as long as no two threads write the same row and no page is reserved or
// released meanwhile; the owner serializes steps.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/kv_pages.h"
#include "common/tensor/dtype.h"
#include "kernels/cpu/attention.h"

namespace chord {

struct KvCacheShape {
  int64_t n_layers = 0;   // layers of this stage
  int64_t n_slots = 1;    // sequences that can be live at once
  int64_t n_ctx = 0;      // positions per sequence
  int64_t n_embd_kv = 0;  // n_head_kv * head_dim
  DType type = DType::kF32;
  int64_t kv_tokens = 0;  // positions in the pool, shared by the slots; 0: n_slots x n_ctx
  int64_t page_size = kDefaultKvPageSize;  // positions per page (a power of two)
};

// What one step needs of a slot: positions [0, end) held, after dropping what
// the slot held when `restart` (the step starts a new sequence there).
struct SlotExtent {
  int64_t slot = 0;
  bool restart = false;
  int64_t end = 0;
};

class KvCache {
 public:
  // INVALID_ARGUMENT for a type other than F32/F16, a non-positive size or a
  // pool below one context; RESOURCE_EXHAUSTED when the allocation would
  // exceed 64-bit sizes.
  static absl::StatusOr<KvCache> Create(const KvCacheShape& shape);

  const KvCacheShape& shape() const { return shape_; }
  uint64_t bytes() const { return storage_.size(); }
  int64_t total_pages() const { return n_pages_; }
  int64_t free_pages() const { return static_cast<int64_t>(free_pages_.size()); }
  int64_t slot_pages(int64_t slot) const;

  // Gives every slot in `extents` the pages for its positions, all or nothing:
  // RESOURCE_EXHAUSTED (and no change) when the pool cannot hold them all.
  // Slots must be in range and each listed once.
  absl::Status Reserve(std::span<const SlotExtent> extents);
  // Returns the slot's pages to the pool (its positions are forgotten).
  void Release(int64_t slot);
  // Gives every slot a full context (for code that addresses positions
  // directly: benchmarks, tests). RESOURCE_EXHAUSTED unless the pool holds
  // n_slots x n_ctx positions.
  absl::Status ReserveAll();

  // Stores one position's keys and values (n_embd_kv floats each), converting
  // to the cache type. The position must be reserved.
  void Store(int64_t layer, int64_t slot, int64_t position, const float* keys, const float* values);
  kernels::KvView Keys(int64_t layer, int64_t slot) const;
  kernels::KvView Values(int64_t layer, int64_t slot) const;

 private:
  KvCache(const KvCacheShape& shape, int64_t row_bytes, int64_t n_pages);
  kernels::KvView View(int64_t layer, int64_t slot, int which) const;

  KvCacheShape shape_;
  int64_t row_bytes_ = 0;
  int64_t n_pages_ = 0;
  int64_t page_bytes_ = 0;  // one page: layers x (K, V) x page_size rows
  int page_shift_ = 0;
  std::vector<uint8_t> storage_;
  std::vector<std::vector<int32_t>> slot_pages_;  // page table per slot
  std::vector<int32_t> free_pages_;               // a stack: the last freed is reused first
};

}  // namespace chord
