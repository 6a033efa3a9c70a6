// AVX2 + FMA + F16C group dot products (see multi_dot.h). Built with those
// target flags and -ffp-contract=off; only reached after a CPUID check.
//
// Integer parts follow the usual scheme for 8-bit activations: maddubs
// (unsigned weight byte x signed activation byte -> int16 pairs, which cannot
// saturate for these ranges: |sum| <= 2 * 63 * 128), madd to int32, one int32
// sum per block, then one float FMA per block into a per-row accumulator.
#include <immintrin.h>

#include <cstring>

#include "common/quant/blocks.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/multi_dot.h"
#include "kernels/cpu/x86/simd_common.h"

namespace chord::kernels {
namespace {

using quant::BlockQ4_0;
using quant::BlockQ4_K;
using quant::BlockQ5_K;
using quant::BlockQ6_K;
using quant::BlockQ8_0;
using quant::BlockQ8_K;
using quant::kQK;
using quant::kQKK;

// Sum of signed x * signed y over 32 bytes, as 8 int32 lanes (x != -128 or y
// small enough: |x| * |y| * 2 <= 32512 for activations in [-127, 127]).
inline __m256i DotSigned(__m256i abs_x, __m256i x, __m256i y) {
  const __m256i prod16 = _mm256_maddubs_epi16(abs_x, _mm256_sign_epi8(y, x));
  return _mm256_madd_epi16(prod16, _mm256_set1_epi16(1));
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
      const __m256i dot = DotSigned(ax, qx, Load256(y[t][b].qs));
      acc[t] =
          _mm256_fmadd_ps(_mm256_set1_ps(dx * Half(y[t][b].d)), _mm256_cvtepi32_ps(dot), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = Hsum(acc[t]);
}

template <int NT>
void DotQ4_0(const void* w, const void* const* acts, int64_t n, float* out) {
  const BlockQ4_0* x = static_cast<const BlockQ4_0*>(w);
  const BlockQ8_0* y[NT];
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const BlockQ8_0*>(acts[t]);
    acc[t] = _mm256_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0xF);
  const __m256i eight = _mm256_set1_epi8(8);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].qs));
    const __m256i nibbles =
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), m4);
    const __m256i qx = _mm256_sub_epi8(nibbles, eight);
    const __m256i ax = _mm256_sign_epi8(qx, qx);
    const float dx = Half(x[b].d);
    for (int t = 0; t < NT; ++t) {
      const __m256i dot = DotSigned(ax, qx, Load256(y[t][b].qs));
      acc[t] =
          _mm256_fmadd_ps(_mm256_set1_ps(dx * Half(y[t][b].d)), _mm256_cvtepi32_ps(dot), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = Hsum(acc[t]);
}

// Broadcasts int16 lane k (0..7) of each 128-bit half.
inline __m256i ScaleShuffle(int k) {
  return _mm256_set1_epi16(static_cast<int16_t>((2 * k) | ((2 * k + 1) << 8)));
}

template <int NT, bool kFiveBit>
void DotQ45_K(const void* w, const void* const* acts, int64_t n, float* out) {
  using Block = std::conditional_t<kFiveBit, BlockQ5_K, BlockQ4_K>;
  const Block* x = static_cast<const Block*>(w);
  const BlockQ8_K* y[NT];
  __m256 acc[NT];
  __m128 acc_min[NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const BlockQ8_K*>(acts[t]);
    acc[t] = _mm256_setzero_ps();
    acc_min[t] = _mm_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0xF);
  const __m256i bit = _mm256_set1_epi8(1);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const __m256i scales_mins = UnpackScalesMins(x[b].scales);
    const float d = Half(x[b].d);
    const float dmin = Half(x[b].dmin);
    for (int t = 0; t < NT; ++t) acc_min[t] = MinTerm(scales_mins, y[t][b], dmin, acc_min[t]);
    const __m256i scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(scales_mins));
    __m256i sumi[NT];
    for (int t = 0; t < NT; ++t) sumi[t] = _mm256_setzero_si256();
    __m256i high_bits = _mm256_setzero_si256();
    if constexpr (kFiveBit) high_bits = Load256(x[b].qh);
    for (int j = 0; j < kQKK / 64; ++j) {
      const __m256i scale_lo = _mm256_shuffle_epi8(scales, ScaleShuffle(2 * j));
      const __m256i scale_hi = _mm256_shuffle_epi8(scales, ScaleShuffle(2 * j + 1));
      const __m256i q4 = Load256(x[b].qs + 32 * j);
      __m256i lo = _mm256_and_si256(q4, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
      if constexpr (kFiveBit) {
        lo = _mm256_add_epi8(lo, _mm256_slli_epi16(_mm256_and_si256(high_bits, bit), 4));
        high_bits = _mm256_srli_epi16(high_bits, 1);
        hi = _mm256_add_epi8(hi, _mm256_slli_epi16(_mm256_and_si256(high_bits, bit), 4));
        high_bits = _mm256_srli_epi16(high_bits, 1);
      }
      for (int t = 0; t < NT; ++t) {
        const int8_t* q8 = y[t][b].qs + 64 * j;
        const __m256i p_lo = _mm256_madd_epi16(scale_lo, _mm256_maddubs_epi16(lo, Load256(q8)));
        const __m256i p_hi =
            _mm256_madd_epi16(scale_hi, _mm256_maddubs_epi16(hi, Load256(q8 + 32)));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p_lo, p_hi));
      }
    }
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y[t][b].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = Hsum(acc[t]) + Hsum128(acc_min[t]);
}

