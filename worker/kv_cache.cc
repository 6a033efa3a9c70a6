#include "worker/kv_cache.h"

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
  const int64_t element = shape.type == DType::kF16 ? 2 : 4;
  const int64_t row_bytes = shape.n_embd_kv * element;
  // layers x slots x ctx x 2 (K and V) rows; checked against overflow.
  __int128 total = static_cast<__int128>(shape.n_layers) * shape.n_slots * shape.n_ctx * 2 * row_bytes;
  if (total > std::numeric_limits<int64_t>::max() / 2) {
    return absl::ResourceExhaustedError("KV cache size overflows");
  }
  return KvCache(shape, row_bytes);
}

KvCache::KvCache(const KvCacheShape& shape, int64_t row_bytes)
    : shape_(shape),
      row_bytes_(row_bytes),
      storage_(static_cast<size_t>(shape.n_layers * shape.n_slots * shape.n_ctx * 2 * row_bytes)) {}

const uint8_t* KvCache::Base(int64_t layer, int64_t slot, int which) const {
  const int64_t index = ((layer * shape_.n_slots + slot) * 2 + which) * shape_.n_ctx;
  return storage_.data() + index * row_bytes_;
}

uint8_t* KvCache::Row(int64_t layer, int64_t slot, int64_t position, int which) {
  return const_cast<uint8_t*>(Base(layer, slot, which)) + position * row_bytes_;
}

void KvCache::Store(int64_t layer, int64_t slot, int64_t position, const float* keys,
                    const float* values) {
  CHORD_CHECK(layer >= 0 && layer < shape_.n_layers && slot >= 0 && slot < shape_.n_slots &&
              position >= 0 && position < shape_.n_ctx);
  const float* sources[2] = {keys, values};
  for (int which = 0; which < 2; ++which) {
    uint8_t* row = Row(layer, slot, position, which);
    if (shape_.type == DType::kF32) {
      std::memcpy(row, sources[which], static_cast<size_t>(row_bytes_));
    } else {
      uint16_t* half = reinterpret_cast<uint16_t*>(row);
      for (int64_t i = 0; i < shape_.n_embd_kv; ++i) half[i] = quant::FloatToHalf(sources[which][i]);
    }
  }
}

kernels::KvView KvCache::Keys(int64_t layer, int64_t slot) const {
  return {shape_.type, Base(layer, slot, 0), row_bytes_};
}

kernels::KvView KvCache::Values(int64_t layer, int64_t slot) const {
  return {shape_.type, Base(layer, slot, 1), row_bytes_};
}

}  // namespace chord
