#include <algorithm>

#include "kernels/cuda/kquant_tiles.cuh"
#include "kernels/cuda/matmul_mma.h"
#include "kernels/cuda/matmul_q8_mma.h"
#include "kernels/cuda/matvec_common.cuh"

namespace chord::cuda {
namespace {

// A block: 64 weight rows x 64 tokens of output over a share of K, one
// 256-element weight block (a K step) at a time. Four warps, each 32 rows x 32
// tokens: 2 x 4 mma tiles of 16 rows x 8 tokens. K steps go through two
// shared-memory stages filled by asynchronous copies, the next step's bytes in
// flight while this one is multiplied.
constexpr int kTileRows = 64;
constexpr int kTileTokens = 64;
constexpr int kStep = 256;  // elements of a K step: one Q4_K/Q6_K block, one activation record
// Byte offsets in a record: each 32 values' sum as 32 * high + low (high int8,
// low 0..31), then the scale.
constexpr int kRecordSumsHigh = 256, kRecordSumsLow = 264, kRecordScale = 272;
constexpr int kTokenSlot = 304;  // bytes a record takes in shared memory: 76 words, so the
                                 // eight tokens of an mma tile start in banks 12g mod 32
constexpr int kMaxSplits = 8;
constexpr int kSms = 132;  // an H100/H200: what the split heuristic plans for

// Per weight type: the shared-memory slot of a row's block (CopyKBlock: a
// Q6_K block sits KBlockOffset bytes into it).
// kRowWords: a row's entry in the scale table (int scales, then the rest),
// padded so that the entries of the rows a warp reads or writes at once fall
// in different banks (at 8 words, rows r and r + 4 shared banks: 4-way
// conflicts on the table's stores).
template <uint32_t kType>
struct Layout;
template <>
struct Layout<kQ4_K> {
  static constexpr int kSlot = 144;  // 36 words: rows g = 0..7 of a tile start in banks 4g
  // scales, mins (4 + 4 bytes each), d, dmin, padding: 10 words (8-byte loads),
  // so rows 0..15 start in 16 different even banks
  static constexpr int kRowWords = 10;
  static constexpr int kThreads = 128, kTokenTiles = 4, kBlocksPerSm = 3;
};
template <>
struct Layout<kQ6_K> {
  static constexpr int kSlot = 224;  // at most 14 copies of 16 bytes (offset 14 + 210)
  // 16 signed scales (bytes), d, padding: 12 words (16-byte loads), so rows
  // 0..7 take 8 different groups of 4 banks
  static constexpr int kRowWords = 12;
  static constexpr int kThreads = 128, kTokenTiles = 4, kBlocksPerSm = 2;
};

constexpr int kDecodedStride = kStep + 16;  // Q6_K rows decoded to int8: 68 words, banks 4g

template <uint32_t kType>
struct SharedLayout {
  using L = Layout<kType>;
  static constexpr int kTokens = kTileRows * L::kSlot;  // in a stage, after the weights
  static constexpr int kStageBytes = kTokens + kTileTokens * kTokenSlot;
  static constexpr int kTable = 2 * kStageBytes;                          // after the two stages
  static constexpr int kDecoded = kTable + kTileRows * L::kRowWords * 4;  // Q6_K only
  static constexpr int kBytes = kDecoded + (kType == kQ6_K ? kTileRows * kDecodedStride : 0);
};

// An exact int -> float for |v| < 2^22 on the full-rate pipes: 1.5 * 2^23 + v
// is a float whose last bits are v; subtracting 1.5 * 2^23 leaves v.
__device__ __forceinline__ float SmallIntToFloat(int v) {
  return __int_as_float(v + 0x4B400000) - 12582912.0f;
}

// Four bytes of 0..63 minus 32 each, with no borrow between bytes.
__device__ __forceinline__ uint32_t Minus32(uint32_t v) { return (v + 0x60606060u) ^ 0x80808080u; }

// c = a (16 x 32, row-major s8) x b (32 x 8, column-major s8).
__device__ __forceinline__ void MmaK32(const uint32_t (&a)[4], const uint32_t (&b)[2],
                                       int (&c)[4]) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};"
      : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0), "r"(0), "r"(0),
        "r"(0));
}
// c = a (16 x 16 s8) x b (16 x 8 s8).
__device__ __forceinline__ void MmaK16(const uint32_t (&a)[2], uint32_t b, int (&c)[4]) {
  asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%7,%8,%9,%10};"
      : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(b), "r"(0), "r"(0), "r"(0), "r"(0));
}

