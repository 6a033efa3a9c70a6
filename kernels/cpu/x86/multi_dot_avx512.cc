// AVX-512 (F, BW, VL) + VNNI group dot products (see multi_dot.h) for the
// types whose inner loop gains from 64-byte registers: Q4_K and Q6_K (a
// 64-element slice of a block, both of its 32-element sub-blocks, in one
// register against 64 contiguous activation bytes) and Q8_0 (one vpdpbusd
// instead of maddubs + madd). The other types keep their AVX2 kernels. Built
// with those target flags and -ffp-contract=off; only reached after a CPUID
// check.
//
// Integer parts: maddubs (unsigned weight byte x signed activation byte ->
// int16 pairs, which cannot saturate for these ranges), then vpdpwssd
// multiplies the pairs by the sub-block scales and accumulates int32 in one
// instruction; one float FMA per block and token as in the AVX2 kernels.
#include <immintrin.h>

#include <cstring>

#include "common/quant/blocks.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/multi_dot.h"
#include "kernels/cpu/x86/simd_common.h"

// GCC 12's AVX-512 intrinsics start their results from _mm512_undefined_*(),
// which its flow analysis reports as uninitialized at every inlined use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace chord::kernels {
namespace {

using quant::BlockQ4_K;
using quant::BlockQ6_K;
using quant::BlockQ8_0;
using quant::BlockQ8_K;
using quant::kQK;
using quant::kQKK;

inline float Hsum512(__m512 v) {
  const __m256 high =
      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));  // AVX-512F only
  return Hsum(_mm256_add_ps(_mm512_castps512_ps256(v), high));
}
inline __m512i Load512(const void* p) { return _mm512_loadu_si512(p); }

// The permutation that SpreadScales applies: int16 lane i of the result takes
// lane first + i / (32 / groups) of the values, so `groups` consecutive values
// each cover 32 / groups lanes (one lane per int16 pair position).
inline __m512i SpreadIndex(int first, int groups) {
  alignas(64) int16_t index[32];
  for (int i = 0; i < 32; ++i) index[i] = static_cast<int16_t>(first + i / (32 / groups));
  return _mm512_load_si512(index);
}

// Each pair position's scale, from 16 int16 values.
inline __m512i SpreadScales(__m512i index, __m256i values) {
  return _mm512_permutexvar_epi16(index, _mm512_zextsi256_si512(values));
}

template <int NT>
void DotQ8_0(const void* w, const void* const* acts, int64_t n, float* out) {
  const BlockQ8_0* x = static_cast<const BlockQ8_0*>(w);
  const BlockQ8_0* y[NT];
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const BlockQ8_0*>(acts[t]);
    acc[t] = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < n / kQK; ++b) {
    const __m256i qx = Load256(x[b].qs);
    const __m256i ax = _mm256_sign_epi8(qx, qx);
    const float dx = Half(x[b].d);
    for (int t = 0; t < NT; ++t) {
      // |x| (unsigned) times y with x's sign: x * y, four bytes a lane.
      const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax,
                                              _mm256_sign_epi8(Load256(y[t][b].qs), qx));
      acc[t] =
          _mm256_fmadd_ps(_mm256_set1_ps(dx * Half(y[t][b].d)), _mm256_cvtepi32_ps(dot), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = Hsum(acc[t]);
}

template <int NT>
void DotQ4_K(const void* w, const void* const* acts, int64_t n, float* out) {
  const BlockQ4_K* x = static_cast<const BlockQ4_K*>(w);
  const BlockQ8_K* y[NT];
  __m512 acc[NT];
  __m128 acc_min[NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const BlockQ8_K*>(acts[t]);
    acc[t] = _mm512_setzero_ps();
    acc_min[t] = _mm_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0xF);
  // Sub-blocks 2j and 2j + 1: 16 int16 pair positions each.
  const __m512i spread[4] = {SpreadIndex(0, 2), SpreadIndex(2, 2), SpreadIndex(4, 2),
                             SpreadIndex(6, 2)};
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const __m256i scales_mins = UnpackScalesMins(x[b].scales);
    const float d = Half(x[b].d);
    const float dmin = Half(x[b].dmin);
    for (int t = 0; t < NT; ++t) acc_min[t] = MinTerm(scales_mins, y[t][b], dmin, acc_min[t]);
    __m512i sumi[NT];
    for (int t = 0; t < NT; ++t) sumi[t] = _mm512_setzero_si512();
    for (int j = 0; j < kQKK / 64; ++j) {
      // Elements 64j..64j+63: sub-block 2j in the low nibbles, 2j + 1 in the
      // high ones; the activations of both are 64 contiguous bytes.
      const __m256i q4 = Load256(x[b].qs + 32 * j);
      const __m512i nibbles = _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_and_si256(q4, m4)),
                                                 _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), 1);
      const __m512i scales = SpreadScales(spread[j], scales_mins);
      for (int t = 0; t < NT; ++t) {
        const __m512i pairs = _mm512_maddubs_epi16(nibbles, Load512(y[t][b].qs + 64 * j));
        sumi[t] = _mm512_dpwssd_epi32(sumi[t], pairs, scales);
      }
    }
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * y[t][b].d), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = Hsum512(acc[t]) + Hsum128(acc_min[t]);
}

