#include "kernels/cpu/vec_dot.h"

#include <cstring>

#include "common/quant/blocks.h"
#include "common/quant/quant.h"
#include "kernels/cpu/activation_quant.h"

namespace chord::kernels {
namespace {

using quant::BlockQ4_0;
using quant::BlockQ4_1;
using quant::BlockQ4_K;
using quant::BlockQ5_0;
using quant::BlockQ5_1;
using quant::BlockQ5_K;
using quant::BlockQ6_K;
using quant::BlockQ8_0;
using quant::BlockQ8_K;
using quant::HalfToFloat;
using quant::kQK;
using quant::kQKK;

float DotF32(const void* w, const void* a, int64_t n) {
  const float* x = static_cast<const float*>(w);
  const float* y = static_cast<const float*>(a);
  // Eight independent partial sums in a fixed order: vectorizable, deterministic.
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += x[i + k] * y[i + k];
  }
  float sum = 0.0f;
  for (; i < n; ++i) sum += x[i] * y[i];
  for (int k = 0; k < 8; ++k) sum += acc[k];
  return sum;
}

template <float (*kToFloat)(uint16_t)>
float DotHalfLike(const void* w, const void* a, int64_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(w);
  const float* y = static_cast<const float*>(a);
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += kToFloat(x[i + k]) * y[i + k];
  }
  float sum = 0.0f;
  for (; i < n; ++i) sum += kToFloat(x[i]) * y[i];
  for (int k = 0; k < 8; ++k) sum += acc[k];
  return sum;
}

float DotQ4_0(const void* w, const void* a, int64_t n) {
  const BlockQ4_0* x = static_cast<const BlockQ4_0*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      isum += ((x[b].qs[j] & 0xF) - 8) * y[b].qs[j];
      isum += ((x[b].qs[j] >> 4) - 8) * y[b].qs[j + kQK / 2];
    }
    sum += static_cast<float>(isum) * (HalfToFloat(x[b].d) * HalfToFloat(y[b].d));
  }
  return sum;
}

float DotQ4_1(const void* w, const void* a, int64_t n) {
  const BlockQ4_1* x = static_cast<const BlockQ4_1*>(w);
  const BlockQ8_1* y = static_cast<const BlockQ8_1*>(a);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      isum += (x[b].qs[j] & 0xF) * y[b].qs[j];
      isum += (x[b].qs[j] >> 4) * y[b].qs[j + kQK / 2];
    }
    sum += static_cast<float>(isum) * (HalfToFloat(x[b].d) * HalfToFloat(y[b].d)) +
           HalfToFloat(x[b].m) * HalfToFloat(y[b].s);
  }
  return sum;
}

inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

float DotQ5_0(const void* w, const void* a, int64_t n) {
  const BlockQ5_0* x = static_cast<const BlockQ5_0*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    const uint32_t qh = LoadU32(x[b].qh);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (x[b].qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (x[b].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      isum += (lo - 16) * y[b].qs[j] + (hi - 16) * y[b].qs[j + kQK / 2];
    }
    sum += static_cast<float>(isum) * (HalfToFloat(x[b].d) * HalfToFloat(y[b].d));
  }
  return sum;
}

float DotQ5_1(const void* w, const void* a, int64_t n) {
  const BlockQ5_1* x = static_cast<const BlockQ5_1*>(w);
  const BlockQ8_1* y = static_cast<const BlockQ8_1*>(a);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    const uint32_t qh = LoadU32(x[b].qh);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (x[b].qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (x[b].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      isum += lo * y[b].qs[j] + hi * y[b].qs[j + kQK / 2];
    }
    sum += static_cast<float>(isum) * (HalfToFloat(x[b].d) * HalfToFloat(y[b].d)) +
           HalfToFloat(x[b].m) * HalfToFloat(y[b].s);
  }
  return sum;
}

float DotQ8_0(const void* w, const void* a, int64_t n) {
  const BlockQ8_0* x = static_cast<const BlockQ8_0*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    int isum = 0;
    for (int j = 0; j < kQK; ++j) isum += x[b].qs[j] * y[b].qs[j];
    sum += static_cast<float>(isum) * (HalfToFloat(x[b].d) * HalfToFloat(y[b].d));
  }
  return sum;
}

// Sum over the 8 sub-blocks of a Q4_K/Q5_K block of min_j * (sum of its activations).
int KQuantMinSum(const uint8_t* packed_scales, const BlockQ8_K& y) {
  int sum = 0;
  for (int j = 0; j < kQKK / 32; ++j) {
    uint8_t scale, min;
    quant::GetScaleMinK4(j, packed_scales, &scale, &min);
    sum += min * (y.bsums[2 * j] + y.bsums[2 * j + 1]);
  }
  return sum;
}