struct Problem {
  const uint8_t* w;
  uint64_t row_bytes;
  int rows;
  int cols;
  const uint8_t* x;  // activation records
  int n_tokens;
  int steps_per_split;
  float* y;
  bool accumulate;
};

// What one thread copies each K step: kParts = threads / 64 threads a weight
// row (every kParts-th 16 bytes of its block) and as many a token (every
// kParts-th 16 bytes of its record).
struct CopyPlan {
  const uint8_t* row;    // the thread's weight row
  const uint8_t* token;  // its token's first record
  int r, part;
  bool row_live, token_live;  // within the matrix, within the batch
};

template <int kParts>
__device__ __forceinline__ CopyPlan PlanCopies(const Problem& p, int row0, int tok0) {
  CopyPlan plan;
  plan.r = static_cast<int>(threadIdx.x) / kParts;
  plan.part = static_cast<int>(threadIdx.x) % kParts;
  // Rows and tokens past the matrix or batch copy nothing: their slots hold
  // stale bytes whose results are not stored.
  plan.row_live = row0 + plan.r < p.rows;
  plan.token_live = tok0 + plan.r < p.n_tokens;
  const int row = min(row0 + plan.r, p.rows - 1);
  plan.row = p.w + static_cast<uint64_t>(row) * p.row_bytes;
  const int token = min(tok0 + plan.r, p.n_tokens - 1);
  plan.token = p.x + static_cast<uint64_t>(token) * (p.cols / kStep) * kQ8KRecordBytes;
  return plan;
}

template <uint32_t kType, int kParts>
__device__ __forceinline__ void IssueStage(const Problem& p, const CopyPlan& plan, int kb,
                                           uint8_t* stage) {
  if (plan.row_live) {
    CopyKBlock<kType, kParts>(plan.row, kb, plan.part,
                              p.w + static_cast<uint64_t>(p.rows) * p.row_bytes,
                              stage + plan.r * Layout<kType>::kSlot);
  }
  if (!plan.token_live) return;
  const uint8_t* record = plan.token + static_cast<uint64_t>(kb) * kQ8KRecordBytes;
  uint8_t* token_slot = stage + SharedLayout<kType>::kTokens + plan.r * kTokenSlot;
#pragma unroll
  for (int c = plan.part; c < kQ8KRecordBytes / 16; c += kParts) {
    CopyAsync16(token_slot + 16 * c, record + 16 * c);
  }
}

// Four 8 x 16-byte matrices from shared memory, one register of each per
// thread (row lane / 4, bytes 4 (lane % 4)): the fragment layout of mma's
// 8-bit operands. Lanes 8j..8j+7 give the row addresses of matrix j.
__device__ __forceinline__ void LoadMatrices(const uint8_t* row, uint32_t (&r)[4]) {
  const auto address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// Q4_K: a row's table entry (two threads a row, four sub-blocks each): the
// 6-bit scales and mins as bytes, d and dmin as floats.
__device__ __forceinline__ void DecodeQ4KRow(const uint8_t* block, int half, uint32_t* entry) {
  const uint8_t* q = block + 4;
  uint32_t scales = 0, mins = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float sc, m;
    ScaleMinK4(4 * half + i, q, &sc, &m);
    scales |= static_cast<uint32_t>(sc) << (8 * i);
    mins |= static_cast<uint32_t>(m) << (8 * i);
  }
  entry[half] = scales;
  entry[2 + half] = mins;
  if (half == 0) {
    entry[4] = __float_as_uint(Half(block));
    entry[5] = __float_as_uint(Half(block + 2));
  }
}

