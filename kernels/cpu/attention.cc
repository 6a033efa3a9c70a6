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

// The portable body of AttendTokens (any head_dim; keys and values may differ
// in type), one query after the other.
template <bool kHalfKeys, bool kHalfValues>
void AttendHeadPortable(const HeadAttention& job) {
  for (int i = 0; i < job.n_queries; ++i) {
    const float* q = job.q + i * job.q_stride;
    float* scores = job.scores + i * job.scores_stride;
    float* out = job.out + i * job.out_stride;
    const int64_t n_kv = job.n_kv + i;
    for (int64_t p = 0; p < n_kv; ++p) {
      scores[p] =
          PortableDot<kHalfKeys>(q, job.keys->Row(p) + job.key_offset, job.head_dim) * job.scale;
    }
    Softmax(scores, n_kv);
    for (int d = 0; d < job.head_dim; ++d) out[d] = 0.0f;
    for (int64_t p = 0; p < n_kv; ++p) {
      PortableAxpy<kHalfValues>(scores[p], job.values->Row(p) + job.value_offset, out,
                                job.head_dim);
    }
  }
}

}  // namespace

void AttendOneToken(const AttentionShape& shape, const float* q, const KvView& keys,
                    const KvView& values, int64_t n_kv, int head, float* scores, float* out) {
  AttendTokens(shape, q, 0, keys, values, n_kv, 1, head, scores, out, 0);
}

void AttendTokens(const AttentionShape& shape, const float* q, int64_t q_stride, const KvView& keys,
                  const KvView& values, int64_t n_kv, int n_queries, int head, float* scores,
                  float* out, int64_t out_stride) {
  const int group = shape.n_heads / shape.n_kv_heads;
  const int64_t key_offset =
      static_cast<int64_t>(head / group) * shape.head_dim * (keys.type == DType::kF16 ? 2 : 4);
  const int64_t value_offset =
      static_cast<int64_t>(head / group) * shape.head_dim * (values.type == DType::kF16 ? 2 : 4);
  HeadAttention job;
  job.q = q + static_cast<int64_t>(head) * shape.head_dim;
  job.keys = &keys;
  job.values = &values;
  job.key_offset = key_offset;
  job.value_offset = value_offset;
  job.n_kv = n_kv;
  job.head_dim = shape.head_dim;
  job.scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  job.scores = scores;
  job.out = out + static_cast<int64_t>(head) * shape.head_dim;
  job.n_queries = n_queries;
  job.q_stride = q_stride;
  job.out_stride = out_stride;
  job.scores_stride = n_kv + n_queries - 1;
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
