// What the x86 kernel files share: horizontal sums and maxima, loads, the
// Q4_K/Q5_K scale unpacking and min term, and the switch from a group size to
// a kernel instantiation.
//
// Each including file is built with its own target flags (AVX2, AVX-512), so
// everything here has internal linkage: every file gets its own copy compiled
// for its instruction set, and the linker can never hand an AVX-512 build of a
// helper to the AVX2 path (which runs on CPUs without AVX-512).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/quant/blocks.h"
#include "kernels/cpu/multi_dot.h"

namespace chord::kernels {
namespace {  // NOLINT(build/namespaces): internal linkage on purpose, see above.

inline float Half(uint16_t h) { return _cvtsh_ss(h); }

inline float Hsum128(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float Hsum(__m256 v) {
  return Hsum128(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

inline float Hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline __m256i Load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// The 8 six-bit scales (int16 lanes 0..7) and mins (lanes 8..15) of a
// Q4_K/Q5_K block.
inline __m256i UnpackScalesMins(const uint8_t* packed) {
  constexpr uint32_t kLow6 = 0x3f3f3f3f, kLow4 = 0x0f0f0f0f, kLow2 = 0x03030303;
  uint32_t u[4];
  std::memcpy(u, packed, 12);
  u[3] = ((u[2] >> 4) & kLow4) | (((u[1] >> 6) & kLow2) << 4);
  const uint32_t mins_lo = u[1] & kLow6;
  u[1] = (u[2] & kLow4) | (((u[0] >> 6) & kLow2) << 4);
  u[2] = mins_lo;
  u[0] &= kLow6;
  // u[0], u[1]: scales 0..7; u[2], u[3]: mins 0..7.
  return _mm256_cvtepu8_epi16(_mm_set_epi32(static_cast<int>(u[3]), static_cast<int>(u[2]),
                                            static_cast<int>(u[1]), static_cast<int>(u[0])));
}

// Shared by Q4_K and Q5_K: the min term -dmin * sum_j m_j * (sum of sub-block
// j's activations), added to acc.
inline __m128 MinTerm(__m256i scales_mins, const quant::BlockQ8_K& y, float dmin, __m128 acc) {
  const __m128i mins = _mm256_extracti128_si256(scales_mins, 1);
  const __m256i bsums = Load256(y.bsums);
  const __m128i q8s =
      _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
  const __m128i prod = _mm_madd_epi16(mins, q8s);
  return _mm_fmadd_ps(_mm_set1_ps(-dmin * y.d), _mm_cvtepi32_ps(prod), acc);
}

// The 128 six-bit values (0..63) of half `half` of a Q6_K block, as four runs
// of 32: q[r] holds elements 128 half + 32 r .. + 31.
inline void UnpackQ6Half(const quant::BlockQ6_K& x, int half, __m256i (&q)[4]) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  const __m256i m2 = _mm256_set1_epi8(3);
  const __m256i ql0 = Load256(x.ql + 64 * half);
  const __m256i ql1 = Load256(x.ql + 64 * half + 32);
  const __m256i qh = Load256(x.qh + 32 * half);
  q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
  q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
  q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
}

// One kernel instantiation per group size.
using GroupDotFn = void (*)(const void* w, const void* const* acts, int64_t n, float* out);

// A MultiDotFn from a kernel's instantiations for groups of 1..K (in order);
// a larger group runs as consecutive groups of K and one of the rest.
template <GroupDotFn... kernels>
void ForGroupSize(const void* w, const void* const* acts, int n_acts, int64_t n, float* out) {
  static constexpr GroupDotFn kBySize[] = {kernels...};
  constexpr int kWidest = static_cast<int>(sizeof...(kernels));
  for (int t0 = 0; t0 < n_acts; t0 += kWidest) {
    const int group = n_acts - t0 < kWidest ? n_acts - t0 : kWidest;
    kBySize[group - 1](w, acts + t0, n, out + t0);
  }
}

// The same for kernels over two weight rows (MultiDot::two_rows).
using TwoRowGroupDotFn = void (*)(const void* w, int64_t row_bytes, const void* const* acts,
                                  int64_t n, float* first, float* second);

template <TwoRowGroupDotFn... kernels>
void ForGroupSizeTwoRows(const void* w, int64_t row_bytes, const void* const* acts, int n_acts,
                         int64_t n, float* first, float* second) {
  static constexpr TwoRowGroupDotFn kBySize[] = {kernels...};
  constexpr int kWidest = static_cast<int>(sizeof...(kernels));
  for (int t0 = 0; t0 < n_acts; t0 += kWidest) {
    const int group = n_acts - t0 < kWidest ? n_acts - t0 : kWidest;
    kBySize[group - 1](w, row_bytes, acts + t0, n, first + t0, second + t0);
  }
}

}  // namespace
}  // namespace chord::kernels
