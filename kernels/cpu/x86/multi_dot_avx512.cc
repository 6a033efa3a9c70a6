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
// Integer parts: the K-quants hold a block's 256 values (weights and
// activations alike) in four 64-byte registers in "group-lane" order: int32
// lane L of register k holds elements 16L + 4k .. 16L + 4k + 3, so a lane
// meets one 16-element group, and so one weight scale, in all four registers.
// vpdpbusd (unsigned weight x signed activation, four products a lane) then
// sums the whole block into one register per token, and the scales apply once
// per block and lane in float: four integer instructions per 256 products and
// token, and three float ones (scale, convert, FMA) plus the FMA of the
// per-group correction. Unpacking the weights into that order (dword
// permutes and shifts) is done once per block for the whole token group.
//
// Groups of up to 8 tokens share each unpacked weight block, and groups of 6
// or more take two weight rows a call, sharing each token's activation loads
// (MultiDot::two_rows); every (row, token) has its own accumulators and the
// same instruction sequence whatever the group or the number of rows (batch
// invariance).
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
  int8_t qs[kQKK];              // group-lane order (see above)
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
    // Register k, lane L <- elements 16L + 4k .. + 3.
    for (int k = 0; k < 4; ++k) {
      for (int lane = 0; lane < 16; ++lane)
        std::memcpy(prepared[b].qs + 64 * k + 4 * lane, in[b].qs + 16 * lane + 4 * k, 4);
    }
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

// A vector of 16 int32 lanes, lane L = f(L).
template <class F>
inline __m512i LaneVector(F f) {
  alignas(64) int32_t lanes[16];
  for (int lane = 0; lane < 16; ++lane) lanes[lane] = f(lane);
  return _mm512_load_si512(lanes);
}

// The per-block lookups of the group-lane order, built once per call.
// Q4_K/Q5_K: lane L of register k is sub-block L / 2, elements 16 (L % 2) +
// 4k .. + 3: dword 8 (L / 4) + 4 (L % 2) + k of qs, low nibbles for even
// sub-blocks and high ones for odd; the fifth bits are dword 4 (L % 2) + k of
// qh, bit L / 2 of each byte.
struct Q45Lanes {
  __m512i qs_dword[4], qh_dword[4];
  __m512i nibble_shift = LaneVector([](int l) { return (l / 2) % 2 == 1 ? 4 : 0; });
  __m512i sub_block = LaneVector([](int l) { return l / 2; });
  // 16-element group g belongs to sub-block g / 2, whose min is lane 8 + g / 2
  // of the unpacked scales and mins.
  __m512i min_of_group = LaneVector([](int l) { return 8 + l / 2; });
  Q45Lanes() {
    for (int k = 0; k < 4; ++k) {
      qs_dword[k] = LaneVector([k](int l) { return 8 * (l / 4) + 4 * (l % 2) + k; });
      qh_dword[k] = LaneVector([k](int l) { return 4 * (l % 2) + k; });
    }
  }
};

// Q6_K: lane L of register k is group L, elements 16L + 4k .. + 3, which lie in
// half H = L / 8, run r = (L % 8) / 2 (UnpackQ6Half's order): the low four bits
// are dword 16H + 8 (r % 2) + 4 (L % 2) + k of ql (high nibbles for r >= 2), the
// top two bits 2r, 2r + 1 of dword 8H + 4 (L % 2) + k of qh.
struct Q6Lanes {
  __m512i ql_dword[4], qh_dword[4];
  __m512i ql_shift = LaneVector([](int l) { return (l % 8) / 2 >= 2 ? 4 : 0; });
  __m512i qh_shift = LaneVector([](int l) { return 2 * ((l % 8) / 2); });
  Q6Lanes() {
    for (int k = 0; k < 4; ++k) {
      ql_dword[k] =
          LaneVector([k](int l) { return 16 * (l / 8) + 8 * ((l % 8) / 2 % 2) + 4 * (l % 2) + k; });
      qh_dword[k] = LaneVector([k](int l) { return 8 * (l / 8) + 4 * (l % 2) + k; });
    }
  }
};