// Q6_K: a row's table entry (the 16 signed 8-bit scales, d) and its 256
// values minus 32 as int8 in `decoded` (two threads a row, one 128-element
// half each).
__device__ __forceinline__ void DecodeQ6KRow(const uint8_t* block, int half, uint32_t* entry,
                                             uint8_t* decoded) {
  entry[2 * half] = Lds32Unaligned2(block + 192 + 8 * half);
  entry[2 * half + 1] = Lds32Unaligned2(block + 196 + 8 * half);
  if (half == 0) entry[4] = __float_as_uint(Half(block + 208));
  // Element 128 h + 32 quarter + l: low 4 bits in ql[64 h + 32 (quarter & 1) + l]
  // >> 4 (quarter >> 1), high 2 bits in qh[32 h + l] >> 2 quarter.
  const uint8_t* ql = block + 64 * half;
  const uint8_t* qh = block + 128 + 32 * half;
  uint8_t* out = decoded + 128 * half;
#pragma unroll
  for (int l = 0; l < 32; l += 4) {
    const uint32_t lo0 = Lds32Unaligned2(ql + l), lo1 = Lds32Unaligned2(ql + 32 + l);
    const uint32_t hi = Lds32Unaligned2(qh + l);
    const auto store = [&](int at, uint32_t low, uint32_t high) {
      *reinterpret_cast<uint32_t*>(out + at) =
          Minus32((low & 0x0F0F0F0Fu) | ((high & 0x03030303u) << 4));
    };
    store(l, lo0, hi);
    store(32 + l, lo1, hi >> 2);
    store(64 + l, lo0 >> 4, hi >> 4);
    store(96 + l, lo1 >> 4, hi >> 6);
  }
}

__device__ __forceinline__ int Byte(uint32_t word, int i) {
  return static_cast<int>((word >> (8 * i)) & 0xffu);
}

// The B fragments of one 32-element sub-block for the warp's NT token tiles.
template <int NT>
__device__ __forceinline__ void LoadSubBlock(const uint8_t* b_rows, int sub, uint32_t (&b)[NT][2]) {
#pragma unroll
  for (int np = 0; np < NT / 2; ++np) {
    uint32_t r[4];
    LoadMatrices(b_rows + np * 16 * kTokenSlot + 32 * sub, r);
    b[2 * np][0] = r[0];
    b[2 * np][1] = r[1];
    b[2 * np + 1][0] = r[2];
    b[2 * np + 1][1] = r[3];
  }
}

// One warp's 32 rows x 8 NT tokens over one Q4_K K step: eight 32-element
// sub-blocks, an m16n8k32 per tile each, whose sums times the sub-block's
// scale add up in iacc; then the block's float scales and mins apply. Each
// sub-block's fragments are loaded while the one before is multiplied.
template <int NT>
__device__ __forceinline__ void ComputeQ4K(const uint8_t* stage, const uint32_t* table, int wm,
                                           int wn, int lane, float (&acc)[2][NT][4]) {
  using L = Layout<kQ4_K>;
  const int g = lane >> 2, t = lane & 3;
  const uint8_t* tokens = stage + SharedLayout<kQ4_K>::kTokens;
  // ldmatrix rows: A, matrix j = rows (j & 1) * 8.. of a tile, bytes (j >> 1) * 16..;
  // B, matrix j = tokens of tile (j >> 1), bytes (j & 1) * 16.. of a sub-block.
  const int j = lane >> 3, i = lane & 7;
  const uint8_t* a_rows = stage + (wm + (j & 1) * 8 + i) * L::kSlot + 16 + (j >> 1) * 16;
  const uint8_t* b_rows = tokens + (wn + (j >> 1) * 8 + i) * kTokenSlot + (j & 1) * 16;
  uint32_t scales[2][2][2];  // [mt][row g, g + 8][sub-blocks 0-3, 4-7]
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const uint2 packed =
          *reinterpret_cast<const uint2*>(table + (wm + mt * 16 + g + 8 * rr) * L::kRowWords);
      scales[mt][rr][0] = packed.x;
      scales[mt][rr][1] = packed.y;
    }
  }
  int iacc[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) iacc[mt][nt][e] = 0;
    }
  }
  // Sub-block 2p reads the low nibbles of pair p's bytes, 2p + 1 the high ones.
  // Each sub-block's activation fragments (and each pair's weight bytes) load
  // while the one before is multiplied; a loop over pairs, not unrolled, so
  // that the compiler does not hoist every load and run out of registers.
  uint32_t raw[2][4], b_even[NT][2], b_odd[NT][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) LoadMatrices(a_rows + mt * 16 * L::kSlot, raw[mt]);
  LoadSubBlock(b_rows, 0, b_even);
  const auto multiply = [&](const uint32_t(&a)[2][4], const uint32_t(&b)[NT][2], int sub) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int shift = 8 * (sub % 4);
      const int sc[2] = {
          static_cast<int>(((sub < 4 ? scales[mt][0][0] : scales[mt][0][1]) >> shift) & 0xffu),
          static_cast<int>(((sub < 4 ? scales[mt][1][0] : scales[mt][1][1]) >> shift) & 0xffu)};
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        int c[4];
        MmaK32(a[mt], b[nt], c);