// Q6_K: each 6-bit value q (0..63) stands for q - 32. The products take q as
// unsigned and subtract 32 * sum_g scale_g * (sum of group g's activations)
// once per block, from the activation block's 16-element sums.
template <int NT>
void DotQ6_K(const void* w, const void* const* acts, int64_t n, float* out) {
  const BlockQ6_K* x = static_cast<const BlockQ6_K*>(w);
  const BlockQ8_K* y[NT];
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const BlockQ8_K*>(acts[t]);
    acc[t] = _mm512_setzero_ps();
  }
  // 16-element groups 4k..4k+3: 8 int16 pair positions each.
  const __m512i spread[4] = {SpreadIndex(0, 4), SpreadIndex(4, 4), SpreadIndex(8, 4),
                             SpreadIndex(12, 4)};
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const __m256i scales16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].scales)));
    __m512i sumi[NT];
    for (int t = 0; t < NT; ++t) {
      // 32 * sum_g scale_g * bsum_g, exact in int32, taken off up front.
      const __m256i offset =
          _mm256_slli_epi32(_mm256_madd_epi16(scales16, Load256(y[t][b].bsums)), 5);
      sumi[t] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(offset));
    }
    for (int half = 0; half < 2; ++half) {
      __m256i q[4];
      UnpackQ6Half(x[b], half, q);
      // Elements 128 half + 0..63 and + 64..127, each four 16-element groups.
      const __m512i q01 = _mm512_inserti64x4(_mm512_zextsi256_si512(q[0]), q[1], 1);
      const __m512i q23 = _mm512_inserti64x4(_mm512_zextsi256_si512(q[2]), q[3], 1);
      const __m512i scales01 = SpreadScales(spread[2 * half], scales16);
      const __m512i scales23 = SpreadScales(spread[2 * half + 1], scales16);
      for (int t = 0; t < NT; ++t) {
        const int8_t* q8 = y[t][b].qs + 128 * half;
        sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(q01, Load512(q8)), scales01);
        sumi[t] =
            _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(q23, Load512(q8 + 64)), scales23);
      }
    }
    const float d = Half(x[b].d);
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * y[t][b].d), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = Hsum512(acc[t]);
}

}  // namespace

MultiDotFn GetMultiDotAvx512Vnni(DType weight_type) {
  switch (weight_type) {
    case DType::kQ8_0:
      return ForGroupSize<DotQ8_0<1>, DotQ8_0<2>, DotQ8_0<3>, DotQ8_0<4>>;
    case DType::kQ4_K:
      return ForGroupSize<DotQ4_K<1>, DotQ4_K<2>, DotQ4_K<3>, DotQ4_K<4>>;
    case DType::kQ6_K:
      return ForGroupSize<DotQ6_K<1>, DotQ6_K<2>, DotQ6_K<3>, DotQ6_K<4>>;
    default:
      return nullptr;
  }
}

}  // namespace chord::kernels
