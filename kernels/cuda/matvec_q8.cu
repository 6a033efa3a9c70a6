#include "kernels/cuda/matvec_q8.h"

#include <algorithm>

#include "kernels/cuda/bulk_ring.cuh"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/matvec_common.cuh"
#include "kernels/cuda/rms_scale.cuh"
#include "kernels/cuda/rope_pair.cuh"
#include "kernels/cuda/round_block.cuh"

namespace chord::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxGroup = kMatVecQ8MaxGroup;

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// A product launched with `overlap_previous` (dependent_launch.cuh) pulls
// its first weights into L2 (weights are never written by kernels) before it
// waits for the previous kernel's results.
__device__ __forceinline__ void PrefetchToL2(const uint8_t* p, uint64_t bytes, int lane) {
  for (uint64_t offset = static_cast<uint64_t>(lane) * 128; offset < bytes; offset += 32 * 128) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p + offset));
  }
}

constexpr int kRoundWarps = 8;

// One warp per 32-element block of x.
__global__ void QuantizeActivationsKernel(const float* __restrict__ x, int64_t n_blocks,
                                          int8_t* __restrict__ q, float* __restrict__ scale,
                                          float* __restrict__ half_sums) {
  LetNextKernelStart();
  WaitForPreviousKernel();
  const int64_t block = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (block >= n_blocks) return;
  const int lane = threadIdx.x % 32;
  RoundBlock(x[block * 32 + lane], lane, block, q, scale, half_sums);
}

// SwiGLU of one element, as LaunchSwiGlu computes it.
__device__ __forceinline__ float SwiGluOf(float gate, float up) {
  return (gate / (1.0f + expf(-gate))) * up;
}

// SwiGLU (gate = silu(gate) * up, as LaunchSwiGlu) and the rounding of the
// result, one warp per 32-element block.
__global__ void SwiGluQuantizeKernel(float* __restrict__ gate, const float* __restrict__ up,
                                     int64_t n_blocks, int8_t* __restrict__ q,
                                     float* __restrict__ scale, float* __restrict__ half_sums) {
  LetNextKernelStart();
  WaitForPreviousKernel();
  const int64_t block = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (block >= n_blocks) return;
  const int lane = threadIdx.x % 32;
  const int64_t i = block * 32 + lane;
  const float v = SwiGluOf(gate[i], up[i]);
  gate[i] = v;
  RoundBlock(v, lane, block, q, scale, half_sums);
}

constexpr int kNormThreads = 512;  // as LaunchRmsNorm's

// RMSNorm of a row (as LaunchRmsNorm: the same RmsScale) and the rounding of
// the result. Grid (row, slice): every block computes the row's factor (its
// 16 KB come from L2 after the first) and then rounds its own 16 32-element
// blocks, one a warp, so the rounding spreads over SMs as it does unfused
// (one block rounding a whole 4096-wide row measured 5% slower at batch 1).
__global__ void __launch_bounds__(kNormThreads)
    RmsNormQuantizeKernel(const float* __restrict__ x, const float* __restrict__ weight, int64_t n,
                          float eps, float* __restrict__ y, int8_t* __restrict__ q,
                          float* __restrict__ scale, float* __restrict__ half_sums) {
  LetNextKernelStart();
  const int64_t blocks = n / 32;
  const int64_t b = static_cast<int64_t>(blockIdx.y) * (kNormThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t i = b * 32 + lane;
  // The norm's weight (never written by kernels; at batch 1 it comes from
  // memory) is read while the previous kernel still runs, not after the factor.
  const float g = b < blocks ? weight[i] : 0.0f;
  WaitForPreviousKernel();
  const float* xr = x + blockIdx.x * n;
  const float factor = RmsScale<kNormThreads>(xr, n, eps, RowOfFloat4s(xr, weight, n));
  if (b >= blocks) return;
  const float v = xr[i] * factor * g;
  y[blockIdx.x * n + i] = v;
  RoundBlock(v, lane, blockIdx.x * blocks + b, q, scale, half_sums);
}

// One row, one warp per 32-element group.
__global__ void RmsNormRoundDeferredKernel(const float* __restrict__ x,
                                           const float* __restrict__ weight, int64_t n_blocks,
                                           int8_t* __restrict__ q, float* __restrict__ scale,
                                           float* __restrict__ half_sums,
                                           double* __restrict__ sum_squares) {
  LetNextKernelStart();
  const int64_t block = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t i = block * 32 + lane;
  // The weight is never written by kernels: read before the wait (v30).
  const float g = block < n_blocks ? weight[i] : 0.0f;
  WaitForPreviousKernel();
  if (block >= n_blocks) return;
  RoundNormGroup(x[i], g, lane, block, q, scale, half_sums, sum_squares);
}

// Where a warp's lanes find their activations: row b of the rounded x.
struct RoundedX {
  const int8_t* __restrict__ q;
  const float* __restrict__ scale;
  const float* __restrict__ half_sums;
  int64_t cols;
  // Q8Activations::rms_sum_squares and rms_eps (one token).
  const double* __restrict__ rms_sum_squares;
  float rms_eps;
};

// The deferred RMSNorm factor from each lane's sum of x's groups lane,
// lane + 32, ... (in that order): the warp's total in a fixed order, then
// the norm's formula.
__device__ __forceinline__ float FactorOfLaneSums(double sum, const RoundedX& x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  return static_cast<float>(1.0 / sqrt(sum / static_cast<double>(x.cols) + x.rms_eps));
}

// The factor a row's sum takes: the deferred RMSNorm factor of x
// (Q8Activations::rms_sum_squares), the same bits in every lane and every
// warp (a fixed order of sums), or 1.
__device__ __forceinline__ float RowSumFactor(const RoundedX& x, int lane) {
  if (x.rms_sum_squares == nullptr) return 1.0f;
  double sum = 0.0;
  for (int64_t g = lane; g < x.cols / 32; g += 32) sum += x.rms_sum_squares[g];
  return FactorOfLaneSums(sum, x);
}

// RowSumFactor for rows up to 4096 wide (the staged kernels'), in two
// halves: the constructor issues the lane's loads right after the wait for
// the kernel that wrote them, and Value(), called once the first row's sum is
// done, adds them in RowSumFactor's order (the same bits), so that their
// latency hides behind the first row instead of holding up its start.
struct PendingRowSumFactor {
  static constexpr int kMaxLoads = 4;  // 4096 / 32 sums over 32 lanes
  double part[kMaxLoads];
  int loads;
  const RoundedX& x;
  __device__ PendingRowSumFactor(const RoundedX& rx, int lane) : x(rx) {
    const int n = static_cast<int>(x.cols / 32);
    loads = x.rms_sum_squares == nullptr ? 0 : (n - lane + 31) / 32;
#pragma unroll
    for (int j = 0; j < kMaxLoads; ++j)
      part[j] = j < loads ? x.rms_sum_squares[lane + 32 * j] : 0.0;
  }
  __device__ float Value() const {
    if (x.rms_sum_squares == nullptr) return 1.0f;
    double sum = 0.0;
#pragma unroll
    for (int j = 0; j < kMaxLoads; ++j) {
      if (j < loads) sum += part[j];
    }
    return FactorOfLaneSums(sum, x);
  }
};

// Where a unit's weight bytes are read from: global memory through the
// read-only path, or the shared memory a staged kernel copied them into.
struct FromGlobal {
  __device__ static uint4 U128(const uint8_t* p) {
    return __ldg(reinterpret_cast<const uint4*>(p));
  }
  __device__ static uint32_t U16(const uint8_t* p) {
    return __ldg(reinterpret_cast<const uint16_t*>(p));
  }
  __device__ static int S8(const uint8_t* p) { return __ldg(reinterpret_cast<const int8_t*>(p)); }
};
struct FromShared {
  __device__ static uint4 U128(const uint8_t* p) { return *reinterpret_cast<const uint4*>(p); }
  __device__ static uint32_t U16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
  __device__ static int S8(const uint8_t* p) { return *reinterpret_cast<const int8_t*>(p); }
};

template <typename Mem>
__device__ __forceinline__ float HalfAt(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(Mem::U16(p))));
}

// 8 bytes from a 2-byte-aligned address (Q6_K and Q8_0 blocks are 210 and
// 34 bytes long) as two words.
template <typename Mem>
__device__ __forceinline__ int2 Load8Aligned2(const uint8_t* p) {
  const uint32_t w0 = Mem::U16(p) | (Mem::U16(p + 2) << 16);
  const uint32_t w1 = Mem::U16(p + 4) | (Mem::U16(p + 6) << 16);
  return make_int2(static_cast<int>(w0), static_cast<int>(w1));
}

// A kernel's unit u of a row is U::kElements weights of one block; each type
// says which activations the unit multiplies (Acts, loaded once per token and
// applied to every row a warp takes), how a row's unit is read (Fetch) and
// unpacked once for all tokens (Decode), and what it adds to one token's dot
// product (Apply). The per-row arithmetic is the same whatever the number of
// rows or tokens a kernel takes at once, so every launch shape writes the
// same bits for a row.
template <uint32_t kType>
struct Unit;

// c + the dot product of a's four unsigned bytes with b's four signed ones.
__device__ __forceinline__ int Dp4aUnsignedSigned(int a, int b, int c) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Q4_K for passes of 1 or 2 tokens, unit u: sub-blocks 2i and 2i + 1 of
// block blk (4 units a 256-element block), whose 32 bytes of nibbles hold
// sub-block 2i in their low halves and 2i + 1 in their high halves.
// element = d * scale_j * nibble - dmin * min_j, so a sub-block's dot product
// is d * scale_j * (x's step) * sum(nibble * q) - dmin * min_j * (x's block
// sum). One lane decodes the pair's scales once for 64 weights.
template <>
struct Unit<kQ4_K> {
  static constexpr int kElements = 64;
  struct Acts {
    int4 a0[2], a1[2];  // sub-blocks 2i and 2i + 1
    float2 scale;       // their steps
    float sum0, sum1;   // their sums (step * sum of q)
  };
  __device__ static Acts Load(const RoundedX& x, int b, int u) {
    const int64_t e0 = b * x.cols + 64 * u;
    Acts a;
    a.a0[0] = *reinterpret_cast<const int4*>(x.q + e0);
    a.a0[1] = *reinterpret_cast<const int4*>(x.q + e0 + 16);
    a.a1[0] = *reinterpret_cast<const int4*>(x.q + e0 + 32);
    a.a1[1] = *reinterpret_cast<const int4*>(x.q + e0 + 48);
    a.scale = *reinterpret_cast<const float2*>(x.scale + e0 / 32);
    // The four half sums of the two sub-blocks: one 16-byte load.
    const float4 hs = *reinterpret_cast<const float4*>(x.half_sums + e0 / 16);
    a.sum0 = hs.x + hs.y;
    a.sum1 = hs.z + hs.w;
    return a;
  }

