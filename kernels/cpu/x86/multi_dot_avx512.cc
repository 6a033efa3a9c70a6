// AVX-512 (F, BW, VL) + VNNI group dot products (see multi_dot.h) for Q4_0,
// Q8_0, Q4_K, Q5_K and Q6_K weights; the other types keep their AVX2 kernels.
// Built with those target flags and -ffp-contract=off; only reached after a
// CPUID check.
//
// These kernels read prepared activations (MultiDot::prepare): each quantized
// row is converted once per product so that what depends on the activations
// alone is not recomputed for every weight row:
// - K-quants (Q8_K rows): per 16-element group, d * (sum of the group's
//   quantized values) as a float, which turns the Q4_K/Q5_K min term and the
//   Q6_K minus-32 offset into one 16-lane FMA per block and token;
// - Q8_0 (for Q8_0 and Q4_0 weights): the values plus 128 as unsigned bytes
//   (vpdpbusd wants one unsigned
//   operand: (q + 128) * w summed, minus 128 * sum(w), which the weight row
//   gives once for every token), two blocks interleaved so that they go
//   through one 64-byte register, and the scales as floats.
//
// Integer parts: the K-quants take a 64-element slice of a block (two Q4_K/Q5_K
// sub-blocks, four Q6_K groups) in one register: maddubs (unsigned weight x
// signed activation -> int16 pairs, which cannot saturate for these ranges),
// then vpdpwssd multiplies the pairs by the sub-block scales and accumulates
// int32. The float part is one multiply and two FMAs per block and token.
//
// Groups of up to 8 tokens share each unpacked weight block; every token has
// its own accumulators and the same instruction sequence whatever the group
// (batch invariance).
#include <immintrin.h>

#include <cstring>
#include <type_traits>

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

using quant::BlockQ4_0;
using quant::BlockQ4_K;
using quant::BlockQ5_K;
using quant::BlockQ6_K;
using quant::BlockQ8_0;
using quant::BlockQ8_K;
using quant::kQK;
using quant::kQKK;

// A Q8_K activation block as the K-quant kernels read it.
struct alignas(64) PreparedQ8K {
  int8_t qs[kQKK];
  float group_sums[kQKK / 16];  // d * (sum of the 16 quantized values of group g)
  float d;
};
static_assert(sizeof(PreparedQ8K) == 384);

// Q8_0 activations go through the kernel two blocks at a time, with their
// 4-byte runs interleaved (InterleaveDwords) so that the even int32 lanes of one
// vpdpbusd sum the first block and the odd lanes the second: the lanes' scales
// are then one 8-byte pair of floats, broadcast. A prepared row is the
// interleaved values plus 128 (64 bytes a pair; an odd row's last pair ends in
// a zero block), then the pairs' scales (two floats a pair).
int64_t Q8_0Pairs(int64_t n) { return (n / kQK + 1) / 2; }

int64_t PreparedQ8KBytes(int64_t n) { return n / kQKK * int64_t{sizeof(PreparedQ8K)}; }

void PrepareQ8K(const void* quantized, int64_t n, void* out) {
  const auto* in = static_cast<const BlockQ8_K*>(quantized);
  auto* prepared = static_cast<PreparedQ8K*>(out);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    std::memcpy(prepared[b].qs, in[b].qs, kQKK);
    for (int g = 0; g < kQKK / 16; ++g)
      prepared[b].group_sums[g] = in[b].d * static_cast<float>(in[b].bsums[g]);
    prepared[b].d = in[b].d;
  }
}

int64_t PreparedQ8_0Bytes(int64_t n) {
  const int64_t bytes = Q8_0Pairs(n) * (2 * kQK + 2 * int64_t{sizeof(float)});
  return (bytes + 63) & ~int64_t{63};
}

