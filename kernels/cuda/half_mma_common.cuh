// What both half tensor-core products (matmul_half_mma.cu with mma.sync,
// matmul_half_wgmma.cu with wgmma) share: decoding K-quant weights to halves
// in registers, the per-K-step scale table, and a launch's problem (up to
// three matrices of one type and width, their row tiles along grid y).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "kernels/cuda/kquant_tiles.cuh"
#include "kernels/cuda/matvec_common.cuh"

namespace chord::cuda::half_mma {

constexpr int kStep = 256;  // elements of a K step: one K-quant block

// A row's entry in the scale table. Q4_K: sub-block i's scale at word 2i and
// its negated min at 2i + 1, each as a pair of equal halves. Q6_K: the scale
// of 16-element group 8h + 2q + s at word 8h + 4s + q (the four a lane needs
// at once side by side), as a pair of halves; words 16 + h: the block's
// offset in its slot (written by each K half's warp for itself). 20 words, so
// that the rows g = 0..7 a warp reads at once take eight different groups of
// four banks.
constexpr int kTableWords = 20;
__device__ __forceinline__ __half2 AsHalf2(uint32_t bits) {
  __half2 h;
  memcpy(&h, &bits, sizeof(h));
  return h;
}
__device__ __forceinline__ uint32_t Bits(__half2 h) {
  uint32_t bits;
  memcpy(&bits, &h, sizeof(bits));
  return bits;
}

// (a & mask) | bits in one instruction (the compiler emits an AND and an OR
// for the two constants).
template <uint32_t kMask, uint32_t kBits>
__device__ __forceinline__ uint32_t MaskOr(uint32_t a) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "n"(kMask), "n"(kBits));
  return d;
}

// Two Q4_K weights from the nibbles in bits 0-3 and 16-19 of `fields`:
// q * scale - min, with `scale` and `neg_min` pairs of equal halves. 1024 + q
// is a half whose low mantissa bits are q; subtracting 1024 is exact.
__device__ __forceinline__ uint32_t DecodeQ4Pair(uint32_t fields, uint32_t scale,
                                                 uint32_t neg_min) {
  const uint32_t biased = MaskOr<0x000F000Fu, 0x64006400u>(fields);
  const __half2 q = __hsub2(AsHalf2(biased), AsHalf2(0x64006400u));
  return Bits(__hfma2(q, AsHalf2(scale), AsHalf2(neg_min)));
}

// Two Q6_K weights from the low 4 bits in bits 0-3 and 16-19 of `low` and the
// high 2 bits in bits 4-5 and 20-21 of `high`: (value - 32) * scale.
// 1024 + value minus 1056 is exact.
__device__ __forceinline__ uint32_t DecodeQ6Pair(uint32_t low, uint32_t high, uint32_t scale) {
  uint32_t biased;
  // (low & 0x000F000F) | (high & 0x00300030) | 0x64006400 in two instructions.
  const uint32_t low_bits = MaskOr<0x000F000Fu, 0x64006400u>(low);
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(biased) : "r"(high), "n"(0x00300030u), "r"(low_bits));
  const __half2 v = __hsub2(AsHalf2(biased), AsHalf2(0x64206420u));
  return Bits(__hmul2(v, AsHalf2(scale)));
}

// A row's scale-table entry for this K step from its block in `slot`
// (`offset` bytes in): the half of it that K half `part` (0 or 1) reads.
template <uint32_t kType>
__device__ __forceinline__ void FillTableEntry(const uint8_t* slot, int offset, int part,
                                               uint32_t* entry) {
  const uint8_t* block = slot + offset;
  if constexpr (kType == kQ4_K) {
    const uint4 header = *reinterpret_cast<const uint4*>(block);
#pragma unroll
    for (int i = 2 * part; i < 2 * part + 2; ++i) {
      const SubBlockPair pair = ScalesOfPair(header, i);
      *reinterpret_cast<uint4*>(entry + 4 * i) =
          make_uint4(Bits(__float2half2_rn(pair.d1)), Bits(__float2half2_rn(-pair.m1)),
                     Bits(__float2half2_rn(pair.d2)), Bits(__float2half2_rn(-pair.m2)));
    }
  } else {
    const float d = Half(block + 208);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int q = k >> 1, s = k & 1;
      const auto scale = static_cast<int8_t>(block[192 + 8 * part + 2 * q + s]);
      entry[8 * part + 4 * s + q] = Bits(__float2half2_rn(d * static_cast<float>(scale)));
    }
    entry[16 + part] = static_cast<uint32_t>(offset);
  }
}

// The order in which a block walks its K steps [begin, end): row tile
// `tile` starts at its own step, so that the tiles do not all read the same
// activations from L2 at once.
struct KSteps {
  int begin, count, rotate;
  __device__ KSteps(int begin_step, int end_step, int tile)
      : begin(begin_step), count(end_step - begin_step), rotate(tile % (end_step - begin_step)) {}
  __device__ int operator()(int i) const {
    return begin + (i + rotate < count ? i + rotate : i + rotate - count);
  }
};

// Asks L2 for a row's blocks of K steps [begin, end), 128 bytes at a time,
// this thread taking every `parts`-th line from `part`: what a product's
// block does while it waits for the kernel before it.
template <uint32_t kType>
__device__ __forceinline__ void PrefetchRowToL2(const uint8_t* row, uint64_t row_bytes, int begin,
                                                int end, int part, int parts) {
  const uint64_t first = static_cast<uint64_t>(begin) * kKBlockBytes<kType>;
  const uint64_t range_end = static_cast<uint64_t>(end) * kKBlockBytes<kType>;
  const uint64_t stop = range_end < row_bytes ? range_end : row_bytes;
  for (uint64_t offset = first + 128 * part; offset < stop; offset += 128 * parts) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(row + offset));
  }
}

// One matrix of a launch and where its sums go (with split K: its partial
// sums, split z at y + z * n_tokens * rows).
struct Matrix {
  const uint8_t* w;
  uint64_t row_bytes;
  int rows;
  float* y;
};

// Up to three matrices of one type and width, their row
// tiles one after another along grid y: matrix 0's first, then 1's from
// tile `first_tile1`, then 2's from `first_tile2`. Separate members, not an
// array: a parameter array indexed by a run-time value is copied to every
// thread's stack.
struct Problem {
  Matrix m0, m1, m2;
  int first_tile1, first_tile2;
  int cols;
  const uint8_t* x;  // halves in mma order
  int n_tokens;
  int steps_per_split;
  bool accumulate;
};

// The matrix of row tile `tile` and that tile's index within it.
__device__ __forceinline__ Matrix MatrixOfTile(const Problem& p, int tile, int& local_tile) {
  if (tile < p.first_tile1) {
    local_tile = tile;
    return p.m0;
  }
  if (tile < p.first_tile2) {
    local_tile = tile - p.first_tile1;
    return p.m1;
  }
  local_tile = tile - p.first_tile2;
  return p.m2;
}

}  // namespace chord::cuda::half_mma