  // The weights of one row's unit: the block's 16-byte header (d, dmin and
  // the 12 bytes of packed 6-bit scales and mins) and the pair's 32 bytes of
  // nibbles.
  struct Weights {
    uint4 header, q0, q1;
  };
  template <typename Mem = FromGlobal>
  __device__ static Weights Fetch(const uint8_t* row, int u) {
    const uint8_t* block = row + (u >> 2) * 144;
    const uint8_t* q = block + 16 + 32 * (u & 3);
    return {Mem::U128(block), Mem::U128(q), Mem::U128(q + 16)};
  }

  // A unit's weights ready for any number of tokens: the scales and the
  // nibbles of each sub-block, four to a word; the high nibbles stay in
  // place (16 times their values, unsigned bytes), and their dot products are
  // divided by 16 once, exactly, instead of each word shifted.
  struct Decoded {
    SubBlockPair scales;
    int lo[8], hi[8];
  };
  __device__ static Decoded Decode(const Weights& w, int u) {
    Decoded d;
    d.scales = ScalesOfPair(w.header, u & 3);
    const uint32_t words[8] = {w.q0.x, w.q0.y, w.q0.z, w.q0.w, w.q1.x, w.q1.y, w.q1.z, w.q1.w};
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      d.lo[c] = static_cast<int>(words[c] & 0x0F0F0F0F);
      d.hi[c] = static_cast<int>(words[c] & 0xF0F0F0F0);
    }
    return d;
  }
  __device__ static float Apply(const Decoded& w, const Acts& a) {
    const auto [d1, m1, d2, m2] = w.scales;
    const int x0[8] = {a.a0[0].x, a.a0[0].y, a.a0[0].z, a.a0[0].w,
                       a.a0[1].x, a.a0[1].y, a.a0[1].z, a.a0[1].w};
    const int x1[8] = {a.a1[0].x, a.a1[0].y, a.a1[0].z, a.a1[0].w,
                       a.a1[1].x, a.a1[1].y, a.a1[1].z, a.a1[1].w};
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      s0 = __dp4a(w.lo[c], x0[c], s0);
      s1 = Dp4aUnsignedSigned(w.hi[c], x1[c], s1);
    }
    s1 >>= 4;  // a multiple of 16
    return d1 * a.scale.x * static_cast<float>(s0) - m1 * a.sum0 +
           d2 * a.scale.y * static_cast<float>(s1) - m2 * a.sum1;
  }
};

// Q4_K read in 32-element units, for passes of several tokens: unit u is 16
// bytes of nibbles, 16 elements of sub-block 2i in their low halves and 16 of
// sub-block 2i + 1 in their high halves (8 units a block). Half the weight
// bytes of the 64-element unit per lane, so that the activations of 4 or 8
// tokens fit in registers beside them. (One template over both widths
// measured 6% slower at 8 sequences and 2% at batch 1: more registers in the
// kernels of several tokens; so the two stay separate.)
constexpr uint32_t kQ4_K32 = 0x100 | kQ4_K;
template <>
struct Unit<kQ4_K32> {
  static constexpr int kElements = 32;
  struct Acts {
    int4 a0, a1;     // the two 16-element runs, 32 apart
    float2 scale;    // their blocks' steps
    float hs0, hs1;  // their halves' sums
  };
  __device__ static Acts Load(const RoundedX& x, int b, int u) {
    const int blk = u >> 3, i = (u >> 1) & 3, h = u & 1;
    const int64_t pair = b * x.cols + blk * 256 + 64 * i;
    Acts a;
    a.a0 = *reinterpret_cast<const int4*>(x.q + pair + 16 * h);
    a.a1 = *reinterpret_cast<const int4*>(x.q + pair + 16 * h + 32);
    a.scale = *reinterpret_cast<const float2*>(x.scale + pair / 32);
    const float4 hs = *reinterpret_cast<const float4*>(x.half_sums + pair / 16);
    a.hs0 = h ? hs.y : hs.x;
    a.hs1 = h ? hs.w : hs.z;
    return a;
  }

  struct Weights {
    uint4 header, q;
  };
  template <typename Mem = FromGlobal>
  __device__ static Weights Fetch(const uint8_t* row, int u) {
    const uint8_t* block = row + (u >> 3) * 144;
    return {Mem::U128(block), Mem::U128(block + 16 + 32 * ((u >> 1) & 3) + 16 * (u & 1))};
  }

  struct Decoded {
    SubBlockPair scales;
    int lo[4], hi[4];
  };
  __device__ static Decoded Decode(const Weights& w, int u) {
    Decoded d;
    d.scales = ScalesOfPair(w.header, (u >> 1) & 3);
    const uint32_t words[4] = {w.q.x, w.q.y, w.q.z, w.q.w};
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      d.lo[c] = static_cast<int>(words[c] & 0x0F0F0F0F);
      d.hi[c] = static_cast<int>(words[c] & 0xF0F0F0F0);  // as Unit<kQ4_K>'s
    }
    return d;
  }
  __device__ static float Apply(const Decoded& w, const Acts& a) {
    const auto [d1, m1, d2, m2] = w.scales;
    const int x0[4] = {a.a0.x, a.a0.y, a.a0.z, a.a0.w}, x1[4] = {a.a1.x, a.a1.y, a.a1.z, a.a1.w};
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      s0 = __dp4a(w.lo[c], x0[c], s0);
      s1 = Dp4aUnsignedSigned(w.hi[c], x1[c], s1);
    }
    s1 >>= 4;
    return d1 * a.scale.x * static_cast<float>(s0) - m1 * a.hs0 +
           d2 * a.scale.y * static_cast<float>(s1) - m2 * a.hs1;
  }
};

// Q6_K, unit u: four runs of 8 elements, 32 apart, each 4 low bits (ql) and
// 2 high bits (qh) minus 32, times d * its 16-element group's scale.
template <>
struct Unit<kQ6_K> {
  static constexpr int kElements = 32;
  struct Acts {
    int2 a[4];     // the four runs
    float4 scale;  // their blocks' steps
  };
  __device__ static Acts Load(const RoundedX& x, int b, int u) {
    const int blk = u >> 3, half = (u >> 2) & 1, g = u & 3;
    const int64_t e0 = b * x.cols + blk * 256 + 128 * half + 8 * g;
    Acts a;
#pragma unroll
    for (int r = 0; r < 4; ++r) a.a[r] = *reinterpret_cast<const int2*>(x.q + e0 + 32 * r);
    a.scale =
        *reinterpret_cast<const float4*>(x.scale + (b * x.cols + blk * 256 + 128 * half) / 32);
    return a;
  }

  struct Weights {
    int2 ql0, ql1, qh;
    int scales[4];  // the runs' 16-element groups
    float d;
  };
  template <typename Mem = FromGlobal>
  __device__ static Weights Fetch(const uint8_t* row, int u) {
    const int blk = u >> 3, half = (u >> 2) & 1, g = u & 3;
    const uint8_t* block = row + blk * 210;
    Weights w;
    w.ql0 = Load8Aligned2<Mem>(block + 64 * half + 8 * g);
    w.ql1 = Load8Aligned2<Mem>(block + 64 * half + 32 + 8 * g);
    w.qh = Load8Aligned2<Mem>(block + 128 + 32 * half + 8 * g);
    const uint8_t* scales = block + 192 + 8 * half;
#pragma unroll
    for (int r = 0; r < 4; ++r) w.scales[r] = Mem::S8(scales + (g >> 1) + 2 * r);
    w.d = HalfAt<Mem>(block + 208);
    return w;
  }

  // A unit's weights ready for any number of tokens: run r, word c holds
  // four unsigned 6-bit values (the stored ones, 32 above the weights': Apply
  // takes 32 times the activations' sum off each run's dot product, the same
  // integer as subtracting 32 from every byte).
  struct Decoded {
    int v[4][2];
    int scales[4];
    float d;
  };
  __device__ static Decoded Decode(const Weights& w, int /*u*/) {
    const int lo0[2] = {w.ql0.x, w.ql0.y}, lo1[2] = {w.ql1.x, w.ql1.y}, hb[2] = {w.qh.x, w.qh.y};
    Decoded out;
    auto& v = out.v;
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      v[0][c] = (lo0[c] & 0x0F0F0F0F) | ((hb[c] & 0x03030303) << 4);
      v[1][c] = (lo1[c] & 0x0F0F0F0F) | (((hb[c] >> 2) & 0x03030303) << 4);
      v[2][c] = ((lo0[c] >> 4) & 0x0F0F0F0F) | (((hb[c] >> 4) & 0x03030303) << 4);
      v[3][c] = ((lo1[c] >> 4) & 0x0F0F0F0F) | (((hb[c] >> 6) & 0x03030303) << 4);
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) out.scales[r] = w.scales[r];
    out.d = w.d;
    return out;
  }
  __device__ static float Apply(const Decoded& w, const Acts& a) {
    const float steps[4] = {a.scale.x, a.scale.y, a.scale.z, a.scale.w};
    float sum = 0.0f;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      constexpr int kOnes = 0x01010101;
      const int run =
          __dp4a(kOnes, a.a[r].y, __dp4a(kOnes, a.a[r].x, 0));  // the same for every row
      const int s = Dp4aUnsignedSigned(w.v[r][1], a.a[r].y,
                                       Dp4aUnsignedSigned(w.v[r][0], a.a[r].x, -32 * run));
      sum += static_cast<float>(w.scales[r]) * steps[r] * static_cast<float>(s);
    }
    return w.d * sum;
  }
};

// Q8_0: unit u is block u (a scale and 32 signed bytes), aligned with x's.
template <>
struct Unit<kQ8_0> {
  static constexpr int kElements = 32;
  struct Acts {
    int4 a0, a1;
    float scale;
  };
  __device__ static Acts Load(const RoundedX& x, int b, int u) {
    const int64_t e0 = b * x.cols + 32 * u;
    return {*reinterpret_cast<const int4*>(x.q + e0), *reinterpret_cast<const int4*>(x.q + e0 + 16),
            x.scale[e0 / 32]};
  }

  struct Weights {
    int q[8];
    float d;
  };
  template <typename Mem = FromGlobal>
  __device__ static Weights Fetch(const uint8_t* row, int u) {
    const uint8_t* block = row + u * 34;
    Weights w;
    w.d = HalfAt<Mem>(block);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int2 pair = Load8Aligned2<Mem>(block + 2 + 8 * c);
      w.q[2 * c] = pair.x;
      w.q[2 * c + 1] = pair.y;
    }
    return w;
  }

  using Decoded = Weights;
  __device__ static const Decoded& Decode(const Weights& w, int /*u*/) { return w; }
  __device__ static float Apply(const Decoded& w, const Acts& a) {
    int s = __dp4a(w.q[0], a.a0.x, 0);
    s = __dp4a(w.q[1], a.a0.y, s);
    s = __dp4a(w.q[2], a.a0.z, s);
    s = __dp4a(w.q[3], a.a0.w, s);
    s = __dp4a(w.q[4], a.a1.x, s);
    s = __dp4a(w.q[5], a.a1.y, s);
    s = __dp4a(w.q[6], a.a1.z, s);
    s = __dp4a(w.q[7], a.a1.w, s);
    return w.d * a.scale * static_cast<float>(s);
  }
};

