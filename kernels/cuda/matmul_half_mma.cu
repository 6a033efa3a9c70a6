#include "kernels/cuda/matmul_half_mma.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>

#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/half_mma_common.cuh"
#include "kernels/cuda/kquant_tiles.cuh"
#include "kernels/cuda/matmul_half_wgmma.h"
#include "kernels/cuda/matvec_common.cuh"
#include "kernels/cuda/mma_order.cuh"

namespace chord::cuda {
namespace {

using namespace half_mma;

// A block: 64 weight rows x 8 NT tokens of output (NT = 1, 2, 4 or 8: up to
// 64 tokens) over a share of K, one 256-element weight block (a K step) at a
// time. Four warps: warp w takes rows 32 (w & 1).. for all the block's
// tokens over half of each K step (w >> 1: elements 0-127 or 128-255), 2 x NT
// mma tiles of 16 rows x 8 tokens, so that each weight it decodes serves NT
// tiles; the two halves' sums meet in shared memory at the end. K steps go
// through two shared-memory stages filled by asynchronous copies, the next
// step's bytes in flight while this one is multiplied.
constexpr int kTileRows = 64;
constexpr int kThreads = 128;
// Threads that copy one row's block each step.
constexpr int kParts = kThreads / kTileRows;
// A token's 256 halves in shared memory, padded to 136 words: the eight
// tokens of an mma tile start 8 banks apart, so a warp's 8-byte fragment
// loads take the minimum of two wavefronts.
constexpr int kTokenBytes = kStep * 2 + 32;
constexpr int kMaxSplits = 8;
constexpr int kSms = 132;  // an H100/H200: what the split heuristic plans for
constexpr int kBlocksPerSm = 2;

template <uint32_t kType, int NT>
struct SharedLayout {
  static constexpr int kTileTokens = 8 * NT;
  // A row's block: Q4_K 36 words, so rows g = 0..7 start in banks 4g; Q6_K
  // up to 14 + 210 bytes, 60 words (banks 28g).
  static constexpr int kSlot = kType == kQ4_K ? 144 : 240;
  static constexpr int kTokens = kTileRows * kSlot;  // in a stage, after the weights
  static constexpr int kStageBytes = kTokens + kTileTokens * kTokenBytes;
  static constexpr int kTable = 2 * kStageBytes;  // after the two stages
  static constexpr int kBytes = kTable + kTileRows * kTableWords * 4;
  // The second K half's sums, handed over at the end (in the stages).
  static_assert(2 * 32 * 2 * NT * 4 * 4 <= 2 * kStageBytes, "the hand-over fits");
};

// c += a (16 x 16, row-major f16) x b (16 x 8, column-major f16).
__device__ __forceinline__ void MmaF16(const uint32_t (&a)[4], uint2 b, float (&c)[4]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y));
}

// The fragment layout, and why the activations come in mma order: a lane
// (g = lane / 4, t = lane % 4) holds, of a 16-element slice, the elements
// 2t, 2t + 1 (registers a0, a1 for rows g, g + 8; b0 for token g) and 2t + 8,
// 2t + 9 (a2, a3; b1). Reading a K-quant row, the lane takes four
// consecutive bytes 4t..4t + 3 of the slice and decodes bytes 0 and 2 into
// one register, 1 and 3 into the other: the slice's elements 4t, 4t + 2 and
// 4t + 1, 4t + 3. A product does not depend on the order of its terms, only
// on the weights and activations meeting in the same positions: the
// activations are stored so that one 8-byte load gives the lane exactly
// those elements, (4t, 4t + 2) then (4t + 1, 4t + 3).
//
// The B fragments of the 16-element slice at `element` for the warp's NT
// token tiles; `b_lane` is the lane's token row, 8t bytes in.
template <int NT>
__device__ __forceinline__ void LoadSlice(const uint8_t* b_lane, int element, uint2 (&b)[NT]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    b[nt] = *reinterpret_cast<const uint2*>(b_lane + nt * 8 * kTokenBytes + 2 * element);
  }
}

