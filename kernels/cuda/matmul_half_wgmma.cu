#include "kernels/cuda/matmul_half_wgmma.h"

#include <atomic>

#include "kernels/cuda/dependent_launch.cuh"

namespace chord::cuda::half_mma {
namespace {

// A block: kTokens (32 or 64) tokens x kRows weight rows over a share of K,
// one 256-element K step at a time through two shared-memory stages (the
// next step's bytes in flight while this one is multiplied). Each warpgroup
// owns 64 rows, each of its warps 16 of them over the whole K step: for
// every 16-element slice a warp decodes its rows' weights into the A
// fragment registers and the warpgroup issues one wgmma m64nNk16 whose B
// (the tokens' halves) comes from shared memory, then decodes the next slice
// while it runs.
//
// The activations of a K step in shared memory as wgmma reads B with the
// 128-byte swizzle: four atoms of kTokens x 64 elements (chunks 8a..8a + 7
// of 8 elements); token n's 128 bytes of an atom at n * 128, its chunk c at
// 16 (c ^ (n % 8)) within them. A warp copies one token's 512 contiguous
// bytes an instruction, four whole 128-byte rows of shared memory. (Without
// swizzling, in core matrices of 8 tokens x 16 bytes, a warp's copies either
// read 16-32 bytes of each of 16-32 tokens or wrote 32 times into the same
// banks, and the copies' issue held the warps: 11008x4096 Q4_K at 64 tokens
// 55 us against 36.)
constexpr int kRowGroupBytes = 8 * 128;  // the descriptor's stride offset: 8 tokens

template <uint32_t kType, int kTokens>
struct WgmmaLayout {
  static constexpr int kAtomBytes = kTokens * 128;  // kTokens x 64 elements
  static constexpr int kTokenStageBytes = kTokens * kStep * 2;
  // Q4_K: two warpgroups (128 rows), so that each copy of the activations
  // serves twice the weights of a 64-row tile. Q6_K: one; its blocks take
  // 240-byte slots, and two stages of 128 rows would leave one block an SM.
  static constexpr int kWarpGroups = kType == kQ4_K ? 2 : 1;
  static constexpr int kRows = 64 * kWarpGroups;
  static constexpr int kThreads = 128 * kWarpGroups;
  static constexpr int kParts = kThreads / kRows;  // threads copying a row's block
  // A row's block: Q4_K 36 words; Q6_K up to 14 + 210 bytes, 60 words.
  static constexpr int kSlot = kType == kQ4_K ? 144 : 240;
  static constexpr int kWeights = kTokenStageBytes;  // in a stage, after the activations
  static constexpr int kStageBytes = kTokenStageBytes + kRows * kSlot;
  static constexpr int kTable = 2 * kStageBytes;  // after the two stages
  static constexpr int kBytes = kTable + kRows * kTableWords * 4;
  static_assert(kStageBytes % 1024 == 0, "every stage's atoms 1 KB-aligned");
};

// The B operand of a stage's activations (slice 0), and of slice `slice`
// (elements 16 slice..) from it: its atom, 32 bytes a slice into it (wgmma
// applies the swizzle to the addresses it forms, so a start inside a 1 KB-
// aligned atom reads the right chunks). The start address, in 16-byte units,
// is the low 14 bits: adding a slice's offset to the descriptor moves it.
__device__ __forceinline__ uint64_t StageDescriptor(const uint8_t* tokens) {
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(tokens));
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | uint64_t{1} << 16 |
         static_cast<uint64_t>(kRowGroupBytes >> 4) << 32 | uint64_t{1} << 62;
}

template <int kTokens>
__device__ __forceinline__ uint64_t SliceDescriptor(uint64_t stage, int slice) {
  return stage + static_cast<uint64_t>(((slice >> 2) * kTokens * 128 + (slice & 3) * 32) >> 4);
}

__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses to an accumulator across a wait.
__device__ __forceinline__ void Touch(float& v) { asm volatile("" : "+f"(v)::"memory"); }

// d (64 rows x N tokens across the warpgroup; this warp's 16 rows) +=
// a (this warp's 16 x 16 fragment, mma.m16n8k16's A layout) x B (16 x N
// from shared memory, K-major).
template <int N>
__device__ void Wgmma(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b);
template <>
__device__ __forceinline__ void Wgmma<32>(float (&d)[16], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void Wgmma<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// One slice's product, at most one other in flight: the slice before the
// previous one has finished with its A registers when this returns.
template <int N>
__device__ __forceinline__ void MultiplySlice(float (&d)[N / 2], const uint32_t (&a)[4],
                                              uint64_t b) {
  WgmmaFence();
  Wgmma<N>(d, a, b);
  WgmmaCommit();
  WgmmaWait<1>();
}

// Which elements a lane's A registers hold. wgmma reads B's 16 elements of
// a slice in the order the activations are stored (mma order: positions 4u..
// 4u + 3 hold elements 4u, 4u + 2, 4u + 1, 4u + 3), and lane (g, t) holds
// positions 2t, 2t + 1 (registers a0, a1 for rows g, g + 8) and 2t + 8,
// 2t + 9 (a2, a3): elements 4(t >> 1) + (t & 1) and that + 2, then the same
// 8 further on. Both pairs are bytes (t & 1) and (t & 1) + 2 of a 4-byte
// word of the row (the word at 4(t >> 1), then at 8 + 4(t >> 1)): shifted
// right by 8(t & 1), they sit where DecodeQ4Pair and DecodeQ6Pair read them.

// A warp's 16 rows (from `row`) over one Q4_K K step. Bytes 32j..32j + 31 of
// the nibbles hold group j: low nibbles elements 64j.. (sub-block 2j), high
// nibbles 64j + 32.. (2j + 1); slice 4j + 2 high + h is bytes 32j + 16h..
// of nibbles `high`.
template <int kSlot, int kTokens>
__device__ __forceinline__ void ComputeQ4K(uint64_t stage, const uint8_t* weights,
                                           const uint32_t* table, int row, int lane,
                                           float (&acc)[kTokens / 2]) {
  const int g = lane >> 2, t = lane & 3;
  const int shift = 8 * (t & 1);
  const uint8_t* a_lane = weights + (row + g) * kSlot + 16 + 4 * (t >> 1);  // nibbles: byte 16 on
  const uint32_t* t_lane = table + (row + g) * kTableWords;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    // Rows g, g + 8: scale and -min of sub-block 2j, then of 2j + 1.
    const uint4 sc0 = *reinterpret_cast<const uint4*>(t_lane + 4 * j);
    const uint4 sc1 = *reinterpret_cast<const uint4*>(t_lane + 8 * kTableWords + 4 * j);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint8_t* bytes = a_lane + 32 * j + 16 * h;
      const uint32_t w00 = *reinterpret_cast<const uint32_t*>(bytes);
      const uint32_t w01 = *reinterpret_cast<const uint32_t*>(bytes + 8);
      const uint32_t w10 = *reinterpret_cast<const uint32_t*>(bytes + 8 * kSlot);
      const uint32_t w11 = *reinterpret_cast<const uint32_t*>(bytes + 8 * kSlot + 8);
#pragma unroll
      for (int high = 0; high < 2; ++high) {
        const int s = shift + 4 * high;
        const uint32_t s0 = high ? sc0.z : sc0.x, m0 = high ? sc0.w : sc0.y;
        const uint32_t s1 = high ? sc1.z : sc1.x, m1 = high ? sc1.w : sc1.y;
        const uint32_t a[4] = {DecodeQ4Pair(w00 >> s, s0, m0), DecodeQ4Pair(w10 >> s, s1, m1),
                               DecodeQ4Pair(w01 >> s, s0, m0), DecodeQ4Pair(w11 >> s, s1, m1)};
        MultiplySlice<kTokens>(acc, a, SliceDescriptor<kTokens>(stage, 4 * j + 2 * high + h));
      }
    }
  }
}