// Up to kMaxGroup matrices of one type and width whose products read the
// same activations (Q/K/V, gate/up), in one launch: their rows are numbered
// one after the other, each matrix writing its own y (rows[m] apart per token).
struct RowGroup {
  const uint8_t* w[kMaxGroup];
  float* y[kMaxGroup];
  int64_t rows[kMaxGroup];
  int64_t end[kMaxGroup];  // rows of matrices 0..m
  int count;
  int64_t total_rows;
  uint64_t row_bytes;
};

// Row `row` of the group: its matrix's weights, output and the row within it.
struct GroupRow {
  const uint8_t* weights;
  float* y;
  int64_t y_stride;
  int64_t row;
  int member;  // the matrix's index in the group
};

__device__ __forceinline__ GroupRow Locate(const RowGroup& group, int64_t row) {
  // The matrix by comparisons and selects, never an index into the
  // parameters (which would copy them to local memory in every thread).
  static_assert(kMaxGroup == 3);
  const bool second = group.count > 1 && row >= group.end[0];
  const bool third = group.count > 2 && row >= group.end[1];
  const uint8_t* w = third ? group.w[2] : second ? group.w[1] : group.w[0];
  float* y = third ? group.y[2] : second ? group.y[1] : group.y[0];
  const int64_t y_stride = third ? group.rows[2] : second ? group.rows[1] : group.rows[0];
  row -= third ? group.end[1] : second ? group.end[0] : 0;
  return {w + row * group.row_bytes, y, y_stride, row, third ? 2 : second ? 1 : 0};
}

// A warp takes R consecutive rows at a time, lanes over the rows' units (so
// a warp's loads of one step cover contiguous weight bytes); each unit's activations are loaded
// once and serve the R rows, and the B tokens share each weight read. With fewer blocks than row
// groups (MatVecQ8Shape::blocks_per_sm) the warps go on to the grid's next rows.
template <uint32_t kType, int B, int R>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    MatVecQ8Kernel(RowGroup group, RoundedX x, bool accumulate) {
  using U = Unit<kType>;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  int64_t first_row = (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32) * R;
  if (first_row >= group.total_rows) return;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    PrefetchToL2(Locate(group, min(first_row + r, group.total_rows - 1)).weights, group.row_bytes,
                 lane);
  }
  LetNextKernelStart();
  WaitForPreviousKernel();
  const int units = static_cast<int>(x.cols / U::kElements);
  for (; first_row < group.total_rows; first_row += warps * R) {
    GroupRow rows[R];
    // A warp's rows past the end repeat the last row and store nothing.
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = Locate(group, min(first_row + r, group.total_rows - 1));
    float acc[R][B];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int b = 0; b < B; ++b) acc[r][b] = 0.0f;
    }
    // Up to four 32-element units' loads in flight per lane for one row and
    // one token (a 4096-wide row is four a lane), fewer as rows and tokens
    // take registers.
    constexpr int kUnroll = std::max(1, (B * R <= 2 ? 4 : B * R <= 4 ? 2 : 1) * 32 / U::kElements);
#pragma unroll(kUnroll)
    for (int u = lane; u < units; u += 32) {
      typename U::Weights w[R];
#pragma unroll
      for (int r = 0; r < R; ++r) w[r] = U::Fetch(rows[r].weights, u);
      typename U::Decoded decoded[R];
#pragma unroll
      for (int r = 0; r < R; ++r) decoded[r] = U::Decode(w[r], u);
#pragma unroll
      for (int b = 0; b < B; ++b) {
        const typename U::Acts a = U::Load(x, b, u);
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r][b] += U::Apply(decoded[r], a);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (first_row + r < group.total_rows) {
        StoreRowSums<B>(acc[r], lane, rows[r].y, rows[r].y_stride, rows[r].row, accumulate);
      }
    }
  }
}

// One token over rows of up to 32 * UPL units whose length is a multiple of
// 16 bytes: each warp takes rows warp, warp + warps, ... (a grid of as many
// blocks as fit on the SMs) and copies whole rows into its own ring of S row
// buffers in shared memory, S - 1 rows ahead of the row it multiplies, by
// bulk copies (BulkRing: one instruction a row). The copies hold no
// registers, so an SM keeps far more weight bytes in flight than loads into
// registers could (kernels/cuda/NOTES.md, v16, v35); each lane keeps its
// activations in registers.
// Per row, each lane adds the same units in the same order as MatVecQ8Kernel
// and the warp sums them alike: the same bits. The first rows are requested
// before waiting for the previous kernel (weights are never written by
// kernels).
// A staged row's dot product with the lane's activations (units lane,
// lane + 32, ... of `units`), summed over the warp as StoreRowSums sums it:
// every lane gets the total.
template <typename U, int UPL>
__device__ __forceinline__ float StagedRowSum(const uint8_t* weights,
                                              const typename U::Acts (&acts)[UPL], int units,
                                              int lane) {
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < UPL; ++j) {
    const int u = lane + 32 * j;
    if (u < units)
      sum += U::Apply(U::Decode(U::template Fetch<FromShared>(weights, u), u), acts[j]);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  return sum;
}

// The lane's activations for units first + lane, first + lane + 32, ... of
// the `units` a staged warp takes.
template <typename U, int UPL>
__device__ __forceinline__ void LoadStagedActs(const RoundedX& x, int first, int units, int lane,
                                               typename U::Acts (&acts)[UPL]) {
#pragma unroll
  for (int j = 0; j < UPL; ++j) {
    if (lane + 32 * j < units) acts[j] = U::Load(x, 0, first + lane + 32 * j);
  }
}

// StagedRows below is a warp's part of it: rows warp, warp + warps, ... of
// the group (or, for a store that takes rows in pairs, the pairs 2 warp and
// 2 warp + 1, then 2 (warp + warps) and the next, ...) through its ring of S
// buffers of `slot_bytes` (at least the group's row_bytes), each row's sum
// handed to `store` (RowStore: y).
struct RowStore {
  static constexpr bool kPairs = false;
  bool accumulate;
  // Every lane holds the row's sum; lane 0 writes it.
  __device__ void operator()(const GroupRow& out, float sum, int lane) const {
    if (lane == 0) {
      float* y = out.y + out.row;
      *y = accumulate ? *y + sum : sum;
    }
  }
};

template <uint32_t kType, int UPL, int S, typename Store>
__device__ __forceinline__ void StagedRows(const RowGroup& group, const RoundedX& x,
                                           const Store& store, int64_t warp, int64_t warps,
                                           uint8_t* ring, int slot_bytes, uint64_t* barriers) {
  using U = Unit<kType>;
  const int lane = static_cast<int>(threadIdx.x % 32);
  // The warp's k-th row (pairs need an even number of rows in every member).
  const auto row_of = [&](int64_t k) {
    if constexpr (Store::kPairs) {
      return 2 * (warp + (k >> 1) * warps) + (k & 1);
    } else {
      return warp + k * warps;
    }
  };
  if (row_of(0) >= group.total_rows) return;
  const auto row_bytes = static_cast<uint32_t>(group.row_bytes);
  BulkRing<S> buffers(barriers, lane);
  // The k-th row into buffer b.
  const auto copy_row = [&](int64_t k, int b) {
    const int64_t r = row_of(k);
    if (r < group.total_rows && lane == 0)
      buffers.Fill(b, ring + b * slot_bytes, Locate(group, r).weights, row_bytes, lane);
  };
#pragma unroll
  for (int s = 0; s < S - 1; ++s) copy_row(s, s);
  LetNextKernelStart();
  WaitForPreviousKernel();
  const int units = static_cast<int>(x.cols / U::kElements);
  typename U::Acts acts[UPL];
  LoadStagedActs<U, UPL>(x, 0, units, lane, acts);
  const PendingRowSumFactor pending(x, lane);
  float factor = 1.0f;  // 1: the same bits as without
  float first_of_pair = 0.0f;
  int b = 0;
  for (int64_t k = 0; row_of(k) < group.total_rows; ++k, b = b + 1 == S ? 0 : b + 1) {
    copy_row(k + S - 1, b == 0 ? S - 1 : b - 1);
    buffers.Wait(b);
    const float row_sum = StagedRowSum<U, UPL>(ring + b * slot_bytes, acts, units, lane);
    if (k == 0) factor = pending.Value();
    const float sum = row_sum * factor;
    if constexpr (Store::kPairs) {
      if (k & 1) {
        store(Locate(group, row_of(k - 1)), first_of_pair, Locate(group, row_of(k)), sum, lane);
      } else {
        first_of_pair = sum;
      }
    } else {
      store(Locate(group, row_of(k)), sum, lane);
    }
    __syncwarp();  // the buffer is refilled next
  }
}

// A store for rows whose members are numbered `offset` further on.
template <typename Store>
struct MembersAfter {
  static constexpr bool kPairs = Store::kPairs;
  const Store& store;
  int offset;
  __device__ void operator()(GroupRow out, float sum, int lane) const {
    out.member += offset;
    store(out, sum, lane);
  }
  __device__ void operator()(GroupRow first, float first_sum, GroupRow second, float second_sum,
                             int lane) const {
    first.member += offset;
    second.member += offset;
    store(first, first_sum, second, second_sum, lane);
  }
};

template <uint32_t kType, int UPL, int S, typename Store>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    MatVecQ8StagedKernel(RowGroup group, RoundedX x, Store store) {
  extern __shared__ __align__(16) uint8_t staged[];
  __shared__ uint64_t barriers[kWarpsPerBlock][S];
  const int warp = static_cast<int>(threadIdx.x / 32);
  const auto row_bytes = static_cast<int>(group.row_bytes);
  StagedRows<kType, UPL, S>(
      group, x, store, static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp,
      static_cast<int64_t>(gridDim.x) * kWarpsPerBlock,
      staged + static_cast<size_t>(warp) * S * row_bytes, row_bytes, barriers[warp]);
}

// The same over two groups of different weight types (Q/K in Q4_K, V in
// Q6_K) in one launch: the grid's first `warps_a` warps take group a's rows,
// the others group b's, each warp through a ring of S buffers of
// `slot_bytes`. The bits of one launch per group. Group b's rows go to
// store_b with their members numbered after group a's.
template <uint32_t kTypeA, int UPLA, uint32_t kTypeB, int UPLB, int S, typename Store>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    MatVecQ8StagedMixedKernel(RowGroup a, RowGroup b, int64_t warps_a, int slot_bytes, RoundedX x,
                              Store store) {
  extern __shared__ __align__(16) uint8_t staged[];
  __shared__ uint64_t barriers[kWarpsPerBlock][S];
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int64_t global = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  uint8_t* ring = staged + static_cast<size_t>(warp) * S * slot_bytes;
  if (global < warps_a) {
    StagedRows<kTypeA, UPLA, S>(a, x, store, global, warps_a, ring, slot_bytes, barriers[warp]);
  } else {
    StagedRows<kTypeB, UPLB, S>(b, x, MembersAfter<Store>{store, a.count}, global - warps_a,
                                warps - warps_a, ring, slot_bytes, barriers[warp]);
  }
}

