// Device helpers that read GGUF quantized blocks, shared by the kernels that
// decode them (matvec.cu, matvec_q8.cu).
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

}  // namespace chord::cuda