// Dword k of `first` to dword 2k of the result, of `second` to 2k + 1.
inline __m512i InterleaveDwords(__m256i first, __m256i second) {
  const __m512i order = _mm512_set_epi32(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
  return _mm512_permutexvar_epi32(order,
                                  _mm512_inserti64x4(_mm512_zextsi256_si512(first), second, 1));
}

void PrepareQ8_0(const void* quantized, int64_t n, void* out) {
  const auto* in = static_cast<const BlockQ8_0*>(quantized);
  uint8_t* qs = static_cast<uint8_t*>(out);
  float* d = reinterpret_cast<float*>(qs + Q8_0Pairs(n) * 2 * kQK);
  const int64_t blocks = n / kQK;
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t p = 0; p < Q8_0Pairs(n); ++p) {
    const bool both = 2 * p + 1 < blocks;
    const __m256i second = both ? Load256(in[2 * p + 1].qs) : _mm256_setzero_si256();
    // q + 128 as an unsigned byte is q with its top bit flipped.
    _mm512_store_si512(qs + p * 2 * kQK,
                       _mm512_xor_si512(InterleaveDwords(Load256(in[2 * p].qs), second), bias));
    d[2 * p] = Half(in[2 * p].d);
    d[2 * p + 1] = both ? Half(in[2 * p + 1].d) : 0.0f;
  }
}

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

// acc += float(sumi) * d * y.d, then + per_group * y.group_sums: the block's
// scaled integer sum and its per-group correction (Q4_K mins, Q6_K offset).
inline __m512 AccumulateBlock(__m512 acc, __m512i sumi, __m512 d, __m512 per_group,
                              const PreparedQ8K& y) {
  const __m512 scale = _mm512_mul_ps(d, _mm512_set1_ps(y.d));
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), scale, acc);
  return _mm512_fmadd_ps(per_group, _mm512_load_ps(y.group_sums), acc);
}

// The weight types that take Q8_0 activations: a block's 32 values as signed
// bytes in element order, and its half-float scale.
struct Q8_0Weights {
  using Block = BlockQ8_0;
  static __m256i Values(const Block& block) { return Load256(block.qs); }
};
struct Q4_0Weights {
  using Block = BlockQ4_0;
  // Elements 0..15 in the low nibbles, 16..31 in the high ones; value - 8.
  static __m256i Values(const Block& block) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block.qs));
    const __m256i nibbles = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
                                             _mm256_set1_epi8(0xF));
    return _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8));
  }
};

// Rows 0..NR-1 of the matrix at w (row_bytes apart) against NT tokens of Q8_0
// activations: out[r][t]. Two rows share each token's activation load and
// scale broadcast; every row's sums take the same instructions whatever NR is.
template <class Weights, int NR, int NT>
void DotPairs(const void* w, int64_t row_bytes, const void* const* acts, int64_t n,
              float* const* out) {
  using Block = typename Weights::Block;
  const Block* x[NR];
  for (int r = 0; r < NR; ++r)
    x[r] = reinterpret_cast<const Block*>(static_cast<const uint8_t*>(w) + r * row_bytes);
  const int64_t pairs = Q8_0Pairs(n);
  // Every row's scales start at the same offset: one pointer per token (and
  // offsets shared by all tokens) keeps the addresses in registers.
  const int64_t scales_offset = pairs * 2 * kQK;
  const uint8_t* y[NT];
  __m512 acc[NR][NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const uint8_t*>(acts[t]);
    for (int r = 0; r < NR; ++r) acc[r][t] = _mm512_setzero_ps();
  }
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  const int64_t blocks = n / kQK;
  for (int64_t p = 0; p < pairs; ++p) {
    const bool both = 2 * p + 1 < blocks;
    __m512i qx[NR], start[NR];
    __m512 dx[NR];
    for (int r = 0; r < NR; ++r) {
      const Block& first = x[r][2 * p];
      // The second block's half stays zero past the end of an odd row.
      const __m256i second = both ? Weights::Values(x[r][2 * p + 1]) : _mm256_setzero_si256();
      qx[r] = InterleaveDwords(Weights::Values(first), second);
      const uint32_t halves = first.d | (both ? uint32_t{x[r][2 * p + 1].d} << 16 : 0u);
      dx[r] = _mm512_cvtph_ps(_mm256_set1_epi32(static_cast<int>(halves)));
      // -128 * sum(w), four weights a lane: what the +128 of the activations adds.
      start[r] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                  _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, qx[r]));
    }
    for (int t = 0; t < NT; ++t) {
      const __m512i a = Load512(y[t] + p * 2 * kQK);
      double scales;  // the pair's two floats, broadcast as one 8-byte unit
      std::memcpy(&scales, y[t] + scales_offset + 8 * p, sizeof(scales));
      const __m512 dy = _mm512_castpd_ps(_mm512_set1_pd(scales));
      for (int r = 0; r < NR; ++r) {
        const __m512i dot = _mm512_dpbusd_epi32(start[r], a, qx[r]);
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dx[r], dy), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) out[r][t] = Hsum512(acc[r][t]);
  }
}