// One token's Q, K and V (a group of those three matrices, in that order)
// and what LaunchRopeStoreKv then does with them, as the products' epilogue:
// each warp takes its rows in pairs (StagedRows), the two elements of a RoPE
// pair, rotates them (Q, K) and stores them (K and V into the cache). The
// same function of the same sums as that launch: the same bits. (Pairs
// split over two warps met at a two-warp named barrier: three barriers a
// block held the launch to 4 blocks an SM.)
struct QkvRopeStore {
  static constexpr bool kPairs = true;
  MatVecQ8QkvRope out;
  float theta_scale;
  __device__ void operator()(const GroupRow& row, float sum, const GroupRow& /*next*/,
                             float next_sum, int lane) const {
    if (lane != 0) return;
    // As LaunchRopeStoreKv reads its input: 0 + the product's sum.
    float2 value = make_float2(0.0f + sum, 0.0f + next_sum);
    const int64_t at = row.row;  // even
    const TokenSlot token = out.tokens[0];
    const int head_dim = out.rope.head_dim;
    const int pair = static_cast<int>(at % head_dim) / 2;
    if (row.member < 2 && pair < out.rope.n_rot / 2) {
      value = RotatedPair(value, pair, token.position, out.rope, theta_scale);
    }
    *reinterpret_cast<float2*>(row.y + at) = value;
    if (row.member == 0) return;
    const int64_t cache_at = (static_cast<int64_t>(token.slot) * out.cache.n_ctx + token.position) *
                                 out.cache.n_embd_kv +
                             at;
    StoreCachePair(out.cache, row.member == 1 ? out.cache.keys : out.cache.values, cache_at, value);
  }
};

// A warp's place in MatVecQ8GroupedKernel's sequence of rows: group g, and
// in it the member matrix and the warp's sub-row (rows sub * W + warp of the
// group). Advanced by counting, not by dividing a row index (64-bit
// divisions in the loop measured as slow as the loads they schedule).
struct GroupedCursor {
  int64_t g;
  int member, sub;
  __device__ void Advance(int members, int subs, int64_t group_stride) {
    if (++member < members) return;
    member = 0;
    if (++sub < subs) return;
    sub = 0;
    g += group_stride;
  }
};

// One token over matrices whose outputs an epilogue needs 32 rows at a time
// (SwiGLU's rounding, the next norm's): each block takes whole 32-row groups
// (group g, g + gridDim.x, ...), and its W warps take the group's rows of
// every member matrix (warp w: rows w, w + W, ... of the group), streaming
// them through a ring of S shared-memory buffers as MatVecQ8StagedKernel
// does, the next rows' copies in flight across groups. A row's sum is the
// staged kernel's (the same bits). When a group's rows are all done (a block
// barrier), the first warp hands their sums to `finish`, one row a lane: the
// rows meet in shared memory, with no counters in global memory and no
// kernel boundary before the epilogue's work.
template <uint32_t kType, int UPL, int W, int S, typename Finish>
__global__ void __launch_bounds__(W * 32)
    MatVecQ8GroupedKernel(RowGroup group, int64_t groups, RoundedX x, Finish finish) {
  static_assert(32 % W == 0);
  using U = Unit<kType>;
  constexpr int kSubs = 32 / W;  // rows of each member a warp takes in a group
  extern __shared__ __align__(16) uint8_t staged[];
  // The group's sums, two sets so that the warps may start the next group's
  // before the first warp has read this one's.
  __shared__ float sums[2][kMaxGroup][32];
  __shared__ uint64_t barriers[W][S];
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const auto row_bytes = static_cast<int>(group.row_bytes);
  uint8_t* ring = staged + static_cast<size_t>(warp) * S * row_bytes;
  BulkRing<S> buffers(barriers[warp], lane);
  const int members = group.count;
  const auto row_at = [&](const GroupedCursor& c) {
    // The member's first row by selects, never an index into the parameters
    // (Locate says why).
    const int64_t first = c.member == 0 ? 0 : c.member == 1 ? group.end[0] : group.end[1];
    return first + 32 * c.g + c.sub * W + warp;
  };
  GroupedCursor ahead{blockIdx.x, 0, 0};
  const auto copy_next = [&](int b) {
    if (ahead.g < groups) {
      if (lane == 0) {
        buffers.Fill(b, ring + b * row_bytes, Locate(group, row_at(ahead)).weights,
                     static_cast<uint32_t>(row_bytes), lane);
      }
      ahead.Advance(members, kSubs, gridDim.x);
    }
  };
#pragma unroll
  for (int s = 0; s < S - 1; ++s) copy_next(s);
  LetNextKernelStart();
  WaitForPreviousKernel();
  const int units = static_cast<int>(x.cols / U::kElements);
  typename U::Acts acts[UPL];
  LoadStagedActs<U, UPL>(x, 0, units, lane, acts);
  const PendingRowSumFactor pending(x, lane);
  float factor = 1.0f;  // RowSumFactor, once the warp's first row is done
  bool first_row = true;
  typename Finish::Ahead prepared{};
  int set = 0, b = 0;
  for (GroupedCursor at{blockIdx.x, 0, 0}; at.g < groups; at.Advance(members, kSubs, gridDim.x)) {
    if (warp == 0 && at.member == 0 && at.sub == 0) prepared = finish.Prepare(at.g, lane);
    copy_next(b == 0 ? S - 1 : b - 1);
    buffers.Wait(b);
    const float sum = StagedRowSum<U, UPL>(ring + b * row_bytes, acts, units, lane);
    if (first_row) {
      factor = pending.Value();
      first_row = false;
    }
    if (lane == 0) sums[set][at.member][at.sub * W + warp] = sum * factor;
    if (at.member == members - 1 && at.sub == kSubs - 1) {
      __syncthreads();
      if (warp == 0) finish(at.g, sums[set], prepared, lane);
      set ^= 1;
    }
    __syncwarp();  // the buffer is refilled next
    b = b + 1 == S ? 0 : b + 1;
  }
}

// Gate (member 0) and up (member 1), then for each 32-row group what
// SwiGluQuantizeKernel writes from them (LaunchMatVecQ8GateUpSwiGlu).
struct SwiGluFinish {
  float* gate;
  float* up;
  int8_t* q;
  float* scale;
  float* half_sums;
  struct Ahead {};
  __device__ Ahead Prepare(int64_t /*group*/, int /*lane*/) const { return {}; }
  __device__ void operator()(int64_t group, const float (&sums)[kMaxGroup][32], Ahead /*ahead*/,
                             int lane) const {
    const int64_t i = group * 32 + lane;
    const float v = SwiGluOf(sums[0][lane], sums[1][lane]);
    gate[i] = v;
    up[i] = sums[1][lane];
    RoundBlock(v, lane, group, q, scale, half_sums);
  }
};

// y += the product (the residual add), then for each 32-row group the
// rounding of y * weight and y's sums of squares
// (LaunchMatVecQ8ResidualRmsRound).
struct ResidualRmsFinish {
  float* y;
  const float* weight;
  int8_t* q;
  float* scale;
  float* half_sums;
  double* sum_squares;
  // The group's residual and weight, loaded as its rows start.
  struct Ahead {
    float y, weight;
  };
  __device__ Ahead Prepare(int64_t group, int lane) const {
    return {y[group * 32 + lane], weight[group * 32 + lane]};
  }
  __device__ void operator()(int64_t group, const float (&sums)[kMaxGroup][32], Ahead ahead,
                             int lane) const {
    const float value = ahead.y + sums[0][lane];
    y[group * 32 + lane] = value;
    RoundNormGroup(value, ahead.weight, lane, group, q, scale, half_sums, sum_squares);
  }
};

// The quantization blocks of a unit type: elements and bytes.
template <uint32_t kType>
struct BlockOf {
  static constexpr int kElements = (kType & 0xFF) == kQ8_0 ? 32 : 256;
  static constexpr int kBytes = (kType & 0xFF) == kQ8_0 ? 34 : (kType & 0xFF) == kQ6_K ? 210 : 144;
};

// Splits of a row past which a block of MatVecQ8SplitKernel has no more warps to give it.
constexpr int kMaxSplits = 4;

// One matrix whose rows MatVecQ8SplitKernel reads in `splits` ranges of
// whole quantization blocks.
struct SplitRows {
  const uint8_t* w;
  float* y;
  int64_t rows;
  uint64_t row_bytes;
  int blocks;      // quantization blocks a row
  int slot_bytes;  // of each ring buffer: the largest range, 16-byte aligned both ends
};

// Range `split` of `splits` of every row of m: its first quantization block,
// its units and bytes. Ranges need not start at 16 bytes (Q6_K's 210-byte
// blocks): a range's copy starts at the 16-byte boundary below it.
template <uint32_t kType>
struct SplitRange {
  static constexpr int kUnitsPerBlock = BlockOf<kType>::kElements / Unit<kType>::kElements;
  static constexpr int kBlockBytes = BlockOf<kType>::kBytes;
  const SplitRows& m;
  int first_block, units, bytes;

  __device__ SplitRange(const SplitRows& rows, int split, int splits)
      : m(rows), first_block(split * rows.blocks / splits) {
    units = ((split + 1) * rows.blocks / splits - first_block) * kUnitsPerBlock;
    bytes = units / kUnitsPerBlock * kBlockBytes;
  }
  __device__ const uint8_t* Begin(int64_t row) const {
    return m.w + row * static_cast<int64_t>(m.row_bytes) + first_block * kBlockBytes;
  }
  // The range of `row` into buffer b of `buffers` at `target` by one bulk
  // copy of whole 16-byte chunks from the boundary below it, so up to 15
  // bytes past its end (the next range's or row's). Only the matrix's last
  // row has nothing after it: there the chunks stop short and lane 0 copies
  // the last few bytes itself. Every lane calls it.
  template <int S>
  __device__ void Fill(const BulkRing<S>& buffers, int b, int64_t row, uint8_t* target,
                       int lane) const {
    const uint8_t* begin = Begin(row);
    const uint8_t* from =
        reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(begin) & ~uintptr_t{15});
    const auto length = static_cast<uint32_t>(begin + bytes - from);
    uint32_t chunks = (length + 15) / 16 * 16;
    if (row + 1 == m.rows && from + chunks > m.w + m.rows * static_cast<int64_t>(m.row_bytes)) {
      chunks = length / 16 * 16;
      if (lane == 0) {
        // The rest: an even count of bytes (2-byte-aligned blocks) under 16.
        for (uint32_t i = chunks; i < length; i += 2)
          *reinterpret_cast<uint16_t*>(target + i) = FromGlobal::U16(from + i);
      }
    }
    buffers.Fill(b, target, from, chunks, lane);
  }
  // Where the range of `row` starts in the buffer it was copied into.
  __device__ const uint8_t* In(const uint8_t* buffer, int64_t row) const {
    return buffer + (reinterpret_cast<uintptr_t>(Begin(row)) & 15);
  }
};