float DotQ4_K(const void* w, const void* a, int64_t n) {
  const BlockQ4_K* x = static_cast<const BlockQ4_K*>(w);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(a);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const uint8_t* q4 = x[b].qs;
    const int8_t* q8 = y[b].qs;
    int isum = 0;
    for (int j = 0; j < kQKK / 64; ++j) {
      uint8_t sc_lo, m_lo, sc_hi, m_hi;
      quant::GetScaleMinK4(2 * j, x[b].scales, &sc_lo, &m_lo);
      quant::GetScaleMinK4(2 * j + 1, x[b].scales, &sc_hi, &m_hi);
      int lo = 0, hi = 0;
      for (int l = 0; l < 32; ++l) {
        lo += (q4[l] & 0xF) * q8[l];
        hi += (q4[l] >> 4) * q8[l + 32];
      }
      isum += sc_lo * lo + sc_hi * hi;
      q4 += 32;
      q8 += 64;
    }
    const float d = HalfToFloat(x[b].d) * y[b].d;
    const float dmin = HalfToFloat(x[b].dmin) * y[b].d;
    sum += d * static_cast<float>(isum) - dmin * static_cast<float>(KQuantMinSum(x[b].scales, y[b]));
  }
  return sum;
}

float DotQ5_K(const void* w, const void* a, int64_t n) {
  const BlockQ5_K* x = static_cast<const BlockQ5_K*>(w);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(a);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const uint8_t* q4 = x[b].qs;
    const uint8_t* qh = x[b].qh;
    const int8_t* q8 = y[b].qs;
    int isum = 0;
    for (int j = 0; j < kQKK / 64; ++j) {
      uint8_t sc_lo, m_lo, sc_hi, m_hi;
      quant::GetScaleMinK4(2 * j, x[b].scales, &sc_lo, &m_lo);
      quant::GetScaleMinK4(2 * j + 1, x[b].scales, &sc_hi, &m_hi);
      const uint8_t bit_lo = static_cast<uint8_t>(1u << (2 * j));
      const uint8_t bit_hi = static_cast<uint8_t>(1u << (2 * j + 1));
      int lo = 0, hi = 0;
      for (int l = 0; l < 32; ++l) {
        lo += ((q4[l] & 0xF) + ((qh[l] & bit_lo) ? 16 : 0)) * q8[l];
        hi += ((q4[l] >> 4) + ((qh[l] & bit_hi) ? 16 : 0)) * q8[l + 32];
      }
      isum += sc_lo * lo + sc_hi * hi;
      q4 += 32;
      q8 += 64;
    }
    const float d = HalfToFloat(x[b].d) * y[b].d;
    const float dmin = HalfToFloat(x[b].dmin) * y[b].d;
    sum += d * static_cast<float>(isum) - dmin * static_cast<float>(KQuantMinSum(x[b].scales, y[b]));
  }
  return sum;
}

float DotQ6_K(const void* w, const void* a, int64_t n) {
  const BlockQ6_K* x = static_cast<const BlockQ6_K*>(w);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(a);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    // Two halves of 128 elements; within a half, element l (0..31) of the four
    // 32-element quarters takes its low nibble from ql and two bits from qh.
    int isum = 0;
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = x[b].ql + 64 * half;
      const uint8_t* qh = x[b].qh + 32 * half;
      const int8_t* q8 = y[b].qs + 128 * half;
      const int8_t* sc = x[b].scales + 8 * half;
      int part[8] = {};  // per 16-element group
      for (int l = 0; l < 32; ++l) {
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        const int g = l / 16;
        part[g + 0] += q1 * q8[l];
        part[g + 2] += q2 * q8[l + 32];
        part[g + 4] += q3 * q8[l + 64];
        part[g + 6] += q4 * q8[l + 96];
      }
      for (int g = 0; g < 8; ++g) isum += sc[g] * part[g];
    }
    sum += HalfToFloat(x[b].d) * y[b].d * static_cast<float>(isum);
  }
  return sum;
}

}  // namespace

VecDotFn GetVecDot(DType weight_type) {
  switch (weight_type) {
    case DType::kF32: return DotF32;
    case DType::kF16: return DotHalfLike<quant::HalfToFloat>;
    case DType::kBF16: return DotHalfLike<quant::Bf16ToFloat>;
    case DType::kQ4_0: return DotQ4_0;
    case DType::kQ4_1: return DotQ4_1;
    case DType::kQ5_0: return DotQ5_0;
    case DType::kQ5_1: return DotQ5_1;
    case DType::kQ8_0: return DotQ8_0;
    case DType::kQ4_K: return DotQ4_K;
    case DType::kQ5_K: return DotQ5_K;
    case DType::kQ6_K: return DotQ6_K;
    default: return nullptr;
  }
}

}  // namespace chord::kernels