#pragma unroll
        for (int e = 0; e < 4; ++e) iacc[mt][nt][e] += sc[e >> 1] * c[e];
      }
    }
  };
#pragma unroll 1
  for (int pair = 0; pair < 4; ++pair) {
    uint32_t a[2][4];
    LoadSubBlock(b_rows, 2 * pair + 1, b_odd);
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) a[mt][e] = raw[mt][e] & 0x0F0F0F0Fu;
    }
    multiply(a, b_even, 2 * pair);
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) a[mt][e] = (raw[mt][e] >> 4) & 0x0F0F0F0Fu;
    }
    if (pair < 3) {
      LoadSubBlock(b_rows, 2 * pair + 2, b_even);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
        LoadMatrices(a_rows + mt * 16 * L::kSlot + 32 * (pair + 1), raw[mt]);
    }
    multiply(a, b_odd, 2 * pair + 1);
  }
  // value = d_act * (d * sum(sc * q_w q_a) - dmin * sum(m * sum(q_a))). The
  // last sum, over the eight sub-blocks, is an m16n8k16 of the mins (k = the
  // sub-block, 8 of 16 used) with the activation sums split as 32 hi + lo.
  uint32_t min_rows[2][2];
  float2 scale[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const uint32_t* entry = table + (wm + mt * 16 + g + 8 * rr) * L::kRowWords;
      min_rows[mt][rr] = t < 2 ? entry[2 + t] : 0u;
      scale[mt][rr] = *reinterpret_cast<const float2*>(entry + 4);
    }
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const uint8_t* record = tokens + (wn + nt * 8 + g) * kTokenSlot;
    const uint32_t sums_hi =
        t < 2 ? *reinterpret_cast<const uint32_t*>(record + kRecordSumsHigh + 4 * t) : 0u;
    const uint32_t sums_lo =
        t < 2 ? *reinterpret_cast<const uint32_t*>(record + kRecordSumsLow + 4 * t) : 0u;
    float d_act[2];
#pragma unroll
    for (int jt = 0; jt < 2; ++jt) {
      d_act[jt] = *reinterpret_cast<const float*>(tokens + (wn + nt * 8 + 2 * t + jt) * kTokenSlot +
                                                  kRecordScale);
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      int hi[4], lo[4];
      MmaK16(min_rows[mt], sums_hi, hi);
      MmaK16(min_rows[mt], sums_lo, lo);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int rr = e >> 1;
        const float v = scale[mt][rr].x * static_cast<float>(iacc[mt][nt][e]) -
                        scale[mt][rr].y * SmallIntToFloat(32 * hi[e] + lo[e]);
        acc[mt][nt][e] = fmaf(d_act[e & 1], v, acc[mt][nt][e]);
      }
    }
  }
}

// The same for Q6_K from the decoded rows: sixteen 16-element groups, an
// m16n8k16 per tile each, times the group's signed 8-bit scale.
__device__ __forceinline__ void ComputeQ6K(const uint8_t* stage, const uint32_t* table,
                                           const uint8_t* decoded, int wm, int wn, int lane,
                                           float (&acc)[2][4][4]) {
  using L = Layout<kQ6_K>;
  const int g = lane >> 2, t = lane & 3;
  const uint8_t* tokens = stage + SharedLayout<kQ6_K>::kTokens;
  // ldmatrix rows: A, matrix j = rows (j & 1) * 8.. of a tile, group (j >> 1)
  // of a pair; B, matrix j = the tokens of tile j.
  const int j = lane >> 3, i = lane & 7;
  const uint8_t* a_rows = decoded + (wm + (j & 1) * 8 + i) * kDecodedStride + (j >> 1) * 16;
  const uint8_t* b_rows = tokens + (wn + j * 8 + i) * kTokenSlot;
  uint4 scales[2][2];  // [mt][row g, g + 8]: 16 signed bytes
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      scales[mt][rr] =
          *reinterpret_cast<const uint4*>(table + (wm + mt * 16 + g + 8 * rr) * L::kRowWords);
    }
  }
  const auto scale_of = [](const uint4& s, int group) {
    const uint32_t word = group < 4 ? s.x : group < 8 ? s.y : group < 12 ? s.z : s.w;
    return static_cast<int>(static_cast<int8_t>(Byte(word, group % 4)));
  };
  int iacc[2][4][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) iacc[mt][nt][e] = 0;
    }
  }