// One token over rows too wide for a staged warp's registers to hold their
// activations (MatVecQ8StagedKernel's): the warps of a block split each row's
// quantization blocks into blockDim.x / 32 contiguous ranges (SplitRange), and
// each warp keeps its range's activations in registers and copies its range
// of the block's rows (row, row + gridDim.x, ...) into its own ring of S
// buffers by bulk copies, S - 1 rows ahead. The ranges' sums meet in
// shared memory and the first warp adds them in range order: fixed bits,
// though not those of one warp adding the whole row (MatVecQ8Kernel).
template <uint32_t kType, int UPL, int S>
__global__ void __launch_bounds__(kMaxSplits * 32)
    MatVecQ8SplitKernel(SplitRows m, RoundedX x, bool accumulate) {
  using U = Unit<kType>;
  extern __shared__ __align__(16) uint8_t shared[];
  const int splits = static_cast<int>(blockDim.x / 32);
  const int split = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const SplitRange<kType> range(m, split, splits);
  // Two sets of the ranges' sums, a row's in set (its index in this block) % 2,
  // so that a warp may write the next row's before the first warp has read this one's.
  float* sums = reinterpret_cast<float*>(shared);
  uint8_t* ring = shared + 2 * kMaxSplits * sizeof(float) + split * S * m.slot_bytes;
  __shared__ uint64_t barriers[kMaxSplits][S];
  BulkRing<S> buffers(barriers[split], lane);
  const auto copy_row = [&](int64_t r, int b) {
    if (r < m.rows) range.Fill(buffers, b, r, ring + b * m.slot_bytes, lane);
  };
  int64_t row = blockIdx.x;
#pragma unroll
  for (int s = 0; s < S - 1; ++s) copy_row(row + s * static_cast<int64_t>(gridDim.x), s);
  LetNextKernelStart();
  WaitForPreviousKernel();
  typename U::Acts acts[UPL];
  LoadStagedActs<U, UPL>(x, range.first_block * range.kUnitsPerBlock, range.units, lane, acts);
  const float factor = RowSumFactor(x, lane);  // 1: the same bits as without
  for (int b = 0, set = 0; row < m.rows; row += gridDim.x, b = b + 1 == S ? 0 : b + 1, set ^= 1) {
    copy_row(row + (S - 1) * static_cast<int64_t>(gridDim.x), b == 0 ? S - 1 : b - 1);
    buffers.Wait(b);
    __syncwarp();  // the bytes lane 0 copied at the matrix's end
    const float sum =
        StagedRowSum<U, UPL>(range.In(ring + b * m.slot_bytes, row), acts, range.units, lane);
    if (lane == 0) sums[set * kMaxSplits + split] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = sums[set * kMaxSplits];
      for (int s = 1; s < splits; ++s) total += sums[set * kMaxSplits + s];
      total *= factor;
      m.y[row] = accumulate ? m.y[row] + total : total;
    }
    __syncwarp();  // the buffer is refilled next
  }
}

// Warps of a MatVecQ8GroupedSplitKernel block: what the split kernels'
// registers (up to 80) allow in one block an SM.
constexpr int kGroupedSplitWarps = 24;

// MatVecQ8SplitKernel's rows for an epilogue that needs 32 of them at a time
// (the next norm's rounding): each block takes whole 32-row groups (group g,
// g + gridDim.x, ...) and its warps, `splits` to a set (blockDim.x / 32 /
// splits sets), take range warp % splits of the group's rows set, set + sets,
// ..., streaming them through rings of S buffers, the next rows' copies in
// flight across groups. When a group's ranges are all done (a block barrier)
// the first warp adds each row's ranges in range order (the split kernel's
// bits) and hands the totals to `finish`, one row a lane.
template <uint32_t kType, int UPL, int S, typename Finish>
__global__ void __launch_bounds__(kGroupedSplitWarps * 32, 1)
    MatVecQ8GroupedSplitKernel(SplitRows m, int splits, RoundedX x, Finish finish) {
  using U = Unit<kType>;
  extern __shared__ __align__(16) uint8_t staged[];
  // The group's range sums, two sets so that the warps may start the next
  // group's before the first warp has read this one's; the rows' totals.
  __shared__ float sums[2][kMaxSplits][32];
  __shared__ float totals[kMaxGroup][32];
  __shared__ uint64_t barriers[kGroupedSplitWarps][S];
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int sets = static_cast<int>(blockDim.x / 32) / splits;
  const int split = warp % splits, set = warp / splits;
  const int rows_in_group = (32 - set + sets - 1) / sets;  // rows set, set + sets, ... < 32
  const SplitRange<kType> range(m, split, splits);
  uint8_t* ring = staged + static_cast<size_t>(warp) * S * m.slot_bytes;
  BulkRing<S> buffers(barriers[warp], lane);
  const int64_t groups = m.rows / 32;
  // The warp's rows in order: row i of group g is 32 g + set + i sets.
  int64_t ahead_g = blockIdx.x;
  int ahead_i = 0;
  const auto copy_next = [&](int b) {
    if (ahead_g < groups) {
      range.Fill(buffers, b, 32 * ahead_g + set + ahead_i * sets, ring + b * m.slot_bytes, lane);
      if (++ahead_i == rows_in_group) {
        ahead_i = 0;
        ahead_g += gridDim.x;
      }
    }
  };
#pragma unroll
  for (int s = 0; s < S - 1; ++s) copy_next(s);
  LetNextKernelStart();
  WaitForPreviousKernel();
  typename U::Acts acts[UPL];
  LoadStagedActs<U, UPL>(x, range.first_block * range.kUnitsPerBlock, range.units, lane, acts);
  const float factor = RowSumFactor(x, lane);  // 1: the same bits as without
  typename Finish::Ahead prepared{};
  int parity = 0, b = 0, i = 0;
  for (int64_t g = blockIdx.x; g < groups;) {
    if (warp == 0 && i == 0) prepared = finish.Prepare(g, lane);
    copy_next(b == 0 ? S - 1 : b - 1);
    buffers.Wait(b);
    __syncwarp();  // the bytes lane 0 copied at the matrix's end
    const int64_t row = 32 * g + set + i * sets;
    const float sum =
        StagedRowSum<U, UPL>(range.In(ring + b * m.slot_bytes, row), acts, range.units, lane);
    if (lane == 0) sums[parity][split][set + i * sets] = sum;
    if (++i == rows_in_group) {
      __syncthreads();
      if (warp == 0) {
        float total = sums[parity][0][lane];
        for (int s = 1; s < splits; ++s) total += sums[parity][s][lane];
        totals[0][lane] = total * factor;
        finish(g, totals, prepared, lane);
      }
      parity ^= 1;
      i = 0;
      g += gridDim.x;
    }
    __syncwarp();  // the buffer is refilled next
    b = b + 1 == S ? 0 : b + 1;
  }
}

// The launch's matrices as one numbering of rows, outputs from token `first`.
RowGroup MakeRowGroup(std::span<const DeviceMatrix> w, int64_t first, std::span<float* const> y) {
  RowGroup group{};
  group.count = static_cast<int>(w.size());
  group.row_bytes = w[0].row_bytes;
  int64_t rows = 0;
  for (size_t m = 0; m < w.size(); ++m) {
    group.w[m] = static_cast<const uint8_t*>(w[m].data);
    group.y[m] = y[m] + first * w[m].rows;
    group.rows[m] = w[m].rows;
    rows += w[m].rows;
    group.end[m] = rows;
  }
  group.total_rows = rows;
  return group;
}

RoundedX RoundedFrom(const Q8Activations& x, int64_t first, int64_t cols) {
  return {x.q + first * cols,
          x.scale + first * (cols / 32),
          x.half_sums + first * (cols / 16),
          cols,
          x.rms_sum_squares,
          x.rms_eps};
}

template <uint32_t kType, int B, int R>
cudaError_t LaunchPass(std::span<const DeviceMatrix> w, const Q8Activations& x, int64_t first,
                       std::span<float* const> y, bool accumulate, bool overlap_previous,
                       int blocks_per_sm, cudaStream_t stream) {
  const RowGroup group = MakeRowGroup(w, first, y);
  const int64_t rows_per_block = int64_t{kWarpsPerBlock} * R;
  int64_t blocks = (group.total_rows + rows_per_block - 1) / rows_per_block;
  if (blocks_per_sm > 0)
    blocks = std::min<int64_t>(blocks, int64_t{blocks_per_sm} * std::max(1, MultiprocessorCount()));
  return LaunchAfterPrevious(overlap_previous, MatVecQ8Kernel<kType, B, R>,
                             dim3(static_cast<unsigned>(blocks)), dim3(kWarpsPerBlock * 32), 0,
                             stream, group, RoundedFrom(x, first, w[0].cols), accumulate);
}

// Units a lane takes in MatVecQ8StagedKernel over rows of `cols`: 2 or 4,
// or 0 where it does not read them (wider rows measured slower staged: their
// activations do not fit in registers).
template <uint32_t kType>
int StagedUnitsPerLane(std::span<const DeviceMatrix> w) {
  for (const DeviceMatrix& m : w) {
    if (reinterpret_cast<uintptr_t>(m.data) % 16 != 0 || m.row_bytes % 16 != 0) return 0;
  }
  // Rows up to 4096 wide: the shapes measured (llama2-7b's), where the
  // activations of up to 4 units a lane fit in registers.
  if (w[0].cols > 4096) return 0;
  const int64_t units = w[0].cols / Unit<kType>::kElements;
  return units <= 32 * 2 ? 2 : 4;
}

// The grid of a kernel whose blocks loop over the work: at most `needed`
// blocks of `threads` threads and `shared` bytes, as many as the SMs hold at
// once (or blocks_per_sm a SM when that is > 0).
template <typename... Params>
cudaError_t ResidentGrid(void (*kernel)(Params...), int threads, size_t shared, int blocks_per_sm,
                         int64_t needed, int64_t* blocks) {
  cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared));
  if (error != cudaSuccess) return error;
  if (blocks_per_sm == 0) {
    error = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, shared);
    if (error != cudaSuccess) return error;
    blocks_per_sm = std::max(1, blocks_per_sm);
  }
  *blocks = std::min<int64_t>(needed, int64_t{blocks_per_sm} * std::max(1, MultiprocessorCount()));
  return cudaSuccess;
}

template <uint32_t kType, int UPL, int S, typename Store>
cudaError_t LaunchStagedWith(const RowGroup& group, const RoundedX& x, const Store& store,
                             bool overlap_previous, int blocks_per_sm, cudaStream_t stream) {
  const size_t shared = static_cast<size_t>(kWarpsPerBlock) * S * group.row_bytes;
  const auto kernel = MatVecQ8StagedKernel<kType, UPL, S, Store>;
  int64_t blocks = 0;
  const cudaError_t error =
      ResidentGrid(kernel, kWarpsPerBlock * 32, shared, blocks_per_sm,
                   (group.total_rows + kWarpsPerBlock - 1) / kWarpsPerBlock, &blocks);
  if (error != cudaSuccess) return error;
  return LaunchAfterPrevious(overlap_previous, kernel, dim3(static_cast<unsigned>(blocks)),
                             dim3(kWarpsPerBlock * 32), shared, stream, group, x, store);
}