// acc += float(sumi) * d * y.d, then + per_group * y.group_sums: the block's
// integer sums by lane, each with its lane's float scale d, and the block's
// per-group correction (Q4_K mins, Q6_K offset).
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
  static constexpr bool kKQuant = false;
  static __m256i Values(const Block& block) { return Load256(block.qs); }
};
struct Q4_0Weights {
  using Block = BlockQ4_0;
  static constexpr bool kKQuant = false;
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

// One K-quant block of a weight row, unpacked for the token loop: its values
// in group-lane order, each lane's float scale, and the per-group factor of
// y.group_sums (Q4_K/Q5_K: -dmin * min; Q6_K: -32 * d * scale).
struct KBlock {
  __m512i q[4];
  __m512 d, per_group;
};

// Q4_K, and Q5_K (kFiveBit): the fifth bit of each value comes from qh, bit
// j of byte i for element i of sub-block j.
template <bool kFiveBit>
struct Q45_KWeights {
  using Block = std::conditional_t<kFiveBit, BlockQ5_K, BlockQ4_K>;
  using Lanes = Q45Lanes;
  static constexpr bool kKQuant = true;
  static void Unpack(const Block& x, const Lanes& lanes, KBlock& out) {
    // Lanes 0..7: the eight scales, 8..15: the eight mins.
    const __m512i scales_mins = _mm512_cvtepi16_epi32(UnpackScalesMins(x.scales));
    out.d =
        _mm512_mul_ps(_mm512_set1_ps(Half(x.d)),
                      _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(lanes.sub_block, scales_mins)));
    out.per_group = _mm512_mul_ps(
        _mm512_set1_ps(-Half(x.dmin)),
        _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(lanes.min_of_group, scales_mins)));
    const __m512i low4 = _mm512_set1_epi8(0xF);
    const __m512i qs_low = Load512(x.qs), qs_high = Load512(x.qs + 64);
    for (int k = 0; k < 4; ++k) {
      const __m512i bytes = _mm512_permutex2var_epi32(qs_low, lanes.qs_dword[k], qs_high);
      out.q[k] = _mm512_and_si512(_mm512_srlv_epi32(bytes, lanes.nibble_shift), low4);
      if constexpr (kFiveBit) {
        const __m512i qh =
            _mm512_permutexvar_epi32(lanes.qh_dword[k], _mm512_zextsi256_si512(Load256(x.qh)));
        const __m512i bit = _mm512_slli_epi32(_mm512_srlv_epi32(qh, lanes.sub_block), 4);
        // q | (bit & 0x10)
        out.q[k] = _mm512_ternarylogic_epi32(out.q[k], bit, _mm512_set1_epi8(0x10), 0xF8);
      }
    }
  }
};

// Q6_K: each 6-bit value q (0..63) stands for q - 32. The products take q as
// unsigned; the -32 is -32 * d * sum_g scale_g * (group g's activation sum),
// one FMA with y.group_sums per block and token.
struct Q6_KWeights {
  using Block = BlockQ6_K;
  using Lanes = Q6Lanes;
  static constexpr bool kKQuant = true;
  static void Unpack(const Block& x, const Lanes& lanes, KBlock& out) {
    const __m512 scales = _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.scales))));
    const float d = Half(x.d);
    out.d = _mm512_mul_ps(_mm512_set1_ps(d), scales);
    out.per_group = _mm512_mul_ps(_mm512_set1_ps(-32.0f * d), scales);
    const __m512i low4 = _mm512_set1_epi8(0xF), bits45 = _mm512_set1_epi8(0x30);
    const __m512i ql_low = Load512(x.ql), ql_high = Load512(x.ql + 64), qh = Load512(x.qh);
    for (int k = 0; k < 4; ++k) {
      const __m512i low = _mm512_srlv_epi32(
          _mm512_permutex2var_epi32(ql_low, lanes.ql_dword[k], ql_high), lanes.ql_shift);
      const __m512i high = _mm512_and_si512(
          _mm512_slli_epi32(
              _mm512_srlv_epi32(_mm512_permutexvar_epi32(lanes.qh_dword[k], qh), lanes.qh_shift),
              4),
          bits45);
      // (low & 0xF) | high
      out.q[k] = _mm512_ternarylogic_epi32(low, high, low4, 0xEC);
    }
  }
};

