// What the tensor-core products over K-quant blocks (matmul_q8_mma.cu,
// matmul_half_mma.cu) share: copying a tile's 256-element weight blocks into
// shared memory, reading Q6_K's 2-byte-aligned blocks there, raising a
// kernel's shared-memory limit, and how many blocks split K.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
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

// How many blocks share each output tile's K range of k_steps: when the
// tiles alone leave some of a wave's `slots` idle, the count (up to
// max_splits, at least two K steps a block) whose blocks best fill one wave,
// the smallest of those within 5% of it. Never more than a wave: the partial
// sums cost memory traffic of their own.
inline int SplitsToFillWave(int64_t tiles, int64_t k_steps, int64_t slots, int max_splits) {
  const auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const int64_t most = std::min<int64_t>(max_splits, std::max<int64_t>(1, k_steps / 2));
  int best = 1;
  double best_fill = static_cast<double>(tiles) / static_cast<double>(slots);
  for (int64_t z = 2; z <= most; ++z) {
    const int64_t blocks = tiles * ceil_div(k_steps, ceil_div(k_steps, z));
    if (blocks > slots) break;
    const double fill = static_cast<double>(blocks) / static_cast<double>(slots);
    if (fill > best_fill * 1.05) {
      best = static_cast<int>(z);
      best_fill = fill;
    }
  }
  return best;
}

}  // namespace chord::cuda