template <uint32_t kType, int UPL, int S>
cudaError_t LaunchStaged(std::span<const DeviceMatrix> w, const Q8Activations& x, int64_t first,
                         std::span<float* const> y, bool accumulate, bool overlap_previous,
                         int blocks_per_sm, cudaStream_t stream) {
  return LaunchStagedWith<kType, UPL, S>(MakeRowGroup(w, first, y),
                                         RoundedFrom(x, first, w[0].cols), RowStore{accumulate},
                                         overlap_previous, blocks_per_sm, stream);
}

// Columns a warp of MatVecQ8SplitKernel takes at most: what a staged warp's
// registers hold (StagedUnitsPerLane).
constexpr int64_t kSplitColumns = 4096;

// Rows of `cols` that MatVecQ8SplitKernel reads: wider than a staged warp
// takes, in up to kMaxSplits ranges of at most kSplitColumns.
int SplitsFor(int64_t cols) {
  if (cols <= kSplitColumns) return 0;
  const int64_t splits = (cols + kSplitColumns - 1) / kSplitColumns;
  return splits <= kMaxSplits ? static_cast<int>(splits) : 0;
}

template <uint32_t kType, int UPL, int S>
cudaError_t LaunchSplitWith(const SplitRows& m, int splits, const RoundedX& x, bool accumulate,
                            bool overlap_previous, int blocks_per_sm, cudaStream_t stream) {
  const size_t shared = 2 * kMaxSplits * sizeof(float) +
                        static_cast<size_t>(splits) * S * static_cast<size_t>(m.slot_bytes);
  const auto kernel = MatVecQ8SplitKernel<kType, UPL, S>;
  int64_t blocks = 0;
  const cudaError_t error =
      ResidentGrid(kernel, splits * 32, shared, blocks_per_sm, m.rows, &blocks);
  if (error != cudaSuccess) return error;
  return LaunchAfterPrevious(overlap_previous, kernel, dim3(static_cast<unsigned>(blocks)),
                             dim3(static_cast<unsigned>(splits * 32)), shared, stream, m, x,
                             accumulate);
}

// Quantization blocks of the widest of the ranges MatVecQ8SplitKernel splits
// rows of `cols` into.
template <uint32_t kType>
int WidestRange(int64_t cols) {
  const int splits = SplitsFor(cols);
  const auto blocks = static_cast<int>(cols / BlockOf<kType>::kElements);
  return (blocks + splits - 1) / splits;
}

// Units a lane of MatVecQ8SplitKernel takes of rows of `cols`: 2 or 4.
template <uint32_t kType>
int SplitUnitsPerLane(int64_t cols) {
  constexpr int kUnitsPerBlock = BlockOf<kType>::kElements / Unit<kType>::kElements;
  return WidestRange<kType>(cols) * kUnitsPerBlock <= 64 ? 2 : 4;
}

// The rows of w (outputs in y) as MatVecQ8SplitKernel reads them, and the
// units a lane takes of the widest range.
template <uint32_t kType>
SplitRows MakeSplitRows(const DeviceMatrix& w, float* y, int* units_per_lane) {
  using B = BlockOf<kType>;
  const int widest = WidestRange<kType>(w.cols);
  *units_per_lane = SplitUnitsPerLane<kType>(w.cols);
  return {static_cast<const uint8_t*>(w.data),
          y,
          w.rows,
          w.row_bytes,
          static_cast<int>(w.cols / B::kElements),
          (widest * B::kBytes + 15 + 15) / 16 * 16};
}

// One token over one matrix of rows wider than kSplitColumns, by
// MatVecQ8SplitKernel with S ring buffers a warp.
template <uint32_t kType, int S>
cudaError_t LaunchSplit(const DeviceMatrix& w, const Q8Activations& x, int64_t first, float* y,
                        bool accumulate, bool overlap_previous, int blocks_per_sm,
                        cudaStream_t stream) {
  int per_lane = 0;
  const SplitRows m = MakeSplitRows<kType>(w, y + first * w.rows, &per_lane);
  const int splits = SplitsFor(w.cols);
  const RoundedX rx = RoundedFrom(x, first, w.cols);
  if (per_lane == 2) {
    return LaunchSplitWith<kType, 2, S>(m, splits, rx, accumulate, overlap_previous, blocks_per_sm,
                                        stream);
  }
  return LaunchSplitWith<kType, 4, S>(m, splits, rx, accumulate, overlap_previous, blocks_per_sm,
                                      stream);
}

// True where MatVecQ8GroupedSplitKernel reads w: rows wider than
// kSplitColumns whose ranges take 2 units a lane (Q4_K's). Ranges of 4 units
// a lane (Q6_K's, Q8_0's) need 80 registers, and on the 24 warps a block
// that leaves they measured slower than the split kernel's many small blocks
// (llama2-7b's Q6_K down projection 22.6 against 18.3 us).
bool GroupedSplit(const DeviceMatrix& w) {
  if (SplitsFor(w.cols) == 0) return false;
  switch (w.type) {
    case kQ4_K:
      return SplitUnitsPerLane<kQ4_K>(w.cols) == 2;
    case kQ6_K:
      return SplitUnitsPerLane<kQ6_K>(w.cols) == 2;
    default:
      return SplitUnitsPerLane<kQ8_0>(w.cols) == 2;
  }
}

// One token over one matrix that GroupedSplit() takes (rows a multiple of
// 32) through MatVecQ8GroupedSplitKernel: three ring buffers a warp where
// shared memory holds them, else two.
template <uint32_t kType, typename Finish>
cudaError_t LaunchGroupedSplit(const DeviceMatrix& w, float* y, const Q8Activations& x,
                               const Finish& finish, bool overlap_previous, cudaStream_t stream) {
  int per_lane = 0;
  const SplitRows m = MakeSplitRows<kType>(w, y, &per_lane);
  if (per_lane != 2) return cudaErrorInvalidValue;
  const int splits = SplitsFor(w.cols);
  const int warps = kGroupedSplitWarps / splits * splits;
  const RoundedX rx = RoundedFrom(x, 0, w.cols);
  const auto shared = [&](int stages) {
    return static_cast<size_t>(warps) * stages * static_cast<size_t>(m.slot_bytes);
  };
  // The kernel's static arrays (sums and totals) take the rest.
  constexpr size_t kStatic = (2 * kMaxSplits + kMaxGroup) * 32 * sizeof(float);
  const bool three = shared(3) + kStatic <= MaxDynamicShared();
  const auto launch = [&]<int S>() {
    const auto kernel = MatVecQ8GroupedSplitKernel<kType, 2, S, Finish>;
    int64_t blocks = 0;
    const cudaError_t error = ResidentGrid(kernel, warps * 32, shared(S), 0, m.rows / 32, &blocks);
    if (error != cudaSuccess) return error;
    return LaunchAfterPrevious(overlap_previous, kernel, dim3(static_cast<unsigned>(blocks)),
                               dim3(static_cast<unsigned>(warps * 32)), shared(S), stream, m,
                               splits, rx, finish);
  };
  return three ? launch.template operator()<3>() : launch.template operator()<2>();
}

// Rows a warp takes at B tokens by default: more rows share each unit's
// activation loads, at the cost of registers (kernels/cuda/NOTES.md, v16).
constexpr int DefaultRowsPerWarp(int b) { return b <= 2 ? 2 : 1; }
// Shared-memory row buffers a warp of the staged one-token kernel has by
// default: two measured fastest (more take shared memory from other blocks).
constexpr int kDefaultStages = 2;

// R rows a warp where the pass size allows it: passes of up to 2 tokens (with
// more, the accumulators and activations of 2 rows spill registers).
template <uint32_t kType, int B>
cudaError_t LaunchPassShaped(MatVecQ8Shape shape, std::span<const DeviceMatrix> w,
                             const Q8Activations& x, int64_t first, std::span<float* const> y,
                             bool accumulate, bool overlap_previous, cudaStream_t stream) {
  const int r = shape.rows_per_warp == 0 ? DefaultRowsPerWarp(B) : shape.rows_per_warp;
  const int per_sm = shape.blocks_per_sm;
  if constexpr (B == 1) {
    const int per_lane = StagedUnitsPerLane<kType>(w);
    const int stages = shape.stages == 0 ? kDefaultStages : shape.stages;
    // Wider rows split over the warps of a block, whose sums add up in
    // another order than one warp's: not where a token's bits must not
    // depend on its batch.
    if (stages > 1 && w.size() == 1 && SplitsFor(w[0].cols) > 0 && !shape.batch_invariant) {
      if (stages == 2) {
        return LaunchSplit<kType, 2>(w[0], x, first, y[0], accumulate, overlap_previous, per_sm,
                                     stream);
      }
      if (stages == 3) {
        return LaunchSplit<kType, 3>(w[0], x, first, y[0], accumulate, overlap_previous, per_sm,
                                     stream);
      }
      return LaunchSplit<kType, 4>(w[0], x, first, y[0], accumulate, overlap_previous, per_sm,
                                   stream);
    }
    if (stages > 1 && per_lane > 0) {
      const auto launch = [&]<int S>() {
        return per_lane == 2 ? LaunchStaged<kType, 2, S>(w, x, first, y, accumulate,
                                                         overlap_previous, per_sm, stream)
                             : LaunchStaged<kType, 4, S>(w, x, first, y, accumulate,
                                                         overlap_previous, per_sm, stream);
      };
      if (stages == 2) return launch.template operator()<2>();
      if (stages == 3) return launch.template operator()<3>();
      if (stages == 4) return launch.template operator()<4>();
      return launch.template operator()<6>();
    }
  }
  if constexpr (B <= 2) {
    if (r >= 4)
      return LaunchPass<kType, B, 4>(w, x, first, y, accumulate, overlap_previous, per_sm, stream);
    if (r >= 2)
      return LaunchPass<kType, B, 2>(w, x, first, y, accumulate, overlap_previous, per_sm, stream);
  }
  return LaunchPass<kType, B, 1>(w, x, first, y, accumulate, overlap_previous, per_sm, stream);
}

// The unit type a one-token staged pass reads a type in (its 64-element Q4_K
// units: not batch invariant) and the units a lane takes of rows up to 4096.
template <uint32_t kType>
struct StagedUnits;
template <>
struct StagedUnits<kQ4_K> {
  static constexpr uint32_t kUnit = kQ4_K;
  static constexpr int kPerLane = 2;
};
template <>
struct StagedUnits<kQ6_K> {
  static constexpr uint32_t kUnit = kQ6_K;
  static constexpr int kPerLane = 4;
};
template <>
struct StagedUnits<kQ8_0> {
  static constexpr uint32_t kUnit = kQ8_0;
  static constexpr int kPerLane = 4;
};

