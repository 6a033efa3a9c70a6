// What the matrix-vector kernels (matvec.cu, matvec_q8.cu) share: reading
// GGUF quantized blocks, a warp's row sums, and cutting a batch into passes.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace chord::cuda {

// GGUF type codes (chord::DType values) of the types the kernels read.
inline constexpr uint32_t kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ8_0 = 8, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14;

__device__ __forceinline__ float Half(const uint8_t* p) {
  return __half2float(*reinterpret_cast<const __half*>(p));
}

// 16 bytes from a 16-byte-aligned address, through the read-only path:
// weights are read once per pass.
__device__ __forceinline__ uint4 Load16(const uint8_t* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// Scale and min of sub-block j (0..7) of a Q4_K/Q5_K block, from its 12
// packed 6-bit values at q.
__device__ __forceinline__ void ScaleMinK4(int j, const uint8_t* q, float* scale, float* min) {
  if (j < 4) {
    *scale = static_cast<float>(q[j] & 63);
    *min = static_cast<float>(q[j + 4] & 63);
  } else {
    *scale = static_cast<float>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *min = static_cast<float>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// The effective scales and mins of sub-blocks 2i and 2i + 1 of a Q4_K/Q5_K
// block (d * scale, dmin * min): what a unit of 16 bytes of nibbles needs.
struct SubBlockPair {
  float d1, m1, d2, m2;
};

__device__ __forceinline__ SubBlockPair ScalesOfPair(const uint8_t* block, int i) {
  const float d = Half(block), dmin = Half(block + 2);
  float sc, m;
  ScaleMinK4(2 * i, block + 4, &sc, &m);
  SubBlockPair p;
  p.d1 = d * sc;
  p.m1 = dmin * m;
  ScaleMinK4(2 * i + 1, block + 4, &sc, &m);
  p.d2 = d * sc;
  p.m2 = dmin * m;
  return p;
}

// Sums each of the B per-lane partial dot products over the warp and lane 0
// stores (or adds) them: y[b * y_stride + row].
template <int B>
__device__ __forceinline__ void StoreRowSums(const float (&acc)[B], int lane, float* y, int64_t y_stride,
                                             int64_t row, bool accumulate) {
#pragma unroll
  for (int b = 0; b < B; ++b) {
    float v = acc[b];
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) {
      float* out = y + b * y_stride + row;
      *out = accumulate ? *out + v : v;
    }
  }
}

// Calls pass.template operator()<B>(first) over n_tokens tokens in passes of
// B = 8, 4, 2 or 1 tokens (the batch sizes the kernels are built for).
template <typename Pass>
void ForEachPass(int64_t n_tokens, Pass&& pass) {
  int64_t done = 0;
  while (done < n_tokens) {
    const int64_t left = n_tokens - done;
    if (left >= 8) {
      pass.template operator()<8>(done);
      done += 8;
    } else if (left >= 4) {
      pass.template operator()<4>(done);
      done += 4;
    } else if (left >= 2) {
      pass.template operator()<2>(done);
      done += 2;
    } else {
      pass.template operator()<1>(done);
      done += 1;
    }
  }
}

}  // namespace chord::cuda