template <class Weights, int NT>
void DotOneRow(const void* w, const void* const* acts, int64_t n, float* out) {
  float* const rows[1] = {out};
  DotPairs<Weights, 1, NT>(w, 0, acts, n, rows);
}

template <class Weights, int NT>
void DotTwoRows(const void* w, int64_t row_bytes, const void* const* acts, int64_t n, float* first,
                float* second) {
  float* const rows[2] = {first, second};
  DotPairs<Weights, 2, NT>(w, row_bytes, acts, n, rows);
}

// The MultiDot of a weight type over Q8_0 activations.
template <class Weights>
MultiDot PairsKernel() {
  return {
      ForGroupSize<DotOneRow<Weights, 1>, DotOneRow<Weights, 2>, DotOneRow<Weights, 3>,
                   DotOneRow<Weights, 4>, DotOneRow<Weights, 5>, DotOneRow<Weights, 6>,
                   DotOneRow<Weights, 7>, DotOneRow<Weights, 8>>,
      PreparedQ8_0Bytes, PrepareQ8_0,
      ForGroupSizeTwoRows<DotTwoRows<Weights, 1>, DotTwoRows<Weights, 2>, DotTwoRows<Weights, 3>,
                          DotTwoRows<Weights, 4>, DotTwoRows<Weights, 5>, DotTwoRows<Weights, 6>,
                          DotTwoRows<Weights, 7>, DotTwoRows<Weights, 8>>};
}

// Q4_K, and Q5_K (kFiveBit): the fifth bit of each value comes from qh, bit
// 2j of byte i for element i of sub-block 2j.
template <int NT, bool kFiveBit>
void DotQ45_K(const void* w, const void* const* acts, int64_t n, float* out) {
  using Block = std::conditional_t<kFiveBit, BlockQ5_K, BlockQ4_K>;
  const Block* x = static_cast<const Block*>(w);
  const PreparedQ8K* y[NT];
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const PreparedQ8K*>(acts[t]);
    acc[t] = _mm512_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0xF);
  // Sub-blocks 2j and 2j + 1: 16 int16 pair positions each.
  const __m512i spread[4] = {SpreadIndex(0, 2), SpreadIndex(2, 2), SpreadIndex(4, 2),
                             SpreadIndex(6, 2)};
  // 16-element group g belongs to sub-block g / 2, whose min is lane 8 + g / 2.
  const __m512i min_of_group =
      _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const __m256i scales_mins = UnpackScalesMins(x[b].scales);
    const __m512 d = _mm512_set1_ps(Half(x[b].d));
    // -dmin * m_(g/2) for each group g: the min term is its dot with y.group_sums.
    const __m512 mins = _mm512_mul_ps(_mm512_set1_ps(-Half(x[b].dmin)),
                                      _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(
                                          min_of_group, _mm512_cvtepi16_epi32(scales_mins))));
    __m512i sumi[NT];
    for (int t = 0; t < NT; ++t) sumi[t] = _mm512_setzero_si512();
    __m256i high_bits = _mm256_setzero_si256();
    if constexpr (kFiveBit) high_bits = Load256(x[b].qh);
    for (int j = 0; j < kQKK / 64; ++j) {
      // Elements 64j..64j+63: sub-block 2j in the low nibbles, 2j + 1 in the
      // high ones; the activations of both are 64 contiguous bytes.
      const __m256i q4 = Load256(x[b].qs + 32 * j);
      __m256i lo = _mm256_and_si256(q4, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
      if constexpr (kFiveBit) {
        const __m256i bit = _mm256_set1_epi8(1);
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(high_bits, bit), 4));
        high_bits = _mm256_srli_epi16(high_bits, 1);
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(high_bits, bit), 4));
        high_bits = _mm256_srli_epi16(high_bits, 1);
      }
      const __m512i nibbles = _mm512_inserti64x4(_mm512_zextsi256_si512(lo), hi, 1);
      const __m512i scales = SpreadScales(spread[j], scales_mins);
      for (int t = 0; t < NT; ++t) {
        const __m512i pairs = _mm512_maddubs_epi16(nibbles, Load512(y[t][b].qs + 64 * j));
        sumi[t] = _mm512_dpwssd_epi32(sumi[t], pairs, scales);
      }
    }
    for (int t = 0; t < NT; ++t) acc[t] = AccumulateBlock(acc[t], sumi[t], d, mins, y[t][b]);
  }
  for (int t = 0; t < NT; ++t) out[t] = Hsum512(acc[t]);
}

