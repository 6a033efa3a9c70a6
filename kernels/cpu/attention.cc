#include "kernels/cpu/attention.h"

#include <cmath>

#include "common/quant/quant.h"
#include "kernels/cpu/attention_rows.h"
#include "kernels/cpu/ops.h"

namespace chord::kernels {
namespace {

template <bool kHalf>
inline float Element(const void* row, int i) {
  if constexpr (kHalf) {
    return quant::HalfToFloat(static_cast<const uint16_t*>(row)[i]);
  } else {
    return static_cast<const float*>(row)[i];
  }
}

template <bool kHalf>
float PortableDot(const float* q, const void* row, int n) {
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) sum += q[i] * Element<kHalf>(row, i);
  return sum;
}

template <bool kHalf>
void PortableAxpy(float a, const void* row, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] += a * Element<kHalf>(row, i);
}

}  // namespace

KvRowOps GetKvRowOps(DType kv_type, KernelIsa isa) {
#if defined(CHORD_HAVE_AVX2_KERNELS)
  if (HasAvx2(isa)) return GetKvRowOpsAvx2(kv_type);
#else
  (void)isa;
#endif
  if (kv_type == DType::kF16) return {PortableDot<true>, PortableAxpy<true>};
  return {PortableDot<false>, PortableAxpy<false>};
}

void AttendOneToken(const AttentionShape& shape, const float* q, const KvView& keys,
                    const KvView& values, int64_t n_kv, int head, float* scores, float* out) {
  const KvRowOps key_ops = GetKvRowOps(keys.type, BestKernelIsa());
  const KvRowOps value_ops = GetKvRowOps(values.type, BestKernelIsa());
  const int group = shape.n_heads / shape.n_kv_heads;
  const int64_t element_bytes = keys.type == DType::kF16 ? 2 : 4;
  const int64_t key_offset = static_cast<int64_t>(head / group) * shape.head_dim * element_bytes;
  const int64_t value_offset =
      static_cast<int64_t>(head / group) * shape.head_dim * (values.type == DType::kF16 ? 2 : 4);
  const float* qh = q + static_cast<int64_t>(head) * shape.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  for (int64_t p = 0; p < n_kv; ++p) {
    scores[p] =
        key_ops.dot(qh, keys.Row(p) + key_offset, shape.head_dim) * scale;
  }
  Softmax(scores, n_kv);
  float* oh = out + static_cast<int64_t>(head) * shape.head_dim;
  for (int d = 0; d < shape.head_dim; ++d) oh[d] = 0.0f;
  for (int64_t p = 0; p < n_kv; ++p) {
    value_ops.axpy(scores[p], values.Row(p) + value_offset, oh,
                   shape.head_dim);
  }
}

}  // namespace chord::kernels