#pragma unroll 2
  for (int pair = 0; pair < 8; ++pair) {
    uint32_t a[2][4];  // [mt]: group 2 pair rows g, g + 8, then group 2 pair + 1
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
      LoadMatrices(a_rows + mt * 16 * kDecodedStride + 32 * pair, a[mt]);
#pragma unroll
    for (int second = 0; second < 2; ++second) {
      const int group = 2 * pair + second;
      uint32_t b[4];
      LoadMatrices(b_rows + 16 * group, b);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const uint32_t a_group[2] = {a[mt][2 * second], a[mt][2 * second + 1]};
        const int sc[2] = {scale_of(scales[mt][0], group), scale_of(scales[mt][1], group)};
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          int c[4];
          MmaK16(a_group, b[nt], c);
#pragma unroll
          for (int e = 0; e < 4; ++e) iacc[mt][nt][e] += sc[e >> 1] * c[e];
        }
      }
    }
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int jt = 0; jt < 2; ++jt) {
      const float d_act = *reinterpret_cast<const float*>(
          tokens + (wn + nt * 8 + 2 * t + jt) * kTokenSlot + kRecordScale);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const float d = __uint_as_float(table[(wm + mt * 16 + g + 8 * rr) * L::kRowWords + 4]);
          const int e = 2 * rr + jt;
          acc[mt][nt][e] = fmaf(d * d_act, static_cast<float>(iacc[mt][nt][e]), acc[mt][nt][e]);
        }
      }
    }
  }
}

// kThreadsT threads, warps of 32 rows x 8 NT tokens (2 x 64 / (8 NT) warps).
// Registers bound the blocks an SM holds as much as shared memory does: the
// launch bounds ask for kMinBlocks.
template <uint32_t kType, int kThreadsT, int NT, int kMinBlocks>
__global__ void __launch_bounds__(kThreadsT, kMinBlocks) MatMulQ8MmaKernel(Problem p) {
  static_assert(kThreadsT == 2 * (kTileTokens / (8 * NT)) * 32, "warps cover the tile");
  constexpr int kParts = kThreadsT / kTileRows;
  extern __shared__ __align__(16) uint8_t shared[];
  using L = Layout<kType>;
  using SL = SharedLayout<kType>;
  auto* table = reinterpret_cast<uint32_t*>(shared + SL::kTable);
  uint8_t* decoded = shared + SL::kDecoded;
  const int tok0 = static_cast<int>(blockIdx.x) * kTileTokens;
  const int row0 = static_cast<int>(blockIdx.y) * kTileRows;
  const int k_steps = p.cols / kStep;
  const int kb_begin = static_cast<int>(blockIdx.z) * p.steps_per_split;
  const int kb_end = min(k_steps, kb_begin + p.steps_per_split);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane >> 2, t = lane & 3;
  const int wm = (warp & 1) * 32, wn = (warp >> 1) * 8 * NT;
  const CopyPlan plan = PlanCopies<kParts>(p, row0, tok0);

  float acc[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    }
  }

  // Row tiles start their K range at different steps, so that they do not
  // all read the same activation records from L2 at once.
  const int steps = kb_end - kb_begin;
  const int rotate = static_cast<int>(blockIdx.y) % steps;
  const auto step_at = [&](int i) {
    return kb_begin + (i + rotate < steps ? i + rotate : i + rotate - steps);
  };
  IssueStage<kType, kParts>(p, plan, step_at(0), shared);
  CommitCopies();
  for (int i = 0; i < steps; ++i) {
    const int kb = step_at(i);
    uint8_t* stage = shared + (i & 1) * SL::kStageBytes;
    if (i + 1 < steps) {
      IssueStage<kType, kParts>(p, plan, step_at(i + 1), shared + ((i + 1) & 1) * SL::kStageBytes);
      CommitCopies();
      WaitForCopiesBut<1>();
    } else {
      WaitForCopiesBut<0>();
    }
    __syncthreads();
    // The scale table (and Q6_K's decoded rows) of this step, two threads a row.
    if (plan.part < 2) {
      const uint8_t* block = stage + plan.r * L::kSlot + KBlockOffset<kType>(plan.row, kb);
      if constexpr (kType == kQ4_K) {
        DecodeQ4KRow(block, plan.part, table + plan.r * L::kRowWords);
      } else {
        DecodeQ6KRow(block, plan.part, table + plan.r * L::kRowWords,
                     decoded + plan.r * kDecodedStride);
      }
    }
    __syncthreads();
    // A warp whose rows or tokens all lie past the matrix or batch has nothing to add.
    if (row0 + wm < p.rows && tok0 + wn < p.n_tokens) {
      if constexpr (kType == kQ4_K) {
        ComputeQ4K<NT>(stage, table, wm, wn, lane, acc);
      } else {
        static_assert(NT == 4, "the Q6_K path takes four token tiles a warp");
        ComputeQ6K(stage, table, decoded, wm, wn, lane, acc);
      }
    }
    __syncthreads();  // the stage and the table are rewritten next
  }

  // With split-K, y is this split's slice of the partial sums.
  float* out = p.y + static_cast<int64_t>(blockIdx.z) * p.n_tokens * p.rows;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = row0 + wm + mt * 16 + g + 8 * (i >> 1);
        const int token = tok0 + wn + nt * 8 + 2 * t + (i & 1);
        if (row >= p.rows || token >= p.n_tokens) continue;
        float* target = out + static_cast<int64_t>(token) * p.rows + row;
        *target = p.accumulate ? *target + acc[mt][nt][i] : acc[mt][nt][i];
      }
    }
  }
}