// Q6_K: each 6-bit value q (0..63) stands for q - 32. The products take q as
// unsigned; the -32 is -32 * d * sum_g scale_g * (group g's activation sum),
// one FMA with y.group_sums per block and token.
template <int NT>
void DotQ6_K(const void* w, const void* const* acts, int64_t n, float* out) {
  const BlockQ6_K* x = static_cast<const BlockQ6_K*>(w);
  const PreparedQ8K* y[NT];
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const PreparedQ8K*>(acts[t]);
    acc[t] = _mm512_setzero_ps();
  }
  // 16-element groups 4k..4k+3: 8 int16 pair positions each.
  const __m512i spread[4] = {SpreadIndex(0, 4), SpreadIndex(4, 4), SpreadIndex(8, 4),
                             SpreadIndex(12, 4)};
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const __m128i scales8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].scales));
    const __m256i scales16 = _mm256_cvtepi8_epi16(scales8);
    const float d_value = Half(x[b].d);
    const __m512 d = _mm512_set1_ps(d_value);
    const __m512 offsets = _mm512_mul_ps(_mm512_set1_ps(-32.0f * d_value),
                                         _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(scales8)));
    __m512i sumi[NT];
    for (int t = 0; t < NT; ++t) sumi[t] = _mm512_setzero_si512();
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
    for (int t = 0; t < NT; ++t) acc[t] = AccumulateBlock(acc[t], sumi[t], d, offsets, y[t][b]);
  }
  for (int t = 0; t < NT; ++t) out[t] = Hsum512(acc[t]);
}

}  // namespace

MultiDot GetMultiDotAvx512Vnni(DType weight_type) {
  switch (weight_type) {
    case DType::kQ8_0:
      return PairsKernel<Q8_0Weights>();
    case DType::kQ4_0:
      return PairsKernel<Q4_0Weights>();
    case DType::kQ4_K:
      return {ForGroupSize<DotQ45_K<1, false>, DotQ45_K<2, false>, DotQ45_K<3, false>,
                           DotQ45_K<4, false>, DotQ45_K<5, false>, DotQ45_K<6, false>,
                           DotQ45_K<7, false>, DotQ45_K<8, false>>,
              PreparedQ8KBytes, PrepareQ8K};
    case DType::kQ5_K:
      return {
          ForGroupSize<DotQ45_K<1, true>, DotQ45_K<2, true>, DotQ45_K<3, true>, DotQ45_K<4, true>,
                       DotQ45_K<5, true>, DotQ45_K<6, true>, DotQ45_K<7, true>, DotQ45_K<8, true>>,
          PreparedQ8KBytes, PrepareQ8K};
    case DType::kQ6_K:
      return {ForGroupSize<DotQ6_K<1>, DotQ6_K<2>, DotQ6_K<3>, DotQ6_K<4>, DotQ6_K<5>, DotQ6_K<6>,
                           DotQ6_K<7>, DotQ6_K<8>>,
              PreparedQ8KBytes, PrepareQ8K};
    default:
      return {};
  }
}

}  // namespace chord::kernels