template <uint32_t kTypeA, uint32_t kTypeB, typename Store>
cudaError_t LaunchStagedMixedAs(const RowGroup& a, const RowGroup& b, const RoundedX& x,
                                const Store& store, bool overlap_previous, cudaStream_t stream) {
  using A = StagedUnits<kTypeA>;
  using B = StagedUnits<kTypeB>;
  constexpr int kStages = kDefaultStages;
  const auto kernel =
      MatVecQ8StagedMixedKernel<A::kUnit, A::kPerLane, B::kUnit, B::kPerLane, kStages, Store>;
  const auto slot_bytes = static_cast<int>(std::max(a.row_bytes, b.row_bytes));
  const size_t shared = static_cast<size_t>(kWarpsPerBlock) * kStages * slot_bytes;
  const int64_t rows = a.total_rows + b.total_rows;
  int64_t blocks = 0;
  const cudaError_t error = ResidentGrid(kernel, kWarpsPerBlock * 32, shared, 0,
                                         (rows + kWarpsPerBlock - 1) / kWarpsPerBlock, &blocks);
  if (error != cudaSuccess) return error;
  // The warps shared out by bytes, so that both groups end together.
  const int64_t warps = blocks * kWarpsPerBlock;
  const double bytes_a = static_cast<double>(a.total_rows) * static_cast<double>(a.row_bytes);
  const double bytes_b = static_cast<double>(b.total_rows) * static_cast<double>(b.row_bytes);
  const int64_t warps_a = std::clamp<int64_t>(
      std::llround(static_cast<double>(warps) * bytes_a / (bytes_a + bytes_b)), 1, warps - 1);
  return LaunchAfterPrevious(overlap_previous, kernel, dim3(static_cast<unsigned>(blocks)),
                             dim3(kWarpsPerBlock * 32), shared, stream, a, b, warps_a, slot_bytes,
                             x, store);
}

// True where the one-token staged kernel reads the matrices (one type).
bool Staged(std::span<const DeviceMatrix> m) {
  switch (m[0].type) {
    case kQ4_K:
      return StagedUnitsPerLane<kQ4_K>(m) > 0;
    case kQ6_K:
      return StagedUnitsPerLane<kQ6_K>(m) > 0;
    default:
      return StagedUnitsPerLane<kQ8_0>(m) > 0;
  }
}

// One token over the matrices of `w` (read by the staged kernel: Staged()),
// w[0, split) of one type and w[split, end) of another unless split is the
// end, in one launch, each row's sum to `store`.
template <typename Store>
cudaError_t LaunchStagedGroup(std::span<const DeviceMatrix> w, size_t split, const Q8Activations& x,
                              std::span<float* const> y, const Store& store, bool overlap_previous,
                              cudaStream_t stream) {
  const RoundedX rx = RoundedFrom(x, 0, w[0].cols);
  if (split == w.size()) {
    const RowGroup group = MakeRowGroup(w, 0, y);
    const auto with = [&]<uint32_t kType>() {
      using U = StagedUnits<kType>;
      return LaunchStagedWith<U::kUnit, U::kPerLane, kDefaultStages>(group, rx, store,
                                                                     overlap_previous, 0, stream);
    };
    if (w[0].type == kQ4_K) return with.template operator()<kQ4_K>();
    if (w[0].type == kQ6_K) return with.template operator()<kQ6_K>();
    return with.template operator()<kQ8_0>();
  }
  const RowGroup a = MakeRowGroup(w.first(split), 0, y.first(split));
  const RowGroup b = MakeRowGroup(w.subspan(split), 0, y.subspan(split));
  const auto with = [&]<uint32_t kA, uint32_t kB>() {
    return LaunchStagedMixedAs<kA, kB>(a, b, rx, store, overlap_previous, stream);
  };
  const uint32_t ta = w[0].type, tb = w[split].type;
  if (ta == kQ4_K && tb == kQ6_K) return with.template operator()<kQ4_K, kQ6_K>();
  if (ta == kQ6_K && tb == kQ4_K) return with.template operator()<kQ6_K, kQ4_K>();
  if (ta == kQ4_K && tb == kQ8_0) return with.template operator()<kQ4_K, kQ8_0>();
  if (ta == kQ8_0 && tb == kQ4_K) return with.template operator()<kQ8_0, kQ4_K>();
  if (ta == kQ6_K && tb == kQ8_0) return with.template operator()<kQ6_K, kQ8_0>();
  return with.template operator()<kQ8_0, kQ6_K>();
}

// Ring buffers a warp of MatVecQ8GroupedKernel has: two rows in flight
// while one is multiplied.
constexpr int kGroupedStages = 3;

// MatVecQ8GroupedKernel over `group` (32-row groups of every member) with
// blocks of 16 warps or of 8, whichever keeps more warps at work: a block of
// 16 takes a whole SM at these kernels' registers, so few groups (llama2-7b's
// attention output product, 4096 rows: 128) run on 16-warp blocks and many
// (its gate/up, 11008 rows: 344) on 8-warp ones, three an SM.
template <uint32_t kType, int UPL, typename Finish>
cudaError_t LaunchGroupedAs(const RowGroup& group, const RoundedX& x, const Finish& finish,
                            bool overlap_previous, cudaStream_t stream) {
  const int64_t groups = group.rows[0] / 32;
  const auto shared = [&](int warps) {
    return static_cast<size_t>(warps) * kGroupedStages * group.row_bytes;
  };
  const auto wide = MatVecQ8GroupedKernel<kType, UPL, 16, kGroupedStages, Finish>;
  const auto narrow = MatVecQ8GroupedKernel<kType, UPL, 8, kGroupedStages, Finish>;
  int64_t wide_blocks = 0, narrow_blocks = 0;
  cudaError_t error = ResidentGrid(wide, 16 * 32, shared(16), 0, groups, &wide_blocks);
  if (error != cudaSuccess) return error;
  error = ResidentGrid(narrow, 8 * 32, shared(8), 0, groups, &narrow_blocks);
  if (error != cudaSuccess) return error;
  if (wide_blocks * 16 >= narrow_blocks * 8) {
    return LaunchAfterPrevious(overlap_previous, wide, dim3(static_cast<unsigned>(wide_blocks)),
                               dim3(16 * 32), shared(16), stream, group, groups, x, finish);
  }
  return LaunchAfterPrevious(overlap_previous, narrow, dim3(static_cast<unsigned>(narrow_blocks)),
                             dim3(8 * 32), shared(8), stream, group, groups, x, finish);
}

// One token over matrices of one type, width and height (a multiple of 32
// rows that the staged kernel reads), through MatVecQ8GroupedKernel.
template <typename Finish>
cudaError_t LaunchGrouped(std::span<const DeviceMatrix> w, std::span<float* const> y,
                          const Q8Activations& x, const Finish& finish, bool overlap_previous,
                          cudaStream_t stream) {
  const RowGroup group = MakeRowGroup(w, 0, y);
  const RoundedX rx = RoundedFrom(x, 0, w[0].cols);
  const auto with = [&]<uint32_t kType>() {
    using U = StagedUnits<kType>;
    return LaunchGroupedAs<U::kUnit, U::kPerLane>(group, rx, finish, overlap_previous, stream);
  };
  if (w[0].type == kQ4_K) return with.template operator()<kQ4_K>();
  if (w[0].type == kQ6_K) return with.template operator()<kQ6_K>();
  return with.template operator()<kQ8_0>();
}

// True where a one-token launch over one type's matrices `w` (the default
// shape) takes the split or the staged kernel, the two that apply a deferred
// RMSNorm factor (RowSumFactor).
bool OneTypeReadsDeferredRms(std::span<const DeviceMatrix> w) {
  return (w.size() == 1 && SplitsFor(w[0].cols) > 0) || Staged(w);
}

cudaError_t LaunchGroup(std::span<const DeviceMatrix> w, const Q8Activations& x, int n_tokens,
                        std::span<float* const> y, bool accumulate, bool overlap_previous,
                        MatVecQ8Shape shape, cudaStream_t stream) {
  if (w.empty() || w.size() > static_cast<size_t>(kMaxGroup) || w.size() != y.size() ||
      n_tokens <= 0 ||
      (shape.rows_per_warp != 0 && shape.rows_per_warp != 1 && shape.rows_per_warp != 2 &&
       shape.rows_per_warp != 4) ||
      shape.stages < 0 || shape.stages == 5 || shape.stages > 6 || shape.blocks_per_sm < 0) {
    return cudaErrorInvalidValue;
  }
  // The matrices of the type after the first's, if any (all of one type).
  size_t split = 1;
  while (split < w.size() && w[split].type == w[0].type) ++split;
  for (size_t i = 0; i < w.size(); ++i) {
    const DeviceMatrix& m = w[i];
    if (!MatVecQ8Supports(m.type, m.cols) || m.cols != w[0].cols || m.rows <= 0 ||
        m.type != w[i < split ? 0 : split].type) {
      return cudaErrorInvalidValue;
    }
  }
  if (x.rms_sum_squares != nullptr &&
      (n_tokens != 1 || shape.batch_invariant || shape.stages != 0 || shape.rows_per_warp != 0 ||
       !MatVecQ8ReadsDeferredRms(w))) {
    return cudaErrorInvalidValue;
  }
  cudaError_t error = cudaSuccess;
  if (split < w.size()) {
    // Two types: one launch where the one-token staged kernel reads both,
    // else one launch a type (the same bits).
    if (n_tokens == 1 && !accumulate && !shape.batch_invariant && shape.stages == 0 &&
        shape.rows_per_warp == 0 && shape.blocks_per_sm == 0 && Staged(w.first(split)) &&
        Staged(w.subspan(split))) {
      error = LaunchStagedGroup(w, split, x, y, RowStore{false}, overlap_previous, stream);
      return error != cudaSuccess ? error : cudaGetLastError();
    }
    error = LaunchGroup(w.first(split), x, n_tokens, y.first(split), accumulate, overlap_previous,
                        shape, stream);
    if (error != cudaSuccess) return error;
    return LaunchGroup(w.subspan(split), x, n_tokens, y.subspan(split), accumulate,
                       overlap_previous, shape, stream);
  }
  ForEachPass(n_tokens, [&]<int B>(int64_t first) {
    if (error != cudaSuccess) return;
    if (w[0].type == kQ4_K && B <= 2 && !shape.batch_invariant) {
      error =
          LaunchPassShaped<kQ4_K, B>(shape, w, x, first, y, accumulate, overlap_previous, stream);
    } else if (w[0].type == kQ4_K) {
      error =
          LaunchPassShaped<kQ4_K32, B>(shape, w, x, first, y, accumulate, overlap_previous, stream);
    } else if (w[0].type == kQ6_K) {
      error =
          LaunchPassShaped<kQ6_K, B>(shape, w, x, first, y, accumulate, overlap_previous, stream);
    } else {
      error =
          LaunchPassShaped<kQ8_0, B>(shape, w, x, first, y, accumulate, overlap_previous, stream);
    }
  });
  if (error != cudaSuccess) return error;
  return cudaGetLastError();
}

}  // namespace

