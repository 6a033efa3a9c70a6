// What the matrix kernels (matvec.cu, matvec_q8.cu, matmul_mma.cu) share:
// reading GGUF quantized blocks (whole 32-element units of a row, or their
// scales), a warp's row sums, cutting a batch into passes, and dispatching on
// the weight type.
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

// From the block's 16-byte header (d, dmin and the 12 bytes of packed 6-bit
// scales and mins) in registers, as ScaleMinK4 reads them from memory: byte j
// of the 12 is q[j]; sub-block j < 4 has q[j] & 63 and q[j + 4] & 63, j >= 4
// has the low (high) nibble of q[j + 4] and the top two bits of q[j - 4]
// (q[j]). Both sub-blocks' values sit in adjacent bytes, so they are
// extracted as byte pairs.
__device__ __forceinline__ SubBlockPair ScalesOfPair(uint4 header, int i) {
  const float d = __half2float(__ushort_as_half(static_cast<unsigned short>(header.x & 0xFFFF)));
  const float dmin = __half2float(__ushort_as_half(static_cast<unsigned short>(header.x >> 16)));
  const int shift = 16 * (i & 1);
  const unsigned s0 = header.y >> shift, s1 = header.z >> shift, s2 = header.w >> shift;
  const unsigned sc = i < 2 ? s0 & 0x3F3F : (s2 & 0x0F0F) | ((s0 >> 2) & 0x3030);
  const unsigned mn = i < 2 ? s1 & 0x3F3F : ((s2 >> 4) & 0x0F0F) | ((s1 >> 2) & 0x3030);
  return {d * static_cast<float>(sc & 0xFF), dmin * static_cast<float>(mn & 0xFF),
          d * static_cast<float>((sc >> 8) & 0xFF), dmin * static_cast<float>((mn >> 8) & 0xFF)};
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

// Asynchronous copies into shared memory (sm_80+): 16 bytes from a
// 16-byte-aligned address; with `bytes` < 16 only that many are read and the
// rest of the 16 shared bytes are zeros (the end of a matrix).
__device__ __forceinline__ void CopyAsync16(uint8_t* shared, const uint8_t* global) {
  const auto address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(address), "l"(global));
}
__device__ __forceinline__ void CopyAsync16Partial(uint8_t* shared, const uint8_t* global, unsigned bytes) {
  const auto address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(address), "l"(global), "r"(bytes));
}
__device__ __forceinline__ void CommitCopies() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void WaitForCopiesBut() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

constexpr int kUnit = 32;  // elements of a row one thread decodes at a time

// n (even) bytes from a 2-byte-aligned address into out.
template <int kN>
__device__ __forceinline__ void LoadAligned2(const uint8_t* p, uint8_t (&out)[kN]) {
  const auto* h = reinterpret_cast<const uint16_t*>(p);
#pragma unroll
  for (int i = 0; i < kN / 2; ++i) {
    const uint16_t v = __ldg(h + i);
    out[2 * i] = static_cast<uint8_t>(v & 0xff);
    out[2 * i + 1] = static_cast<uint8_t>(v >> 8);
  }
}

// Unit `u` of a row (32 elements) decoded into w: kRuns runs of 32 / kRuns
// contiguous elements, run r starting at element *base + r * kStride. Units are
// ordered so that neighbouring lanes read neighbouring bytes.
template <uint32_t kType>
struct UnitShape {
  static constexpr int kRuns = kType == kQ6_K ? 4 : (kType == kF32 || kType == kF16 || kType == kQ8_0) ? 1 : 2;
  static constexpr int kStride = kType == kQ4_0 ? 16 : 32;
};

