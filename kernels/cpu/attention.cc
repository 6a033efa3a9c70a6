#include "kernels/cpu/attention.h"

#include <cmath>

#include "common/quant/quant.h"
#include "kernels/cpu/ops.h"

namespace chord::kernels {
namespace {

inline float Element(const KvView& view, int64_t position, int64_t index) {
  const uint8_t* row = view.data + position * view.row_bytes;
  if (view.type == DType::kF16) {
    return quant::HalfToFloat(reinterpret_cast<const uint16_t*>(row)[index]);
  }
  return reinterpret_cast<const float*>(row)[index];
}

}  // namespace

void AttendOneToken(const AttentionShape& shape, const float* q, const KvView& keys,
                    const KvView& values, int64_t n_kv, int head, float* scores, float* out) {
  const int group = shape.n_heads / shape.n_kv_heads;
  const int64_t kv_offset = static_cast<int64_t>(head / group) * shape.head_dim;
  const float* qh = q + static_cast<int64_t>(head) * shape.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  for (int64_t p = 0; p < n_kv; ++p) {
    float dot = 0.0f;
    for (int d = 0; d < shape.head_dim; ++d) dot += qh[d] * Element(keys, p, kv_offset + d);
    scores[p] = dot * scale;
  }
  Softmax(scores, n_kv);
  float* oh = out + static_cast<int64_t>(head) * shape.head_dim;
  for (int d = 0; d < shape.head_dim; ++d) oh[d] = 0.0f;
  for (int64_t p = 0; p < n_kv; ++p) {
    const float weight = scores[p];
    for (int d = 0; d < shape.head_dim; ++d) oh[d] += weight * Element(values, p, kv_offset + d);
  }
}

}  // namespace chord::kernels