// The same for Q6_K. Element 128h + 32q + l has its low 4 bits in
// ql[64h + 32 (q & 1) + l] >> 4 (q >> 1) and its high 2 bits in
// qh[32h + l] >> 2q; slice 8h + 2q + s is l = 16s..16s + 15.
template <int kSlot, int kTokens>
__device__ __forceinline__ void ComputeQ6K(uint64_t stage, const uint8_t* weights,
                                           const uint32_t* table, int row, int lane,
                                           float (&acc)[kTokens / 2]) {
  const int g = lane >> 2, t = lane & 3;
  const int shift = 8 * (t & 1);
  const uint32_t* entries[2] = {table + (row + g) * kTableWords,
                                table + (row + g + 8) * kTableWords};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const uint8_t* blocks[2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      blocks[rr] = weights + (row + g + 8 * rr) * kSlot + entries[rr][16 + h] + 4 * (t >> 1);
    }
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      uint32_t ql[2][2][2], qh[2][2];  // [rr][x: elements 0-7, 8-15 of the slice]([q & 1])
      uint4 sc[2];                     // [rr]: the scales of q = 0..3
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
#pragma unroll
        for (int x = 0; x < 2; ++x) {
          const uint8_t* block = blocks[rr] + 16 * s + 8 * x;
          ql[rr][x][0] = Lds32Unaligned2(block + 64 * h);
          ql[rr][x][1] = Lds32Unaligned2(block + 64 * h + 32);
          qh[rr][x] = Lds32Unaligned2(block + 128 + 32 * h);
        }
        sc[rr] = *reinterpret_cast<const uint4*>(entries[rr] + 8 * h + 4 * s);
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint32_t a[4];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const uint4& scales = sc[rr];
          const uint32_t scale = q == 0   ? scales.x
                                 : q == 1 ? scales.y
                                 : q == 2 ? scales.z
                                          : scales.w;
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            const uint32_t low = ql[rr][x][q & 1] >> (4 * (q >> 1));
            const uint32_t high = qh[rr][x] >> (2 * q);
            a[2 * x + rr] = DecodeQ6Pair(low >> shift, (high << 4) >> shift, scale);
          }
        }
        MultiplySlice<kTokens>(acc, a, SliceDescriptor<kTokens>(stage, 8 * h + 2 * q + s));
      }
    }
  }
}

