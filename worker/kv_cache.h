// The KV cache of a stage's layers: for each layer in the stage, each sequence
// slot and each position, one row of keys and one of values (n_embd_kv
// elements, F32 or F16). Memory is allocated once, up front, so its size is
// known and reported (it is not part of the weight budget).
//
// Thread-safety: rows may be written and read from the compute pool's threads
// as long as no two threads write the same row; the owner serializes steps.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor/dtype.h"
#include "kernels/cpu/attention.h"

namespace chord {

struct KvCacheShape {
  int64_t n_layers = 0;   // layers of this stage
  int64_t n_slots = 1;    // sequences that can be live at once
  int64_t n_ctx = 0;      // positions per sequence
  int64_t n_embd_kv = 0;  // n_head_kv * head_dim
  DType type = DType::kF32;
};

class KvCache {
 public:
  // INVALID_ARGUMENT for a type other than F32/F16 or a non-positive size;
  // RESOURCE_EXHAUSTED when the allocation would exceed 64-bit sizes.
  static absl::StatusOr<KvCache> Create(const KvCacheShape& shape);

  const KvCacheShape& shape() const { return shape_; }
  uint64_t bytes() const { return storage_.size(); }

  // Stores one position's keys and values (n_embd_kv floats each), converting to the cache type.
  void Store(int64_t layer, int64_t slot, int64_t position, const float* keys, const float* values);
  kernels::KvView Keys(int64_t layer, int64_t slot) const;
  kernels::KvView Values(int64_t layer, int64_t slot) const;

 private:
  KvCache(const KvCacheShape& shape, int64_t row_bytes);
  uint8_t* Row(int64_t layer, int64_t slot, int64_t position, int which);
  const uint8_t* Base(int64_t layer, int64_t slot, int which) const;

  KvCacheShape shape_;
  int64_t row_bytes_ = 0;
  std::vector<uint8_t> storage_;
};

}  // namespace chord
