#include "kernels/cpu/activation_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/base/status.h"
#include "common/quant/quant.h"
#include "kernels/cpu/multi_dot.h"

namespace chord::kernels {
namespace {

using quant::kQK;
using quant::kQKK;

// Rounds to nearest, ties to even (the FPU default mode), as ggml's nearest_int
// and _mm256_round_ps(_MM_ROUND_NEAREST) do.
inline int RoundHalfEven(float v) { return static_cast<int>(std::nearbyint(v)); }

float AbsMax(const float* x, int n) {
  float amax = 0.0f;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  return amax;
}

}  // namespace

void QuantizeActivationsQ8_0(const float* x, int64_t n, quant::BlockQ8_0* out) {
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* xb = x + b * kQK;
    const float amax = AbsMax(xb, kQK);
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    out[b].d = quant::FloatToHalf(d);
    for (int j = 0; j < kQK; ++j) out[b].qs[j] = static_cast<int8_t>(RoundHalfEven(xb[j] * id));
  }
}

void QuantizeActivationsQ8_1(const float* x, int64_t n, BlockQ8_1* out) {
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* xb = x + b * kQK;
    const float amax = AbsMax(xb, kQK);
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const int q = RoundHalfEven(xb[j] * id);
      out[b].qs[j] = static_cast<int8_t>(q);
      sum += q;
    }
    out[b].d = quant::FloatToHalf(d);
    out[b].s = quant::FloatToHalf(d * static_cast<float>(sum));
  }
}

void QuantizeActivationsQ8_K(const float* x, int64_t n, quant::BlockQ8_K* out) {
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float* xb = x + b * kQKK;
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < kQKK; ++j) {
      const float ax = std::fabs(xb[j]);
      if (ax > amax) {
        amax = ax;
        max = xb[j];
      }
    }
    quant::BlockQ8_K& block = out[b];
    if (amax == 0.0f) {
      std::memset(&block, 0, sizeof(block));
      continue;
    }
    const float iscale = -127.0f / max;
    for (int j = 0; j < kQKK; ++j) {
      block.qs[j] = static_cast<int8_t>(std::min(127, RoundHalfEven(iscale * xb[j])));
    }
    for (int g = 0; g < kQKK / 16; ++g) {
      int sum = 0;
      for (int j = 0; j < 16; ++j) sum += block.qs[g * 16 + j];
      block.bsums[g] = static_cast<int16_t>(sum);
    }
    block.d = 1.0f / iscale;
  }
}

DType ActivationTypeFor(DType weight_type) {
  switch (weight_type) {
    case DType::kQ4_0:
    case DType::kQ5_0:
    case DType::kQ8_0:
      return DType::kQ8_0;
    case DType::kQ4_1:
    case DType::kQ5_1:
      return DType::kQ8_1;
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return DType::kQ8_K;
    default:
      return DType::kF32;
  }
}

int64_t ActivationRowBytes(DType weight_type, int64_t n) {
  switch (ActivationTypeFor(weight_type)) {
    case DType::kQ8_0:
      return n / kQK * static_cast<int64_t>(sizeof(quant::BlockQ8_0));
    case DType::kQ8_1:
      return n / kQK * static_cast<int64_t>(sizeof(BlockQ8_1));
    case DType::kQ8_K:
      return n / kQKK * static_cast<int64_t>(sizeof(quant::BlockQ8_K));
    default:
      return n * static_cast<int64_t>(sizeof(float));
  }
}

void QuantizeActivations(DType weight_type, const float* x, int64_t n, void* out) {
  switch (ActivationTypeFor(weight_type)) {
    case DType::kQ8_0:
#if defined(CHORD_HAVE_AVX2_KERNELS)
      if (HasAvx2(BestKernelIsa())) {
        QuantizeActivationsQ8_0Avx2(x, n, static_cast<quant::BlockQ8_0*>(out));
        return;
      }
#endif
      QuantizeActivationsQ8_0(x, n, static_cast<quant::BlockQ8_0*>(out));
      return;
    case DType::kQ8_1:
      QuantizeActivationsQ8_1(x, n, static_cast<BlockQ8_1*>(out));
      return;
    case DType::kQ8_K:
#if defined(CHORD_HAVE_AVX2_KERNELS)
      if (HasAvx2(BestKernelIsa())) {
        QuantizeActivationsQ8_KAvx2(x, n, static_cast<quant::BlockQ8_K*>(out));
        return;
      }
#endif
      QuantizeActivationsQ8_K(x, n, static_cast<quant::BlockQ8_K*>(out));
      return;
    default:
      std::memcpy(out, x, static_cast<size_t>(n) * sizeof(float));
      return;
  }
}

}  // namespace chord::kernels