// One warp's 32 rows x 8 NT tokens over half (`kh`) of one Q4_K K step.
// Bytes 32j..32j + 31 of the nibbles hold group j: low nibbles elements
// 64j..64j + 31 (sub-block 2j), high nibbles 64j + 32.. (2j + 1). A lane's
// word at byte 32j + 16h + 4t gives its elements of two slices: 64j + 16h
// (low) and 64j + 32 + 16h (high).
template <int NT>
__device__ __forceinline__ void ComputeQ4K(const uint8_t* stage, const uint32_t* table, int wm,
                                           int kh, int lane, float (&acc)[2][NT][4]) {
  using SL = SharedLayout<kQ4_K, NT>;
  const int g = lane >> 2, t = lane & 3;
  const uint8_t* b_lane = stage + SL::kTokens + g * kTokenBytes + 8 * t;
  const uint8_t* a_lane = stage + (wm + g) * SL::kSlot + 16 + 4 * t;  // the nibbles: byte 16 on
  const uint32_t* t_lane = table + (wm + g) * kTableWords;
#pragma unroll 1
  for (int j = 2 * kh; j < 2 * kh + 2; ++j) {
    uint4 sc[2][2];  // [mt][row g, g + 8]: scale, -min of sub-block 2j, then of 2j + 1
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        sc[mt][rr] =
            *reinterpret_cast<const uint4*>(t_lane + (16 * mt + 8 * rr) * kTableWords + 4 * j);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t w[2][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          w[mt][rr] = *reinterpret_cast<const uint32_t*>(a_lane + (16 * mt + 8 * rr) * SL::kSlot +
                                                         32 * j + 16 * h);
        }
      }
#pragma unroll
      for (int high = 0; high < 2; ++high) {
        uint2 b[NT];
        LoadSlice<NT>(b_lane, 64 * j + 32 * high + 16 * h, b);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const uint32_t s0 = high ? sc[mt][0].z : sc[mt][0].x;
          const uint32_t m0 = high ? sc[mt][0].w : sc[mt][0].y;
          const uint32_t s1 = high ? sc[mt][1].z : sc[mt][1].x;
          const uint32_t m1 = high ? sc[mt][1].w : sc[mt][1].y;
          const int shift = 4 * high;
          const uint32_t a[4] = {DecodeQ4Pair(w[mt][0] >> shift, s0, m0),
                                 DecodeQ4Pair(w[mt][1] >> shift, s1, m1),
                                 DecodeQ4Pair(w[mt][0] >> (shift + 8), s0, m0),
                                 DecodeQ4Pair(w[mt][1] >> (shift + 8), s1, m1)};
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) MmaF16(a, b[nt], acc[mt][nt]);
        }
      }
    }
  }
}

// The same over half (h = kh) of one Q6_K K step. Element 128h + 32q + l has
// its low 4 bits in ql[64h + 32 (q & 1) + l] >> 4 (q >> 1) and its high 2
// bits in qh[32h + l] >> 2q; for l = 16s + 4t.., a lane's three words (two of
// ql, one of qh) give its elements of four slices, 128h + 32q + 16s for
// q = 0..3.
template <int NT>
__device__ __forceinline__ void ComputeQ6K(const uint8_t* stage, const uint32_t* table, int wm,
                                           int h, int lane, float (&acc)[2][NT][4]) {
  using SL = SharedLayout<kQ6_K, NT>;
  const int g = lane >> 2, t = lane & 3;
  const uint8_t* b_lane = stage + SL::kTokens + g * kTokenBytes + 8 * t;
  const uint8_t* blocks[2][2];  // [mt][row g, g + 8]: the row's block, 4t bytes in
  const uint32_t* entries[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int row = wm + 16 * mt + 8 * rr + g;
      entries[mt][rr] = table + row * kTableWords;
      blocks[mt][rr] = stage + row * SL::kSlot + entries[mt][rr][16 + h] + 4 * t;
    }
  }
