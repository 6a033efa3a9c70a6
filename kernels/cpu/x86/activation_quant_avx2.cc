// AVX2 versions of the Q8_0 and Q8_K activation quantizers
// (activation_quant.h): the same float operations in the same order, so the
// bytes are identical to the portable code's (tested). A product quantizes
// each activation row once, but for a batch of tokens on a small model the
// scalar loops showed up at several percent of prefill time.
#include <immintrin.h>

#include <cstring>

#include "common/quant/quant.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/x86/simd_common.h"

namespace chord::kernels {
namespace {

using quant::kQK;
using quant::kQKK;

inline __m256 Abs(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

inline int Hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// The largest |x| of n (a multiple of 8) values; NaNs are skipped as the
// scalar `>` comparison skips them (max_ps returns its second operand then).
inline float AbsMax(const float* x, int n) {
  __m256 m = _mm256_setzero_ps();
  for (int i = 0; i < n; i += 8) m = _mm256_max_ps(Abs(_mm256_loadu_ps(x + i)), m);
  return Hmax(m);
}

// 32 int32 values (four registers, in order) as 32 int8, in order; every value
// is in [-127, 127], so the saturating packs never saturate.
inline void Store32(const __m256i (&q)[4], int8_t* out) {
  const __m256i q01 = _mm256_packs_epi32(q[0], q[1]);  // 128-bit lanes interleave...
  const __m256i q23 = _mm256_packs_epi32(q[2], q[3]);
  const __m256i bytes = _mm256_packs_epi16(q01, q23);
  // ...so the dwords come out as 0 2 4 6 1 3 5 7 of the wanted order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permutevar8x32_epi32(bytes, order));
}

}  // namespace

void QuantizeActivationsQ8_0Avx2(const float* x, int64_t n, quant::BlockQ8_0* out) {
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* xb = x + b * kQK;
    const float amax = AbsMax(xb, kQK);
    const float d = amax / 127.0f;
    const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    out[b].d = quant::FloatToHalf(d);
    __m256i q[4];
    // cvtps rounds to nearest, ties to even (the default MXCSR mode), as nearbyint does.
    for (int k = 0; k < 4; ++k)
      q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 8 * k), id));
    Store32(q, out[b].qs);
  }
}

void QuantizeActivationsQ8_KAvx2(const float* x, int64_t n, quant::BlockQ8_K* out) {
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float* xb = x + b * kQKK;
    quant::BlockQ8_K& block = out[b];
    const float amax = AbsMax(xb, kQKK);
    if (amax == 0.0f) {
      std::memset(&block, 0, sizeof(block));
      continue;
    }
    // The first value of largest magnitude keeps its sign, as in the scalar loop.
    int first = 0;
    for (int i = 0; i < kQKK; i += 8) {
      const int mask = _mm256_movemask_ps(
          _mm256_cmp_ps(Abs(_mm256_loadu_ps(xb + i)), _mm256_set1_ps(amax), _CMP_EQ_OQ));
      if (mask != 0) {
        first = i + __builtin_ctz(static_cast<unsigned>(mask));
        break;
      }
    }
    const float iscale = -127.0f / xb[first];
    const __m256 scale = _mm256_set1_ps(iscale);
    const __m256i limit = _mm256_set1_epi32(127);
    for (int j = 0; j < kQKK; j += 32) {
      __m256i q[4];
      for (int k = 0; k < 4; ++k) {
        q[k] = _mm256_min_epi32(
            _mm256_cvtps_epi32(_mm256_mul_ps(scale, _mm256_loadu_ps(xb + j + 8 * k))), limit);
      }
      block.bsums[j / 16] = static_cast<int16_t>(Hsum(_mm256_add_epi32(q[0], q[1])));
      block.bsums[j / 16 + 1] = static_cast<int16_t>(Hsum(_mm256_add_epi32(q[2], q[3])));
      Store32(q, block.qs + j);
    }
    block.d = 1.0f / iscale;
  }
}

}  // namespace chord::kernels