// One warp per 256-element record: amax, the int8 values, the sums of each
// 32 (four lanes' eight values), the scale.
__global__ void QuantizeQ8KKernel(const float* __restrict__ x, int64_t records,
                                  uint8_t* __restrict__ out) {
  const int64_t record = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (record >= records) return;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const float* src = x + record * kStep + lane * 8;
  const float4 lo = *reinterpret_cast<const float4*>(src);
  const float4 hi = *reinterpret_cast<const float4*>(src + 4);
  const float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  const float d = amax / 127.0f;
  uint32_t packed[2] = {0, 0};
  int sum = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int q = d > 0.0f ? static_cast<int>(fminf(fmaxf(rintf(v[i] / d), -127.0f), 127.0f)) : 0;
    sum += q;
    packed[i / 4] |= (static_cast<uint32_t>(q) & 0xffu) << (8 * (i % 4));
  }
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  sum += __shfl_xor_sync(0xffffffffu, sum, 2);
  uint8_t* record_out = out + record * kQ8KRecordBytes;
  *reinterpret_cast<uint2*>(record_out + lane * 8) = make_uint2(packed[0], packed[1]);
  if (lane % 4 == 0) {
    // |sum| <= 32 * 127: sum >> 5 fits int8, sum & 31 is 0..31.
    record_out[kRecordSumsHigh + lane / 4] = static_cast<uint8_t>(static_cast<int8_t>(sum >> 5));
    record_out[kRecordSumsLow + lane / 4] = static_cast<uint8_t>(sum & 31);
  }
  if (lane == 0) *reinterpret_cast<float*>(record_out + kRecordScale) = d;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How many blocks share each output tile's K range (SplitsToFillWave).
int SplitsFor(uint32_t type, int64_t rows, int64_t cols, int n_tokens) {
  const int64_t tiles = CeilDiv(rows, kTileRows) * CeilDiv(n_tokens, kTileTokens);
  const int64_t slots =
      int64_t{kSms} * (type == kQ4_K ? Layout<kQ4_K>::kBlocksPerSm : Layout<kQ6_K>::kBlocksPerSm);
  return SplitsToFillWave(tiles, cols / kStep, slots, kMaxSplits);
}

}  // namespace