#pragma unroll 1
  for (int s = 0; s < 2; ++s) {
    uint32_t ql[2][2][2], qh[2][2];  // [mt][rr]([q & 1])
    uint4 sc[2][2];                  // [mt][rr]: the scales of q = 0..3
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const uint8_t* block = blocks[mt][rr];
        ql[mt][rr][0] = Lds32Unaligned2(block + 64 * h + 16 * s);
        ql[mt][rr][1] = Lds32Unaligned2(block + 64 * h + 32 + 16 * s);
        qh[mt][rr] = Lds32Unaligned2(block + 128 + 32 * h + 16 * s);
        sc[mt][rr] = *reinterpret_cast<const uint4*>(entries[mt][rr] + 8 * h + 4 * s);
      }
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      uint2 b[NT];
      LoadSlice<NT>(b_lane, 128 * h + 32 * q + 16 * s, b);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        uint32_t a[4];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const uint32_t low = ql[mt][rr][q & 1] >> (4 * (q >> 1));
          const uint32_t high = qh[mt][rr] >> (2 * q);
          const uint4& scales = sc[mt][rr];
          const uint32_t scale = q == 0   ? scales.x
                                 : q == 1 ? scales.y
                                 : q == 2 ? scales.z
                                          : scales.w;
          a[rr] = DecodeQ6Pair(low, high << 4, scale);           // bytes 0, 2
          a[2 + rr] = DecodeQ6Pair(low >> 8, high >> 4, scale);  // bytes 1, 3
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) MmaF16(a, b[nt], acc[mt][nt]);
      }
    }
  }
}

template <uint32_t kType, int NT>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) MatMulHalfMmaKernel(Problem p) {
  extern __shared__ __align__(16) uint8_t shared[];
  using SL = SharedLayout<kType, NT>;
  auto* table = reinterpret_cast<uint32_t*>(shared + SL::kTable);
  const int tok0 = static_cast<int>(blockIdx.x) * SL::kTileTokens;
  int row_tile = 0;
  const Matrix m = MatrixOfTile(p, static_cast<int>(blockIdx.y), row_tile);
  const int row0 = row_tile * kTileRows;
  const int k_steps = p.cols / kStep;
  const int kb_begin = static_cast<int>(blockIdx.z) * p.steps_per_split;
  const int kb_end = min(k_steps, kb_begin + p.steps_per_split);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane >> 2, t = lane & 3;
  const int wm = (warp & 1) * 32, kh = warp >> 1;

  // Thread r * kParts + part copies its share of row r's block; warp w the
  // tokens w, w + 4, ..., a lane 16 bytes of each. Rows and tokens past the
  // matrix or batch copy nothing: their slots hold stale bytes whose results
  // are not stored.
  const int r = static_cast<int>(threadIdx.x) / kParts,
            part = static_cast<int>(threadIdx.x) % kParts;
  const bool row_live = row0 + r < m.rows;
  const uint8_t* row = m.w + static_cast<uint64_t>(min(row0 + r, m.rows - 1)) * m.row_bytes;
  const uint8_t* matrix_end = m.w + static_cast<uint64_t>(m.rows) * m.row_bytes;
  const uint8_t* fill_row =
      m.w + static_cast<uint64_t>(min(row0 + wm + lane, m.rows - 1)) * m.row_bytes;
  const int live_tokens = min(SL::kTileTokens, p.n_tokens - tok0);
  const uint64_t token_bytes = static_cast<uint64_t>(p.cols) * 2;
  const uint8_t* lane_tokens = p.x + static_cast<uint64_t>(tok0 + warp) * token_bytes + 16 * lane;
  const auto issue_weights = [&](int kb, uint8_t* stage) {
    if (row_live) CopyKBlock<kType, kParts>(row, kb, part, matrix_end, stage + r * SL::kSlot);
  };
  const auto issue_tokens = [&](int kb, uint8_t* stage) {
    const uint8_t* src = lane_tokens + static_cast<uint64_t>(kb) * kStep * 2;
    uint8_t* dst = stage + SL::kTokens + warp * kTokenBytes + 16 * lane;
    for (int token = warp; token < live_tokens; token += kThreads / 32) {
      CopyAsync16(dst, src);
      src += (kThreads / 32) * token_bytes;
      dst += (kThreads / 32) * kTokenBytes;
    }
  };
  const auto issue = [&](int kb, uint8_t* stage) {
    issue_weights(kb, stage);
    issue_tokens(kb, stage);
    CommitCopies();
  };

  float acc[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    }
  }

  const KSteps step_at(kb_begin, kb_end, static_cast<int>(blockIdx.y));
  const int steps = step_at.count;
  // Launched after the previous kernel (dependent_launch.cuh): the weights
  // (never written by kernels) are copied before its results are awaited,
  // the first step's into its stage and the rest of the block's K range
  // into L2; the activations and every store come after.
  LetNextKernelStart();
  issue_weights(step_at(0), shared);
  if (row_live) PrefetchRowToL2<kType>(row, m.row_bytes, kb_begin, kb_end, part, kParts);
  WaitForPreviousKernel();
  issue_tokens(step_at(0), shared);
  CommitCopies();
  for (int i = 0; i < steps; ++i) {
    const int kb = step_at(i);
    uint8_t* stage = shared + (i & 1) * SL::kStageBytes;
    if (i + 1 < steps) {
      issue(step_at(i + 1), shared + ((i + 1) & 1) * SL::kStageBytes);
      WaitForCopiesBut<1>();
    } else {
      WaitForCopiesBut<0>();
    }
    __syncthreads();  // every thread's copies of this stage have landed
    // Each warp fills the entries it reads (its 32 rows, its K half): no
    // barrier between the table and the products.
    FillTableEntry<kType>(stage + (wm + lane) * SL::kSlot, KBlockOffset<kType>(fill_row, kb), kh,
                          table + (wm + lane) * kTableWords);
    __syncwarp();
    // A warp whose rows all lie past the matrix has nothing to add.
    if (row0 + wm < m.rows) {
      if constexpr (kType == kQ4_K) {
        ComputeQ4K<NT>(stage, table, wm, kh, lane, acc);
      } else {
        ComputeQ6K<NT>(stage, table, wm, kh, lane, acc);
      }
    }
    __syncthreads();  // the stage and the table are rewritten next
  }

  // The second K half's sums to the first's warps, through the (now idle)
  // stages: value e of lane l of warp w at ((w & 1) * kValues + e) * 32 + l.
  constexpr int kValues = 2 * NT * 4;
  auto* handover = reinterpret_cast<float*>(shared);
  if (kh == 1) {
#pragma unroll
    for (int e = 0; e < kValues; ++e) {
      handover[((warp & 1) * kValues + e) * 32 + lane] = acc[e / (NT * 4)][e / 4 % NT][e % 4];
    }
  }
  __syncthreads();
  if (kh == 1) return;

  // With split-K, y is this split's slice of the partial sums.
  float* out = m.y + static_cast<int64_t>(blockIdx.z) * p.n_tokens * m.rows;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e = (mt * NT + nt) * 4 + i;
        const float sum = acc[mt][nt][i] + handover[((warp & 1) * kValues + e) * 32 + lane];
        const int out_row = row0 + wm + mt * 16 + g + 8 * (i >> 1);
        const int out_token = tok0 + nt * 8 + 2 * t + (i & 1);
        if (out_row >= m.rows || out_token >= p.n_tokens) continue;
        float* target = out + static_cast<int64_t>(out_token) * m.rows + out_row;
        *target = p.accumulate ? *target + sum : sum;
      }
    }
  }
}

