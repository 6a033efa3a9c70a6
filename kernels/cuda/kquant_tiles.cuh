// Tiles of K-quant blocks in shared memory for the tensor-core products
// (matmul_half_mma.cu): copying a row's 256-element block into shared memory,
// reading Q6_K's 2-byte-aligned blocks there, raising a kernel's
// shared-memory limit.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "kernels/cuda/matvec_common.cuh"

namespace chord::cuda {

// Bytes of one 256-element block.
template <uint32_t kType>
inline constexpr int kKBlockBytes = kType == kQ4_K ? 144 : 210;

// Four bytes from a 2-byte-aligned shared address.
__device__ __forceinline__ uint32_t Lds32Unaligned2(const uint8_t* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  const auto* word = reinterpret_cast<const uint32_t*>(address & ~uintptr_t{3});
  return __funnelshift_r(word[0], word[1], static_cast<unsigned>(address & 3) * 8);
}

// The byte offset of a row's block at K step kb from the 16-byte boundary
// below it: Q4_K blocks (144 bytes) in 16-byte-aligned rows start on one;
// Q6_K blocks (210 bytes) start at any even address.
template <uint32_t kType>
__device__ __forceinline__ int KBlockOffset(const uint8_t* row, int kb) {
  if constexpr (kType == kQ4_K) return 0;
  return static_cast<int>(reinterpret_cast<uintptr_t>(row + kb * kKBlockBytes<kType>) & 15);
}

// One thread's share (every kParts-th 16 bytes, from `part`) of the copy of
// a row's block at K step kb into `slot`, from the 16-byte boundary below it
// (the block sits KBlockOffset bytes into the slot). Nothing past
// `matrix_end` is read.
template <uint32_t kType, int kParts>
__device__ __forceinline__ void CopyKBlock(const uint8_t* row, int kb, int part,
                                           const uint8_t* matrix_end, uint8_t* slot) {
  const int offset = KBlockOffset<kType>(row, kb);
  const uint8_t* first = row + static_cast<uint64_t>(kb) * kKBlockBytes<kType> - offset;
  const int chunks = (offset + kKBlockBytes<kType> + 15) / 16;
  for (int c = part; c < chunks; c += kParts) {
    const uint8_t* src = first + 16 * c;
    const int64_t left = matrix_end - src;
    if (left >= 16) {
      CopyAsync16(slot + 16 * c, src);
    } else {
      CopyAsync16Partial(slot + 16 * c, src, static_cast<unsigned>(left));
    }
  }
}

// Raises kKernel's dynamic shared memory past the default 48 KB to kBytes,
// once per device (a bit per device in `done`).
template <auto kKernel, int kBytes>
cudaError_t AllowSharedMemory() {
  static std::atomic<uint64_t> done{0};
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = uint64_t{1} << (device % 64);
  if (done.load(std::memory_order_acquire) & bit) return cudaSuccess;
  const cudaError_t e =
      cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
  if (e == cudaSuccess) done.fetch_or(bit, std::memory_order_release);
  return e;
}

}  // namespace chord::cuda