size_t Q8KActivationBytes(int64_t n_tokens, int64_t cols) {
  if (n_tokens <= 0 || cols <= 0) return 0;
  return static_cast<size_t>(n_tokens) * static_cast<size_t>(cols / kStep) * kQ8KRecordBytes;
}

cudaError_t LaunchQuantizeActivationsQ8K(const float* x, int n_tokens, int64_t cols, void* records,
                                         cudaStream_t stream) {
  if (n_tokens <= 0 || cols <= 0 || cols % kStep != 0 || x == nullptr || records == nullptr ||
      reinterpret_cast<uintptr_t>(records) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t count = static_cast<int64_t>(n_tokens) * (cols / kStep);
  constexpr int kWarps = 4;
  QuantizeQ8KKernel<<<static_cast<unsigned>(CeilDiv(count, kWarps)), kWarps * 32, 0, stream>>>(
      x, count, static_cast<uint8_t*>(records));
  return cudaGetLastError();
}

bool MatMulQ8MmaSupports(const DeviceMatrix& w) {
  return (w.type == kQ4_K || w.type == kQ6_K) && w.cols > 0 && w.cols % kStep == 0 && w.rows > 0 &&
         w.rows <= int64_t{65535} * kTileRows && w.cols <= (int64_t{1} << 30) &&
         w.data != nullptr && reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
}

size_t MatMulQ8MmaScratchFloats(const DeviceMatrix& w, int n_tokens) {
  if (!MatMulQ8MmaSupports(w) || n_tokens <= 0) return 0;
  const int splits = SplitsFor(w.type, w.rows, w.cols, n_tokens);
  return splits > 1 ? static_cast<size_t>(splits) * static_cast<size_t>(n_tokens) *
                          static_cast<size_t>(w.rows)
                    : 0;
}

cudaError_t LaunchMatMulQ8Mma(const DeviceMatrix& w, const void* x, int n_tokens, float* y,
                              bool accumulate, float* scratch, size_t scratch_floats,
                              cudaStream_t stream) {
  if (!MatMulQ8MmaSupports(w) || n_tokens <= 0 || x == nullptr || y == nullptr ||
      reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  const size_t wanted = MatMulQ8MmaScratchFloats(w, n_tokens);
  const bool split = wanted > 0 && scratch != nullptr && scratch_floats >= wanted;
  const int splits = split ? SplitsFor(w.type, w.rows, w.cols, n_tokens) : 1;
  const auto k_steps = static_cast<int>(w.cols / kStep);
  const int per_split = static_cast<int>(CeilDiv(k_steps, splits));
  const dim3 grid(static_cast<unsigned>(CeilDiv(n_tokens, kTileTokens)),
                  static_cast<unsigned>(CeilDiv(w.rows, kTileRows)),
                  static_cast<unsigned>(CeilDiv(k_steps, per_split)));
  const Problem p{static_cast<const uint8_t*>(w.data),
                  w.row_bytes,
                  static_cast<int>(w.rows),
                  static_cast<int>(w.cols),
                  static_cast<const uint8_t*>(x),
                  n_tokens,
                  per_split,
                  split ? scratch : y,
                  split ? false : accumulate};
  cudaError_t launched = cudaSuccess;
  const auto launch = [&]<uint32_t kType, int kThreadsT, int NT, int kMinBlocks>() {
    constexpr auto kernel = MatMulQ8MmaKernel<kType, kThreadsT, NT, kMinBlocks>;
    launched = AllowSharedMemory<kernel, SharedLayout<kType>::kBytes>();
    if (launched != cudaSuccess) return;
    kernel<<<grid, kThreadsT, SharedLayout<kType>::kBytes, stream>>>(p);
    launched = cudaGetLastError();
  };
  if (w.type == kQ4_K) {
    using L = Layout<kQ4_K>;
    launch.template operator()<kQ4_K, L::kThreads, L::kTokenTiles, L::kBlocksPerSm>();
  } else {
    using L = Layout<kQ6_K>;
    launch.template operator()<kQ6_K, L::kThreads, L::kTokenTiles, L::kBlocksPerSm>();
  }
  if (launched != cudaSuccess || !split) return launched;
  return LaunchSumSplits(scratch, static_cast<int>(grid.z), static_cast<int64_t>(n_tokens) * w.rows,
                         y, accumulate, stream);
}

}  // namespace chord::cuda