// Four floats to four halves in mma order (0, 2, 1, 3) per thread.
__global__ void FloatToHalfMmaOrderKernel(const float4* __restrict__ x, int64_t groups,
                                          uint2* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= groups) return;
  out[i] = HalvesInMmaOrder(x[i]);
}

// The split sums of up to three matrices: element i of segment s (n_s
// values) is y_s[i] (+)= partials_s[i] + partials_s[n_s + i] + ..., in split
// order.
struct SplitSums {
  const float* partials0;
  const float* partials1;
  const float* partials2;
  float* y0;
  float* y1;
  float* y2;
  int64_t end0, end1, end2;  // segment ends in the launch's index space
  int splits;
  bool accumulate;
};

__global__ void SumSplitsKernel(SplitSums p) {
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const float* partials = p.partials0;
  float* y = p.y0;
  int64_t n = p.end0;
  if (i >= p.end2) return;
  if (i >= p.end1) {
    partials = p.partials2, y = p.y2, n = p.end2 - p.end1, i -= p.end1;
  } else if (i >= p.end0) {
    partials = p.partials1, y = p.y1, n = p.end1 - p.end0, i -= p.end0;
  }
  float sum = p.accumulate ? y[i] : 0.0f;
  for (int split = 0; split < p.splits; ++split) sum += partials[split * n + i];
  y[i] = sum;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Token tiles of 8, 16, 32 or 64 (NT = 1, 2, 4, 8): the smallest that holds
// a batch, 64 for larger ones.
int TileTokensFor(int n_tokens) {
  return n_tokens <= 8 ? 8 : n_tokens <= 16 ? 16 : n_tokens <= 32 ? 32 : 64;
}

// How many blocks share each output tile's K range: enough for about two
// waves of blocks, at least four K steps each. More than the one wave that
// SplitsToFillWave allows the integer kernel: this kernel is bound by the
// latency of its few warps an SM, not by the partial sums' traffic (11008 x
// 4096 on an H200, 172 tiles at 64 tokens: 1, 2, 3 and 4 splits 46.0, 43.3,
// 39.6 and 45.6 us; 128 tokens, 344 tiles: 2 splits 79.0 us against 142.8).
int SplitsFor(int64_t row_tiles, int64_t cols, int n_tokens) {
  const int64_t tiles = row_tiles * CeilDiv(n_tokens, TileTokensFor(n_tokens));
  const int64_t waves_of_blocks = 2 * int64_t{kSms} * kBlocksPerSm;
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(kMaxSplits, cols / kStep / 4));
  return static_cast<int>(std::clamp<int64_t>((waves_of_blocks + tiles / 2) / tiles, 1, most));
}

}  // namespace