template <uint32_t kType, int kTokens>
__global__ void __launch_bounds__(WgmmaLayout<kType, kTokens>::kThreads, kWgmmaBlocksPerSm)
    MatMulHalfWgmmaKernel(Problem p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) uint8_t shared[];
  using L = WgmmaLayout<kType, kTokens>;
  auto* table = reinterpret_cast<uint32_t*>(shared + L::kTable);
  const int tok0 = static_cast<int>(blockIdx.x) * kTokens;
  int row_tile = 0;
  const Matrix m = MatrixOfTile(p, static_cast<int>(blockIdx.y), row_tile);
  const int row0 = row_tile * L::kRows;
  const int k_steps = p.cols / kStep;
  const int kb_begin = static_cast<int>(blockIdx.z) * p.steps_per_split;
  const int kb_end = min(k_steps, kb_begin + p.steps_per_split);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int warp_row = 16 * warp;  // warpgroup w / 4 rows 64 (w / 4).., this warp's 16 of them

  // Thread r * kParts + part copies its share of row r's block. Rows and
  // tokens past the matrix or batch copy nothing: their slots hold stale
  // bytes whose results are not stored (rows and tokens do not mix).
  const int r = tid / L::kParts, part = tid % L::kParts;
  const bool row_live = row0 + r < m.rows;
  const uint8_t* row = m.w + static_cast<uint64_t>(min(row0 + r, m.rows - 1)) * m.row_bytes;
  const uint8_t* matrix_end = m.w + static_cast<uint64_t>(m.rows) * m.row_bytes;
  // Lane l fills the table entry of the warp's row l % 16, half l / 16.
  const int fill_r = warp_row + (lane & 15);
  const uint8_t* fill_row =
      m.w + static_cast<uint64_t>(min(row0 + fill_r, m.rows - 1)) * m.row_bytes;
  const int live_tokens = min(kTokens, p.n_tokens - tok0);
  const uint64_t token_bytes = static_cast<uint64_t>(p.cols) * 2;
  const auto issue_weights = [&](int kb, uint8_t* stage) {
    if (row_live) {
      CopyKBlock<kType, L::kParts>(row, kb, part, matrix_end, stage + L::kWeights + r * L::kSlot);
    }
  };
  // Warp w copies tokens w, w + kThreads / 32, ..., lane l the token's
  // chunk l (16 bytes): 512 contiguous bytes read, four swizzled rows
  // written.
  const int chunk_atom = (lane >> 3) * L::kAtomBytes, chunk_in_row = lane & 7;
  const auto issue_tokens = [&](int kb, uint8_t* stage) {
    for (int token = warp; token < live_tokens; token += L::kThreads / 32) {
      CopyAsync16(stage + chunk_atom + token * 128 + ((chunk_in_row ^ (token & 7)) << 4),
                  p.x + static_cast<uint64_t>(tok0 + token) * token_bytes +
                      static_cast<uint64_t>(kb) * kStep * 2 + lane * 16);
    }
  };
  // The swizzle is a function of the address: the atoms must be 1 KB-aligned.
  if ((static_cast<uint32_t>(__cvta_generic_to_shared(shared)) & 1023) != 0) __trap();

  float acc[kTokens / 2];
