// Halves in "mma order", the layout the half tensor-core product
// (matmul_half_mma.h) reads its activations in: each aligned group of four
// elements stored as elements 0, 2, 1, 3. Shared by every kernel that writes
// a product's input in that form, so they all store the same bits.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace chord::cuda {

// Four consecutive values (an aligned group) as their 8 bytes in mma order.
__device__ __forceinline__ uint2 HalvesInMmaOrder(float4 v) {
  const __half2 even = __floats2half2_rn(v.x, v.z), odd = __floats2half2_rn(v.y, v.w);
  uint2 out;
  memcpy(&out.x, &even, sizeof(out.x));
  memcpy(&out.y, &odd, sizeof(out.y));
  return out;
}

// Where element i of a row goes in mma order.
__device__ __forceinline__ int64_t MmaOrderIndex(int64_t i) {
  return (i & ~int64_t{3}) | ((i & 1) << 1) | ((i & 2) >> 1);
}

}  // namespace chord::cuda
