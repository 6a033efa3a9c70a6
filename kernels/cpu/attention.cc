#include "kernels/cpu/attention.h"

#include <cmath>

#include "common/quant/quant.h"
#include "kernels/cpu/attention_head.h"
#include "kernels/cpu/multi_dot.h"
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

// The portable body of AttendOneToken (any head_dim; keys and values may
// differ in type).
template <bool kHalfKeys, bool kHalfValues>
void AttendHeadPortable(const HeadAttention& job) {
  for (int64_t p = 0; p < job.n_kv; ++p) {
    job.scores[p] =
        PortableDot<kHalfKeys>(job.q, job.keys->Row(p) + job.key_offset, job.head_dim) * job.scale;
  }
  Softmax(job.scores, job.n_kv);
  for (int d = 0; d < job.head_dim; ++d) job.out[d] = 0.0f;
  for (int64_t p = 0; p < job.n_kv; ++p) {
    PortableAxpy<kHalfValues>(job.scores[p], job.values->Row(p) + job.value_offset, job.out,
                              job.head_dim);
  }
}

}  // namespace

void AttendOneToken(const AttentionShape& shape, const float* q, const KvView& keys,
                    const KvView& values, int64_t n_kv, int head, float* scores, float* out) {
  const int group = shape.n_heads / shape.n_kv_heads;
  const int64_t key_offset =
      static_cast<int64_t>(head / group) * shape.head_dim * (keys.type == DType::kF16 ? 2 : 4);
  const int64_t value_offset =
      static_cast<int64_t>(head / group) * shape.head_dim * (values.type == DType::kF16 ? 2 : 4);
  const float* qh = q + static_cast<int64_t>(head) * shape.head_dim;
  float* oh = out + static_cast<int64_t>(head) * shape.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  const HeadAttention job{qh,   &keys,          &values, key_offset, value_offset,
                          n_kv, shape.head_dim, scale,   scores,     oh};
#if defined(CHORD_HAVE_AVX2_KERNELS)
  if (HasAvx2(BestKernelIsa()) && shape.head_dim % 8 == 0 && keys.type == values.type) {
    AttendHeadAvx2(job);
    return;
  }
#endif
  const bool half_keys = keys.type == DType::kF16, half_values = values.type == DType::kF16;
  if (half_keys && half_values) {
    AttendHeadPortable<true, true>(job);
  } else if (half_keys) {
    AttendHeadPortable<true, false>(job);
  } else if (half_values) {
    AttendHeadPortable<false, true>(job);
  } else {
    AttendHeadPortable<false, false>(job);
  }
}

}  // namespace chord::kernels