size_t Q8ActivationBytes(int64_t n_tokens, int64_t cols) {
  const auto n = static_cast<size_t>(n_tokens * cols);
  return Align256(n) + Align256(n / 32 * sizeof(float)) + Align256(n / 16 * sizeof(float));
}

Q8Activations Q8ActivationsIn(void* buffer, int64_t n_tokens, int64_t cols) {
  const auto n = static_cast<size_t>(n_tokens * cols);
  auto* base = static_cast<uint8_t*>(buffer);
  Q8Activations a;
  a.q = reinterpret_cast<int8_t*>(base);
  a.scale = reinterpret_cast<float*>(base + Align256(n));
  a.half_sums = reinterpret_cast<float*>(base + Align256(n) + Align256(n / 32 * sizeof(float)));
  return a;
}

cudaError_t LaunchQuantizeActivations(const float* x, int n_tokens, int64_t cols, Q8Activations out,
                                      cudaStream_t stream, bool overlap_previous) {
  if (n_tokens <= 0 || cols <= 0 || cols % 32 != 0) return cudaErrorInvalidValue;
  const int64_t n_blocks = n_tokens * cols / 32;
  const auto grid = static_cast<unsigned>((n_blocks + kRoundWarps - 1) / kRoundWarps);
  return LaunchAfterPrevious(overlap_previous, QuantizeActivationsKernel, dim3(grid),
                             dim3(kRoundWarps * 32), 0, stream, x, n_blocks, out.q, out.scale,
                             out.half_sums);
}

cudaError_t LaunchRmsNormQuantize(const float* x, const float* weight, int64_t n, int n_rows,
                                  float eps, float* y, Q8Activations out, cudaStream_t stream,
                                  bool overlap_previous) {
  if (n_rows <= 0 || n <= 0 || n % 32 != 0) return cudaErrorInvalidValue;
  const int64_t slices = (n / 32 + kNormThreads / 32 - 1) / (kNormThreads / 32);
  const dim3 grid(static_cast<unsigned>(n_rows), static_cast<unsigned>(slices));
  return LaunchAfterPrevious(overlap_previous, RmsNormQuantizeKernel, grid, dim3(kNormThreads), 0,
                             stream, x, weight, n, eps, y, out.q, out.scale, out.half_sums);
}

cudaError_t LaunchRmsNormRoundDeferred(const float* x, const float* weight, int64_t n,
                                       Q8Activations out, double* sum_squares, cudaStream_t stream,
                                       bool overlap_previous) {
  if (n <= 0 || n % 32 != 0 || sum_squares == nullptr) return cudaErrorInvalidValue;
  const int64_t n_blocks = n / 32;
  const auto grid = static_cast<unsigned>((n_blocks + kRoundWarps - 1) / kRoundWarps);
  return LaunchAfterPrevious(overlap_previous, RmsNormRoundDeferredKernel, dim3(grid),
                             dim3(kRoundWarps * 32), 0, stream, x, weight, n_blocks, out.q,
                             out.scale, out.half_sums, sum_squares);
}

cudaError_t LaunchSwiGluQuantize(float* gate, const float* up, int n_tokens, int64_t cols,
                                 Q8Activations out, cudaStream_t stream, bool overlap_previous) {
  if (n_tokens <= 0 || cols <= 0 || cols % 32 != 0) return cudaErrorInvalidValue;
  const int64_t n_blocks = n_tokens * cols / 32;
  const auto grid = static_cast<unsigned>((n_blocks + kRoundWarps - 1) / kRoundWarps);
  return LaunchAfterPrevious(overlap_previous, SwiGluQuantizeKernel, dim3(grid),
                             dim3(kRoundWarps * 32), 0, stream, gate, up, n_blocks, out.q,
                             out.scale, out.half_sums);
}

bool MatVecQ8Supports(uint32_t type, int64_t cols) {
  switch (type) {
    case kQ4_K:
    case kQ6_K:
      return cols > 0 && cols % 256 == 0;
    case kQ8_0:
      return cols > 0 && cols % 32 == 0;
    default:
      return false;
  }
}

cudaError_t LaunchMatVecQ8(const DeviceMatrix& w, const Q8Activations& x, int n_tokens, float* y,
                           bool accumulate, cudaStream_t stream, bool overlap_previous,
                           bool batch_invariant) {
  MatVecQ8Shape shape;
  shape.batch_invariant = batch_invariant;
  return LaunchGroup({&w, 1}, x, n_tokens, {&y, 1}, accumulate, overlap_previous, shape, stream);
}

cudaError_t LaunchMatVecQ8Shaped(const DeviceMatrix& w, const Q8Activations& x, int n_tokens,
                                 float* y, MatVecQ8Shape shape, cudaStream_t stream) {
  return LaunchGroup({&w, 1}, x, n_tokens, {&y, 1}, /*accumulate=*/false,
                     /*overlap_previous=*/false, shape, stream);
}

bool MatVecQ8ReadsDeferredRms(std::span<const DeviceMatrix> w) {
  if (w.empty()) return false;
  for (const DeviceMatrix& m : w) {
    if (!MatVecQ8Supports(m.type, m.cols) || m.cols != w[0].cols) return false;
  }
  size_t split = 1;
  while (split < w.size() && w[split].type == w[0].type) ++split;
  for (size_t i = split; i < w.size(); ++i) {
    if (w[i].type != w[split].type) return false;
  }
  return OneTypeReadsDeferredRms(w.first(split)) &&
         (split == w.size() || OneTypeReadsDeferredRms(w.subspan(split)));
}

bool MatVecQ8ResidualRmsRoundSupports(const DeviceMatrix& w) {
  return MatVecQ8Supports(w.type, w.cols) && w.rows > 0 && w.rows % 32 == 0 &&
         (Staged({&w, 1}) || GroupedSplit(w));
}

cudaError_t LaunchMatVecQ8ResidualRmsRound(const DeviceMatrix& w, const Q8Activations& x, float* y,
                                           const RmsRounding& next, cudaStream_t stream,
                                           bool overlap_previous) {
  if (!MatVecQ8ResidualRmsRoundSupports(w) || y == nullptr || next.weight == nullptr ||
      next.out.q == nullptr || next.out.scale == nullptr || next.out.half_sums == nullptr ||
      next.sum_squares == nullptr) {
    return cudaErrorInvalidValue;
  }
  float* const ys[1] = {y};
  const ResidualRmsFinish finish{
      y, next.weight, next.out.q, next.out.scale, next.out.half_sums, next.sum_squares};
  cudaError_t error = cudaSuccess;
  if (Staged({&w, 1})) {
    error = LaunchGrouped({&w, 1}, ys, x, finish, overlap_previous, stream);
  } else if (w.type == kQ4_K) {
    error = LaunchGroupedSplit<kQ4_K>(w, y, x, finish, overlap_previous, stream);
  } else if (w.type == kQ6_K) {
    error = LaunchGroupedSplit<kQ6_K>(w, y, x, finish, overlap_previous, stream);
  } else {
    error = LaunchGroupedSplit<kQ8_0>(w, y, x, finish, overlap_previous, stream);
  }
  return error != cudaSuccess ? error : cudaGetLastError();
}

bool MatVecQ8GateUpSwiGluSupports(const DeviceMatrix& gate, const DeviceMatrix& up) {
  const DeviceMatrix pair[2] = {gate, up};
  return MatVecQ8Supports(gate.type, gate.cols) && up.type == gate.type && up.cols == gate.cols &&
         up.rows == gate.rows && gate.rows > 0 && gate.rows % 32 == 0 && Staged(pair);
}

cudaError_t LaunchMatVecQ8GateUpSwiGlu(const DeviceMatrix& gate, const DeviceMatrix& up,
                                       const Q8Activations& x, float* gate_out, float* up_out,
                                       const Q8Activations& out, cudaStream_t stream,
                                       bool overlap_previous) {
  if (!MatVecQ8GateUpSwiGluSupports(gate, up) || gate_out == nullptr || up_out == nullptr ||
      out.q == nullptr || out.scale == nullptr || out.half_sums == nullptr) {
    return cudaErrorInvalidValue;
  }
  const DeviceMatrix pair[2] = {gate, up};
  float* const y[2] = {gate_out, up_out};
  const SwiGluFinish finish{gate_out, up_out, out.q, out.scale, out.half_sums};
  const cudaError_t error = LaunchGrouped(pair, y, x, finish, overlap_previous, stream);
  return error != cudaSuccess ? error : cudaGetLastError();
}

bool MatVecQ8QkvRopeSupports(std::span<const DeviceMatrix> wqkv, const RopeParams& rope,
                             const KvLayer& cache) {
  if (wqkv.size() != 3 || rope.head_dim <= 0 || rope.head_dim % 2 != 0 || rope.n_rot <= 0 ||
      rope.n_rot % 2 != 0 || rope.n_rot > rope.head_dim || rope.n_heads <= 0 ||
      cache.n_embd_kv <= 0 || cache.n_embd_kv % rope.head_dim != 0) {
    return false;
  }
  for (const DeviceMatrix& m : wqkv) {
    if (!MatVecQ8Supports(m.type, m.cols) || m.cols != wqkv[0].cols) return false;
  }
  const size_t split = wqkv[2].type == wqkv[0].type ? 3 : 2;
  return wqkv[1].type == wqkv[0].type &&
         wqkv[0].rows == static_cast<int64_t>(rope.n_heads) * rope.head_dim &&
         wqkv[1].rows == cache.n_embd_kv && wqkv[2].rows == cache.n_embd_kv &&
         Staged(wqkv.first(split)) && (split == wqkv.size() || Staged(wqkv.subspan(split)));
}

cudaError_t LaunchMatVecQ8QkvRope(std::span<const DeviceMatrix> wqkv, const Q8Activations& x,
                                  const MatVecQ8QkvRope& out, cudaStream_t stream,
                                  bool overlap_previous) {
  if (!MatVecQ8QkvRopeSupports(wqkv, out.rope, out.cache) || out.q == nullptr || out.k == nullptr ||
      out.v == nullptr || out.tokens == nullptr) {
    return cudaErrorInvalidValue;
  }
  float* const y[3] = {out.q, out.k, out.v};
  const size_t split = wqkv[2].type == wqkv[0].type ? 3 : 2;
  const cudaError_t error = LaunchStagedGroup(
      wqkv, split, x, y, QkvRopeStore{out, RopeThetaScale(out.rope)}, overlap_previous, stream);
  return error != cudaSuccess ? error : cudaGetLastError();
}

cudaError_t LaunchMatVecQ8Group(std::span<const DeviceMatrix> w, const Q8Activations& x,
                                int n_tokens, std::span<float* const> y, cudaStream_t stream,
                                bool overlap_previous, bool batch_invariant) {
  MatVecQ8Shape shape;
  shape.batch_invariant = batch_invariant;
  return LaunchGroup(w, x, n_tokens, y, /*accumulate=*/false, overlap_previous, shape, stream);
}

}  // namespace chord::cuda