#pragma unroll
  for (int i = 0; i < kTokens / 2; ++i) acc[i] = 0.0f;

  const KSteps step_at(kb_begin, kb_end, static_cast<int>(blockIdx.y));
  const int steps = step_at.count;
  // Launched after the previous kernel (dependent_launch.cuh): the weights
  // (never written by kernels) are copied before its results are awaited,
  // the first step's into its stage and the rest of the block's K range
  // into L2; the activations and every store come after.
  LetNextKernelStart();
  issue_weights(step_at(0), shared);
  if (row_live) PrefetchRowToL2<kType>(row, m.row_bytes, kb_begin, kb_end, part, L::kParts);
  WaitForPreviousKernel();
  issue_tokens(step_at(0), shared);
  CommitCopies();
  // A warpgroup whose rows all lie past the matrix has nothing to add (the
  // same for its four warps: wgmma is issued by the whole warpgroup).
  const bool group_live = row0 + (warp / 4) * 64 < m.rows;
  for (int i = 0; i < steps; ++i) {
    const int kb = step_at(i);
    uint8_t* stage = shared + (i & 1) * L::kStageBytes;
    if (i + 1 < steps) {
      issue_weights(step_at(i + 1), shared + ((i + 1) & 1) * L::kStageBytes);
      issue_tokens(step_at(i + 1), shared + ((i + 1) & 1) * L::kStageBytes);
      CommitCopies();
      WaitForCopiesBut<1>();
    } else {
      WaitForCopiesBut<0>();
    }
    // What this thread copied is visible to wgmma's reads (the async proxy)
    // once every thread has passed the barrier.
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    FillTableEntry<kType>(stage + L::kWeights + fill_r * L::kSlot,
                          KBlockOffset<kType>(fill_row, kb), lane >> 4,
                          table + fill_r * kTableWords);
    __syncwarp();
    if (group_live) {
      if constexpr (kType == kQ4_K) {
        ComputeQ4K<L::kSlot, kTokens>(StageDescriptor(stage), stage + L::kWeights, table, warp_row,
                                      lane, acc);
      } else {
        ComputeQ6K<L::kSlot, kTokens>(StageDescriptor(stage), stage + L::kWeights, table, warp_row,
                                      lane, acc);
      }
      WgmmaWait<0>();
#pragma unroll
      for (int e = 0; e < kTokens / 2; ++e) Touch(acc[e]);
    }
    __syncthreads();  // the stage and the table are rewritten next
  }
  if (!group_live) return;

  // With split K, y is this split's slice of the partial sums. Value 4c + e
  // of a lane: row g + 8 (e >> 1), token 8c + 2t + (e & 1).
  const int g = lane >> 2, t = lane & 3;
  float* out = m.y + static_cast<int64_t>(blockIdx.z) * p.n_tokens * m.rows;