template <uint32_t kType>
__device__ __forceinline__ void DequantUnit(const uint8_t* row, int u, float (&w)[32], int* base) {
  if constexpr (kType == kF32) {
    const uint8_t* p = row + u * 128;
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(p) + c);
      w[4 * c] = v.x, w[4 * c + 1] = v.y, w[4 * c + 2] = v.z, w[4 * c + 3] = v.w;
    }
    *base = u * 32;
  } else if constexpr (kType == kF16) {
    const uint8_t* p = row + u * 64;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const uint4 v = Load16(p + 16 * c);
      const auto* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 pair = __half22float2(h[k]);
        w[8 * c + 2 * k] = pair.x;
        w[8 * c + 2 * k + 1] = pair.y;
      }
    }
    *base = u * 32;
  } else if constexpr (kType == kQ4_0) {
    const uint8_t* block = row + u * 18;
    const float d = Half(block);
    uint8_t qs[16];
    LoadAligned2(block + 2, qs);
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      w[k] = static_cast<float>((qs[k] & 0xF) - 8) * d;
      w[k + 16] = static_cast<float>((qs[k] >> 4) - 8) * d;
    }
    *base = u * 32;
  } else if constexpr (kType == kQ8_0) {
    const uint8_t* block = row + u * 34;
    const float d = Half(block);
    uint8_t qs[32];
    LoadAligned2(block + 2, qs);
#pragma unroll
    for (int k = 0; k < 32; ++k) w[k] = static_cast<float>(static_cast<int8_t>(qs[k])) * d;
    *base = u * 32;
  } else if constexpr (kType == kQ4_K || kType == kQ5_K) {
    constexpr int kBlockBytes = kType == kQ4_K ? 144 : 176;
    constexpr int kQsOffset = kType == kQ4_K ? 16 : 48;
    const int blk = u >> 3, i = (u >> 1) & 3, h = u & 1;
    const uint8_t* block = row + blk * kBlockBytes;
    const auto [d1, m1, d2, m2] = ScalesOfPair(Load16(block), i);
    const uint4 qv = Load16(block + kQsOffset + 32 * i + 16 * h);
    const auto* q = reinterpret_cast<const uint8_t*>(&qv);
    uint4 hv = make_uint4(0, 0, 0, 0);
    if constexpr (kType == kQ5_K) hv = Load16(block + 16 + 16 * h);
    const auto* qh = reinterpret_cast<const uint8_t*>(&hv);
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      int lo = q[k] & 0xF, hi = q[k] >> 4;
      if constexpr (kType == kQ5_K) {
        lo += ((qh[k] >> (2 * i)) & 1) << 4;
        hi += ((qh[k] >> (2 * i + 1)) & 1) << 4;
      }
      w[k] = d1 * static_cast<float>(lo) - m1;
      w[16 + k] = d2 * static_cast<float>(hi) - m2;
    }
    *base = blk * 256 + 64 * i + 16 * h;
  } else if constexpr (kType == kQ6_K) {
    const int blk = u >> 3, half = (u >> 2) & 1, g = u & 3;
    const uint8_t* block = row + blk * 210;
    const float d = Half(block + 208);
    uint8_t ql0[8], ql1[8], qh[8];
    LoadAligned2(block + 64 * half + 8 * g, ql0);
    LoadAligned2(block + 64 * half + 32 + 8 * g, ql1);
    LoadAligned2(block + 128 + 32 * half + 8 * g, qh);
    const auto* scales = reinterpret_cast<const int8_t*>(block + 192 + 8 * half);
    const int is = g >> 1;
    const float s0 = d * static_cast<float>(scales[is]), s1 = d * static_cast<float>(scales[is + 2]);
    const float s2 = d * static_cast<float>(scales[is + 4]), s3 = d * static_cast<float>(scales[is + 6]);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      w[k] = s0 * static_cast<float>(((ql0[k] & 0xF) | ((qh[k] & 3) << 4)) - 32);
      w[8 + k] = s1 * static_cast<float>(((ql1[k] & 0xF) | (((qh[k] >> 2) & 3) << 4)) - 32);
      w[16 + k] = s2 * static_cast<float>(((ql0[k] >> 4) | (((qh[k] >> 4) & 3) << 4)) - 32);
      w[24 + k] = s3 * static_cast<float>(((ql1[k] >> 4) | (((qh[k] >> 6) & 3) << 4)) - 32);
    }
    *base = blk * 256 + 128 * half + 8 * g;
  }
}

// Calls fn.template operator()<kType>() for the matrix's type.
template <typename Fn>
cudaError_t DispatchType(uint32_t type, Fn&& fn) {
  switch (type) {
    case kF32: fn.template operator()<kF32>(); break;
    case kF16: fn.template operator()<kF16>(); break;
    case kQ4_0: fn.template operator()<kQ4_0>(); break;
    case kQ8_0: fn.template operator()<kQ8_0>(); break;
    case kQ4_K: fn.template operator()<kQ4_K>(); break;
    case kQ5_K: fn.template operator()<kQ5_K>(); break;
    case kQ6_K: fn.template operator()<kQ6_K>(); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace chord::cuda