template <int NT>
void DotQ6_K(const void* w, const void* const* acts, int64_t n, float* out) {
  const BlockQ6_K* x = static_cast<const BlockQ6_K*>(w);
  const BlockQ8_K* y[NT];
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const BlockQ8_K*>(acts[t]);
    acc[t] = _mm256_setzero_ps();
  }
  const __m256i m32 = _mm256_set1_epi8(32);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const __m128i scales8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].scales));
    __m256i sumi[NT];
    for (int t = 0; t < NT; ++t) sumi[t] = _mm256_setzero_si256();
    for (int half = 0; half < 2; ++half) {
      __m256i q[4];
      UnpackQ6Half(x[b], half, q);
      __m256i sc[4];
      for (int i = 0; i < 4; ++i) {
        // int16 lanes 0..7: scale of group 8*half + 2i, lanes 8..15: group 8*half + 2i + 1.
        const int g = 8 * half + 2 * i;
        const __m128i pick =
            _mm_set_epi64x(0x0101010101010101LL * (g + 1), 0x0101010101010101LL * g);
        sc[i] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, pick));
      }
      for (int t = 0; t < NT; ++t) {
        const int8_t* q8 = y[t][b].qs + 128 * half;
        for (int i = 0; i < 4; ++i) {
          const __m256i a = Load256(q8 + 32 * i);
          // (q - 32) * a = q * a - 32 * a; both maddubs stay within int16.
          const __m256i p =
              _mm256_sub_epi16(_mm256_maddubs_epi16(q[i], a), _mm256_maddubs_epi16(m32, a));
          sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(sc[i], p));
        }
      }
    }
    const float d = Half(x[b].d);
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y[t][b].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = Hsum(acc[t]);
}

// Float weights (F32 or F16) with float activations: 16 elements per step in
// two accumulators, the remainder in scalar order after the vector sum.
template <int NT, bool kHalf>
void DotFloat(const void* w, const void* const* acts, int64_t n, float* out) {
  const float* a[NT];
  __m256 acc0[NT], acc1[NT];
  for (int t = 0; t < NT; ++t) {
    a[t] = static_cast<const float*>(acts[t]);
    acc0[t] = _mm256_setzero_ps();
    acc1[t] = _mm256_setzero_ps();
  }
  auto load = [w](int64_t i) {
    if constexpr (kHalf) {
      return _mm256_cvtph_ps(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i)));
    } else {
      return _mm256_loadu_ps(static_cast<const float*>(w) + i);
    }
  };
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 w0 = load(i);
    const __m256 w1 = load(i + 8);
    for (int t = 0; t < NT; ++t) {
      acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(a[t] + i), acc0[t]);
      acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(a[t] + i + 8), acc1[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    float sum = Hsum(_mm256_add_ps(acc0[t], acc1[t]));
    for (int64_t k = i; k < n; ++k) {
      const float wk =
          kHalf ? Half(static_cast<const uint16_t*>(w)[k]) : static_cast<const float*>(w)[k];
      sum += wk * a[t][k];
    }
    out[t] = sum;
  }
}

}  // namespace

MultiDotFn GetMultiDotAvx2(DType weight_type) {
  switch (weight_type) {
    case DType::kF32:
      return ForGroupSize<DotFloat<1, false>, DotFloat<2, false>, DotFloat<3, false>,
                          DotFloat<4, false>>;
    case DType::kF16:
      return ForGroupSize<DotFloat<1, true>, DotFloat<2, true>, DotFloat<3, true>,
                          DotFloat<4, true>>;
    case DType::kQ4_0:
      return ForGroupSize<DotQ4_0<1>, DotQ4_0<2>, DotQ4_0<3>, DotQ4_0<4>>;
    case DType::kQ8_0:
      return ForGroupSize<DotQ8_0<1>, DotQ8_0<2>, DotQ8_0<3>, DotQ8_0<4>>;
    case DType::kQ4_K:
      return ForGroupSize<DotQ45_K<1, false>, DotQ45_K<2, false>, DotQ45_K<3, false>,
                          DotQ45_K<4, false>>;
    case DType::kQ5_K:
      return ForGroupSize<DotQ45_K<1, true>, DotQ45_K<2, true>, DotQ45_K<3, true>,
                          DotQ45_K<4, true>>;
    case DType::kQ6_K:
      return ForGroupSize<DotQ6_K<1>, DotQ6_K<2>, DotQ6_K<3>, DotQ6_K<4>>;
    default:
      return nullptr;
  }
}

}  // namespace chord::kernels
