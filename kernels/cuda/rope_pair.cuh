// RoPE of one pair of a head's row and the cache stores of a key or value
// pair: what LaunchRopeStoreKv (ops.h) does per pair, shared with the
// one-token Q/K/V product that does it in its epilogue (matvec_q8.h), so
// that both write the same bits.
#pragma once

#include <cuda_fp16.h>

#include "kernels/cuda/ops.h"

namespace chord::cuda {

// Pair `pair` of a head's row rotated for `position`; the angle is advanced
// by repeated multiplication as the CPU path does, so both round alike.
__device__ __forceinline__ float2 RotatedPair(float2 x, int pair, int position, const RopeParams& p,
                                              float theta_scale) {
  float theta = static_cast<float>(position);
  for (int i = 0; i < pair; ++i) theta *= theta_scale;
  const float factor = p.freq_factors != nullptr ? p.freq_factors[pair] : 1.0f;
  const float angle = p.freq_scale * (theta / factor);
  float sin_theta, cos_theta;
  sincosf(angle, &sin_theta, &cos_theta);
  return make_float2(x.x * cos_theta - x.y * sin_theta, x.x * sin_theta + x.y * cos_theta);
}

// Elements `at`, `at` + 1 of the keys or values of a cache layer.
__device__ __forceinline__ void StoreCachePair(const KvLayer& cache, void* base, int64_t at,
                                               float2 pair) {
  if (cache.half) {
    reinterpret_cast<__half2*>(static_cast<__half*>(base) + at)[0] =
        __halves2half2(__float2half(pair.x), __float2half(pair.y));
  } else {
    reinterpret_cast<float2*>(static_cast<float*>(base) + at)[0] = pair;
  }
}

}  // namespace chord::cuda