cudaError_t LaunchFloatToHalfMmaOrder(const float* x, int64_t n_tokens, int64_t cols, uint16_t* out,
                                      cudaStream_t stream) {
  if (n_tokens <= 0 || cols <= 0 || cols % 4 != 0 || x == nullptr || out == nullptr ||
      reinterpret_cast<uintptr_t>(x) % 16 != 0 || reinterpret_cast<uintptr_t>(out) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t groups = n_tokens * cols / 4;
  constexpr int kBlock = 256;
  FloatToHalfMmaOrderKernel<<<static_cast<unsigned>(CeilDiv(groups, kBlock)), kBlock, 0, stream>>>(
      reinterpret_cast<const float4*>(x), groups, reinterpret_cast<uint2*>(out));
  return cudaGetLastError();
}

bool MatMulHalfMmaSupports(const DeviceMatrix& w) {
  return (w.type == kQ4_K || w.type == kQ6_K) && w.cols > 0 && w.cols % kStep == 0 && w.rows > 0 &&
         w.rows <= int64_t{65535} * kTileRows && w.cols <= (int64_t{1} << 30) &&
         w.data != nullptr && reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
}

namespace {

int64_t RowTiles(std::span<const DeviceMatrix> w, int tile_rows = kTileRows) {
  int64_t tiles = 0;
  for (const DeviceMatrix& m : w) tiles += CeilDiv(m.rows, tile_rows);
  return tiles;
}

// The matrices of a group: each supported, one type and width, 1 to
// kMatMulHalfMmaMaxGroup of them, all their row tiles within grid y.
bool GroupSupported(std::span<const DeviceMatrix> w) {
  if (w.empty() || w.size() > kMatMulHalfMmaMaxGroup) return false;
  for (const DeviceMatrix& m : w) {
    if (!MatMulHalfMmaSupports(m) || m.type != w[0].type || m.cols != w[0].cols) return false;
  }
  return RowTiles(w) <= 65535;
}

int64_t TotalRows(std::span<const DeviceMatrix> w) {
  int64_t rows = 0;
  for (const DeviceMatrix& m : w) rows += m.rows;
  return rows;
}

// How a group's product runs: tiles of 32 and 64 tokens on the wgmma kernel
// where the device runs it (matmul_half_wgmma.h), smaller ones on mma.sync.
struct Plan {
  bool wgmma;
  int tile_rows;
  int tile_tokens;
  int splits;  // the most a launch with enough scratch uses
};

// The wgmma kernel's K splits: the count (at most kMaxSplits, at least two K
// steps each) whose blocks fill their last wave best, a larger count taken
// only when it fills it 5% better (each split adds partial sums to write and
// read). Against SplitsFor's two waves, llama2-7b Q4_K_M at 64
// sequences: 6.78 against 6.83 ms a step (its 4096-row products get 8
// splits instead of 4: 256 blocks instead of 128 on 264 places).
int WgmmaSplitsFor(int64_t tiles, int64_t cols) {
  const int64_t places = int64_t{kSms} * half_mma::kWgmmaBlocksPerSm;
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(kMaxSplits, cols / kStep / 2));
  int best = 1;
  double best_fill = 0.0;
  for (int splits = 1; splits <= most; ++splits) {
    const int64_t blocks = tiles * splits;
    const double fill =
        static_cast<double>(blocks) / static_cast<double>(CeilDiv(blocks, places) * places);
    if (fill > 1.05 * best_fill) best = splits, best_fill = fill;
  }
  return best;
}

Plan PlanFor(std::span<const DeviceMatrix> w, int n_tokens) {
  Plan plan{false, kTileRows, TileTokensFor(n_tokens), 1};
  if (half_mma::WgmmaTakes(plan.tile_tokens) && half_mma::WgmmaAvailable()) {
    plan.wgmma = true;
    plan.tile_rows = half_mma::WgmmaTileRows(w[0].type);
    plan.splits = WgmmaSplitsFor(RowTiles(w, plan.tile_rows) * CeilDiv(n_tokens, plan.tile_tokens),
                                 w[0].cols);
    return plan;
  }
  plan.splits = SplitsFor(RowTiles(w), w[0].cols, n_tokens);
  return plan;
}

// Floats of scratch memory the plan's K splits need (0: it does not split).
size_t ScratchFloatsFor(const Plan& plan, std::span<const DeviceMatrix> w, int n_tokens) {
  return plan.splits > 1 ? static_cast<size_t>(plan.splits) * static_cast<size_t>(n_tokens) *
                               static_cast<size_t>(TotalRows(w))
                         : 0;
}

// With `deferred`, the split sums are not added: deferred[i] says where
// matrix i's result is held (its partial sums in scratch, or y[i]).
cudaError_t LaunchGroup(std::span<const DeviceMatrix> w, const uint16_t* x, int n_tokens,
                        std::span<float* const> y, bool accumulate, float* scratch,
                        size_t scratch_floats, cudaStream_t stream, bool overlap_previous,
                        PartialSums* deferred = nullptr) {
  if (!GroupSupported(w) || y.size() != w.size() || n_tokens <= 0 ||
      n_tokens > int64_t{65535} * 64 || x == nullptr || reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  for (float* out : y) {
    if (out == nullptr) return cudaErrorInvalidValue;
  }
  const Plan plan = PlanFor(w, n_tokens);
  const size_t wanted = ScratchFloatsFor(plan, w, n_tokens);
  const bool split = wanted > 0 && scratch != nullptr && scratch_floats >= wanted;
  const int splits = split ? plan.splits : 1;
  const auto k_steps = static_cast<int>(w[0].cols / kStep);
  const int per_split = static_cast<int>(CeilDiv(k_steps, splits));
  const int tile_tokens = plan.tile_tokens;
  const dim3 grid(static_cast<unsigned>(CeilDiv(n_tokens, tile_tokens)),
                  static_cast<unsigned>(RowTiles(w, plan.tile_rows)),
                  static_cast<unsigned>(CeilDiv(k_steps, per_split)));
  // Each matrix's output: y, or its slice of the partial sums.
  Matrix matrices[kMatMulHalfMmaMaxGroup] = {};
  const float* partials[kMatMulHalfMmaMaxGroup] = {};
  int64_t partial_offset = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    float* out = y[i];
    if (split) {
      out = scratch + partial_offset;
      partials[i] = out;
      partial_offset += static_cast<int64_t>(grid.z) * n_tokens * w[i].rows;
    }
    matrices[i] = {static_cast<const uint8_t*>(w[i].data), w[i].row_bytes,
                   static_cast<int>(w[i].rows), out};
  }
  // Tiles past the group's matrices never come: grid.y ends the group.
  const int first_tile1 =
      w.size() > 1 ? static_cast<int>(RowTiles(w.first(1), plan.tile_rows))
                   : static_cast<int>(grid.y);
  const int first_tile2 =
      w.size() > 2 ? static_cast<int>(RowTiles(w.first(2), plan.tile_rows))
                   : static_cast<int>(grid.y);
  const Problem p{matrices[0],
                  matrices[1],
                  matrices[2],
                  first_tile1,
                  first_tile2,
                  static_cast<int>(w[0].cols),
                  reinterpret_cast<const uint8_t*>(x),
                  n_tokens,
                  per_split,
                  split ? false : accumulate};
  cudaError_t launched = cudaSuccess;
  const auto launch = [&]<uint32_t kType, int NT>() {
    using SL = SharedLayout<kType, NT>;
    constexpr auto kernel = MatMulHalfMmaKernel<kType, NT>;
    launched = AllowSharedMemory<kernel, SL::kBytes>();
    if (launched != cudaSuccess) return;
    launched =
        LaunchAfterPrevious(overlap_previous, kernel, grid, dim3(kThreads), SL::kBytes, stream, p);
  };
  const auto launch_type = [&]<uint32_t kType>() {
    if (tile_tokens == 8) {
      launch.template operator()<kType, 1>();
    } else if (tile_tokens == 16) {
      launch.template operator()<kType, 2>();
    } else if (tile_tokens == 32) {
      launch.template operator()<kType, 4>();
    } else {
      launch.template operator()<kType, 8>();
    }
  };
  if (plan.wgmma) {
    launched = half_mma::LaunchWgmma(w[0].type, tile_tokens, p, grid, stream, overlap_previous);
  } else if (w[0].type == kQ4_K) {
    launch_type.template operator()<kQ4_K>();
  } else {
    launch_type.template operator()<kQ6_K>();
  }
  if (launched != cudaSuccess) return launched;
  if (deferred != nullptr) {
    for (size_t i = 0; i < w.size(); ++i) {
      deferred[i] = split ? PartialSums{partials[i], static_cast<int>(grid.z),
                                        static_cast<int64_t>(n_tokens) * w[i].rows}
                          : PartialSums{y[i], 1, 0};
    }
    return cudaSuccess;
  }
  if (!split) return cudaSuccess;
  // The partial sums of every matrix in one launch.
  SplitSums sums{};
  sums.partials0 = partials[0];
  sums.partials1 = partials[1];
  sums.partials2 = partials[2];
  sums.y0 = y[0];
  sums.y1 = w.size() > 1 ? y[1] : nullptr;
  sums.y2 = w.size() > 2 ? y[2] : nullptr;
  int64_t end = 0;
  int64_t* ends[kMatMulHalfMmaMaxGroup] = {&sums.end0, &sums.end1, &sums.end2};
  for (size_t i = 0; i < kMatMulHalfMmaMaxGroup; ++i) {
    if (i < w.size()) end += static_cast<int64_t>(n_tokens) * w[i].rows;
    *ends[i] = end;
  }
  sums.splits = static_cast<int>(grid.z);
  sums.accumulate = accumulate;
  constexpr int kBlock = 256;
  SumSplitsKernel<<<static_cast<unsigned>(CeilDiv(end, kBlock)), kBlock, 0, stream>>>(sums);
  return cudaGetLastError();
}

}  // namespace

