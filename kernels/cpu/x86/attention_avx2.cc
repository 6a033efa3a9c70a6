// AVX2 + FMA + F16C inner loops of attention (see attention_rows.h). Built with
// those target flags and -ffp-contract=off; only reached after a CPUID check.
#include <immintrin.h>

#include "kernels/cpu/attention_rows.h"

namespace chord::kernels {
namespace {

template <bool kHalf>
inline __m256 Load8(const void* row, int i) {
  if constexpr (kHalf) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i)));
  } else {
    return _mm256_loadu_ps(static_cast<const float*>(row) + i);
  }
}

template <bool kHalf>
inline float Scalar(const void* row, int i) {
  if constexpr (kHalf) {
    return _cvtsh_ss(static_cast<const uint16_t*>(row)[i]);
  } else {
    return static_cast<const float*>(row)[i];
  }
}

template <bool kHalf>
float Dot(const float* q, const void* row, int n) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), Load8<kHalf>(row, i), acc);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float sum = _mm_cvtss_f32(s);
  for (; i < n; ++i) sum += q[i] * Scalar<kHalf>(row, i);
  return sum;
}

template <bool kHalf>
void Axpy(float a, const void* row, float* out, int n) {
  const __m256 va = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(va, Load8<kHalf>(row, i), _mm256_loadu_ps(out + i)));
  }
  for (; i < n; ++i) out[i] += a * Scalar<kHalf>(row, i);
}

}  // namespace

KvRowOps GetKvRowOpsAvx2(DType kv_type) {
  if (kv_type == DType::kF16) return {Dot<true>, Axpy<true>};
  return {Dot<false>, Axpy<false>};
}

}  // namespace chord::kernels