#pragma unroll
  for (int c = 0; c < kTokens / 8; ++c) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int out_row = row0 + warp_row + g + 8 * (e >> 1);
      const int out_token = tok0 + 8 * c + 2 * t + (e & 1);
      if (out_row >= m.rows || out_token >= p.n_tokens) continue;
      float* target = out + static_cast<int64_t>(out_token) * m.rows + out_row;
      *target = p.accumulate ? *target + acc[4 * c + e] : acc[4 * c + e];
    }
  }
#else
  __trap();  // built for sm_90a only (WgmmaAvailable)
#endif
}

// Whether `kernel` has code for the current device.
bool HasCode(const void* kernel) {
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess) return true;
  cudaGetLastError();  // the lookup's error is an answer, not a failure
  return false;
}

}  // namespace

bool WgmmaAvailable() {
  static std::atomic<uint64_t> checked{0}, available{0};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  const uint64_t bit = uint64_t{1} << (device % 64);
  if (checked.load(std::memory_order_acquire) & bit) {
    return (available.load(std::memory_order_acquire) & bit) != 0;
  }
  int major = 0, minor = 0;
  bool ok =
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess;
  ok = ok && major == 9 && minor == 0 &&
       HasCode(reinterpret_cast<const void*>(MatMulHalfWgmmaKernel<kQ4_K, 64>)) &&
       HasCode(reinterpret_cast<const void*>(MatMulHalfWgmmaKernel<kQ6_K, 64>));
  if (ok) available.fetch_or(bit, std::memory_order_release);
  checked.fetch_or(bit, std::memory_order_release);
  return ok;
}

int WgmmaTileRows(uint32_t type) {
  return type == kQ4_K ? WgmmaLayout<kQ4_K, 64>::kRows : WgmmaLayout<kQ6_K, 64>::kRows;
}

cudaError_t LaunchWgmma(uint32_t type, int tile_tokens, const Problem& p, dim3 grid,
                        cudaStream_t stream, bool overlap_previous) {
  cudaError_t launched = cudaErrorInvalidValue;
  const auto launch = [&]<uint32_t kType, int kTokens>() {
    using L = WgmmaLayout<kType, kTokens>;
    constexpr auto kernel = MatMulHalfWgmmaKernel<kType, kTokens>;
    launched = AllowSharedMemory<kernel, L::kBytes>();
    if (launched != cudaSuccess) return;
    launched = LaunchAfterPrevious(overlap_previous, kernel, grid, dim3(L::kThreads), L::kBytes,
                                   stream, p);
  };
  const auto launch_type = [&]<int kTokens>() {
    if (type == kQ4_K) {
      launch.template operator()<kQ4_K, kTokens>();
    } else if (type == kQ6_K) {
      launch.template operator()<kQ6_K, kTokens>();
    }
  };
  if (tile_tokens == 32) {
    launch_type.template operator()<32>();
  } else if (tile_tokens == 64) {
    launch_type.template operator()<64>();
  }
  return launched;
}

}  // namespace chord::cuda::half_mma