int64_t MatMulHalfMmaBestMaxTokens() { return half_mma::WgmmaAvailable() ? 192 : 64; }

size_t MatMulHalfMmaGroupScratchFloats(std::span<const DeviceMatrix> w, int n_tokens) {
  if (!GroupSupported(w) || n_tokens <= 0) return 0;
  return ScratchFloatsFor(PlanFor(w, n_tokens), w, n_tokens);
}

size_t MatMulHalfMmaScratchFloats(const DeviceMatrix& w, int n_tokens) {
  return MatMulHalfMmaGroupScratchFloats({&w, 1}, n_tokens);
}

cudaError_t LaunchMatMulHalfMma(const DeviceMatrix& w, const uint16_t* x, int n_tokens, float* y,
                                bool accumulate, float* scratch, size_t scratch_floats,
                                cudaStream_t stream, bool overlap_previous) {
  return LaunchGroup({&w, 1}, x, n_tokens, {&y, 1}, accumulate, scratch, scratch_floats, stream,
                     overlap_previous);
}

cudaError_t LaunchMatMulHalfMmaGroup(std::span<const DeviceMatrix> w, const uint16_t* x,
                                     int n_tokens, std::span<float* const> y, float* scratch,
                                     size_t scratch_floats, cudaStream_t stream,
                                     std::span<PartialSums> sums, bool overlap_previous) {
  if (!sums.empty() && sums.size() != w.size()) return cudaErrorInvalidValue;
  return LaunchGroup(w, x, n_tokens, y, false, scratch, scratch_floats, stream, overlap_previous,
                     sums.empty() ? nullptr : sums.data());
}

}  // namespace chord::cuda