// Rows 0..NR-1 of a K-quant matrix at w (row_bytes apart) against NT tokens of
// prepared Q8_K activations: out[r][t]. Each block is unpacked once for the
// group; the rows share each token's activation loads; every (row, token) sum
// takes the same instructions whatever NR and NT are.
template <class Weights, int NR, int NT>
void DotKBlocks(const void* w, int64_t row_bytes, const void* const* acts, int64_t n,
                float* const* out) {
  using Block = typename Weights::Block;
  const Block* x[NR];
  for (int r = 0; r < NR; ++r)
    x[r] = reinterpret_cast<const Block*>(static_cast<const uint8_t*>(w) + r * row_bytes);
  const PreparedQ8K* y[NT];
  __m512 acc[NR][NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const PreparedQ8K*>(acts[t]);
    for (int r = 0; r < NR; ++r) acc[r][t] = _mm512_setzero_ps();
  }
  const typename Weights::Lanes lanes;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    KBlock block[NR];
    for (int r = 0; r < NR; ++r) Weights::Unpack(x[r][b], lanes, block[r]);
    for (int t = 0; t < NT; ++t) {
      const PreparedQ8K& a = y[t][b];
      for (int r = 0; r < NR; ++r) {
        __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), block[r].q[0], Load512(a.qs));
        for (int k = 1; k < 4; ++k)
          sum = _mm512_dpbusd_epi32(sum, block[r].q[k], Load512(a.qs + 64 * k));
        acc[r][t] = AccumulateBlock(acc[r][t], sum, block[r].d, block[r].per_group, a);
      }
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) out[r][t] = Hsum512(acc[r][t]);
  }
}

// The weight type's kernel over NR rows.
template <class Weights, int NR, int NT>
void DotRows(const void* w, int64_t row_bytes, const void* const* acts, int64_t n,
             float* const* out) {
  if constexpr (Weights::kKQuant) {
    DotKBlocks<Weights, NR, NT>(w, row_bytes, acts, n, out);
  } else {
    DotPairs<Weights, NR, NT>(w, row_bytes, acts, n, out);
  }
}

template <class Weights, int NT>
void DotOneRow(const void* w, const void* const* acts, int64_t n, float* out) {
  float* const rows[1] = {out};
  DotRows<Weights, 1, NT>(w, 0, acts, n, rows);
}

template <class Weights, int NT>
void DotTwoRows(const void* w, int64_t row_bytes, const void* const* acts, int64_t n, float* first,
                float* second) {
  float* const rows[2] = {first, second};
  DotRows<Weights, 2, NT>(w, row_bytes, acts, n, rows);
}

// The MultiDot of a weight type: one row or two a call, groups of 1..8 tokens.
template <class Weights>
MultiDot KernelFor() {
  MultiDot multi{
      ForGroupSize<DotOneRow<Weights, 1>, DotOneRow<Weights, 2>, DotOneRow<Weights, 3>,
                   DotOneRow<Weights, 4>, DotOneRow<Weights, 5>, DotOneRow<Weights, 6>,
                   DotOneRow<Weights, 7>, DotOneRow<Weights, 8>>,
      PreparedQ8_0Bytes, PrepareQ8_0,
      ForGroupSizeTwoRows<DotTwoRows<Weights, 1>, DotTwoRows<Weights, 2>, DotTwoRows<Weights, 3>,
                          DotTwoRows<Weights, 4>, DotTwoRows<Weights, 5>, DotTwoRows<Weights, 6>,
                          DotTwoRows<Weights, 7>, DotTwoRows<Weights, 8>>};
  if constexpr (Weights::kKQuant) {
    multi.prepared_bytes = PreparedQ8KBytes;
    multi.prepare = PrepareQ8K;
  }
  return multi;
}

}  // namespace

MultiDot GetMultiDotAvx512Vnni(DType weight_type) {
  switch (weight_type) {
    case DType::kQ8_0:
      return KernelFor<Q8_0Weights>();
    case DType::kQ4_0:
      return KernelFor<Q4_0Weights>();
    case DType::kQ4_K:
      return KernelFor<Q45_KWeights<false>>();
    case DType::kQ5_K:
      return KernelFor<Q45_KWeights<true>>();
    case DType::kQ6_K:
      return KernelFor<Q6_KWeights>();
    default:
      return {};
  }
}

}  // namespace chord::kernels
