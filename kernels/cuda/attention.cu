#include "kernels/cuda/attention.h"

#include <cuda_fp16.h>

#include <cmath>
#include <type_traits>

#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/mma_order.cuh"
#include "kernels/cuda/round_block.cuh"

namespace chord::cuda {
namespace {

// Warps per (head, token), each taking its own positions: 16 for decode-sized
// grids (the chain of per-position dot products a warp walks is a quarter as
// long: llama2-7b batch-1 decode 312 -> 361 tok/s), 4 for large ones (prefill
// of 512 tokens lost 10% with 16).
constexpr int kDecodeWarps = 16;
constexpr int kPrefillWarps = 4;
constexpr int kDecodeMaxBlocks = 512;  // (head, token) pairs that still get kDecodeWarps
constexpr int kMaxHeadDim = 256;
// Cache rows are read in chunks of 16 bytes (or of one element where
// head_dim is not a multiple of 16 bytes); a lane holds at most 8 floats of a
// row (one chunk of halves or two of floats at head_dim 256).
constexpr int kLaneFloats = 8;
// Steps of positions a warp has in flight at once (each step: every lane one
// chunk): at 4 a warp keeps 2 KB of loads outstanding.
constexpr int kUnroll = 4;

// How a warp's 32 lanes cover cache rows of `chunks` chunks:
// `lanes` (a power of two) share a row, `per_warp` rows side by side,
// `per_lane` chunks each lane takes (lane + i * lanes).
struct RowLayout {
  int chunks, lanes, per_warp, per_lane;
};

__host__ __device__ inline RowLayout MakeRowLayout(int chunks) {
  int lanes = 1;
  while (lanes < chunks && lanes < 32) lanes *= 2;
  return {chunks, lanes, 32 / lanes, (chunks + lanes - 1) / lanes};
}

// A chunk of kElements cache elements: one 16-byte load, or one element.
template <typename T, int kElements>
struct Chunk {
  using Raw = std::conditional_t<kElements == 1, T, uint4>;
  static_assert(kElements == 1 || kElements * sizeof(T) == sizeof(uint4));

  static __device__ __forceinline__ Raw Load(const T* p) {
    return __ldg(reinterpret_cast<const Raw*>(p));
  }
  static __device__ __forceinline__ Raw Zero() {
    if constexpr (kElements == 1) {
      return T(0.0f);
    } else {
      return make_uint4(0, 0, 0, 0);
    }
  }
  static __device__ __forceinline__ void ToFloats(const Raw& raw, float* out) {
    if constexpr (kElements == 1) {
      if constexpr (sizeof(T) == 2) {
        out[0] = __half2float(raw);
      } else {
        out[0] = raw;
      }
    } else if constexpr (sizeof(T) == 2) {
      const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
      }
    } else {
      out[0] = __uint_as_float(raw.x);
      out[1] = __uint_as_float(raw.y);
      out[2] = __uint_as_float(raw.z);
      out[3] = __uint_as_float(raw.w);
    }
  }
};

// Blocks an SM a shape is compiled for (registers held to 65536 / (blocks x
// threads)). Holding a pass's keys and values takes 80 registers at 16 warps:
// a grid that fits the SMs once (one-token decode) keeps them, larger decode
// grids measured faster at two blocks an SM (8 sequences: 1,910 -> 1,990
// tok/s, 64 registers) and large ones (4 warps) at eight (64 sequences:
// 8,950 -> 9,010). Only the half cache's 16-byte chunks: the float and
// one-element shapes would spill.
template <typename T, int kChunk>
constexpr int AttentionMinBlocks(int wanted) {
  return sizeof(T) == 2 && kChunk == 8 ? wanted : 1;
}

// One block per (head, token). Positions go to warps in steps of
// `per_warp` rows (warp w takes steps w, w + kWarps, ...), a pass of kUnroll
// steps whose keys and values are all loaded before any is used. Each warp
// keeps the softmax of its own positions in the online form (a running
// maximum, the sum of exponentials and the weighted values, rescaled when the
// maximum grows), and the warps' parts meet once, in shared memory, in warp order:
// every sum has an order fixed by head_dim and kWarps alone, so a token's
// result does not depend on the rest of the batch. With `rounded.q` set, the
// head's output is also rounded for the next product (head_dim a multiple of
// 32: each warp rounds whole 32-element blocks). Before the wait for the
// previous kernel, where each token is its slot's only one
// (p.one_token_per_slot), the first pass's rows older than the token's own
// (stored by earlier steps) are loaded; with `prefetch` (small grids), the
// other rows are requested into L2.
template <typename T, int kWarps, int kChunk, int kBlocksPerSm>
__global__ void __launch_bounds__(kWarps * 32, AttentionMinBlocks<T, kChunk>(kBlocksPerSm))
    AttentionKernel(AttentionParams p, KvLayer cache, const float* __restrict__ q,
                    const TokenSlot* __restrict__ tokens, float* __restrict__ out, float scale,
                    Q8Activations rounded, uint16_t* __restrict__ halves, bool prefetch) {
  LetNextKernelStart();
  using C = Chunk<T, kChunk>;
  using Raw = typename C::Raw;
  constexpr int kMaxPerLane = kLaneFloats / kChunk;
  __shared__ float partial_out[kWarps][kMaxHeadDim];
  __shared__ float warp_max[kWarps];
  __shared__ double warp_sum[kWarps];
  const int head = blockIdx.x, t = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const RowLayout layout = MakeRowLayout(p.head_dim / kChunk);
  const int sub = lane / layout.lanes, part = lane % layout.lanes;
  // Until the wait below, only what was written before the step's first
  // kernel is read: the batch's slots and positions, and the cache rows of
  // earlier steps.
  const TokenSlot token = tokens[t];
  const int n_kv = token.position + 1;
  const int group = p.n_heads / p.n_kv_heads;
  const int64_t kv_offset = static_cast<int64_t>(head / group) * p.head_dim;
  const int64_t row0 = static_cast<int64_t>(token.slot) * cache.n_ctx;
  const T* keys = static_cast<const T*>(cache.keys) + row0 * cache.n_embd_kv + kv_offset;
  const T* values = static_cast<const T*>(cache.values) + row0 * cache.n_embd_kv + kv_offset;
  const float* qh = q + (static_cast<int64_t>(t) * p.n_heads + head) * p.head_dim;
  const int positions_per_pass = kWarps * kUnroll * layout.per_warp;
  const int first = (warp * kUnroll) * layout.per_warp + sub;
  const auto position = [&](int pass, int u) { return pass + first + u * layout.per_warp; };
  // Rows stored before this step's first kernel: all but the token's own
  // where the token is its slot's only one, else none known.
  const int settled = p.one_token_per_slot ? n_kv - 1 : 0;

  bool chunk_valid[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    chunk_valid[i] = i < layout.per_lane && part + i * layout.lanes < layout.chunks;
  }
  // The lane's chunks of the pass's positions in [from, to) into k and v.
  const auto load_pass = [&](int pass, int from, int to, Raw(&k)[kUnroll][kMaxPerLane],
                             Raw(&v)[kUnroll][kMaxPerLane]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int pos = position(pass, u);
      if (pos < from || pos >= to) continue;
      const int64_t row = static_cast<int64_t>(pos) * cache.n_embd_kv;
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i) {
        if (!chunk_valid[i]) continue;
        const int64_t at = row + (part + i * layout.lanes) * kChunk;
        k[u][i] = C::Load(keys + at);
        v[u][i] = C::Load(values + at);
      }
    }
  };
  // Zeros where a pass has no position or a lane no chunk.
  Raw k_raw[kUnroll][kMaxPerLane], v_raw[kUnroll][kMaxPerLane];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) k_raw[u][i] = v_raw[u][i] = C::Zero();
  }
  load_pass(0, 0, settled, k_raw, v_raw);
  // The lane's other cache chunks into L2 while the kernel before still
  // runs, where the grid is small enough for them to stay there (decode of a
  // few sequences): the loads below then wait on L2, not on memory. (The
  // newest row is being stored by that kernel; the stores land in L2, which
  // these requests only fill, and the lane reads the row only after the wait.)
  for (int pass = 0; prefetch && pass < n_kv; pass += positions_per_pass) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int pos = position(pass, u);
      if (pos >= n_kv || (pass == 0 && pos < settled)) continue;
      const int64_t row = static_cast<int64_t>(pos) * cache.n_embd_kv;
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i) {
        if (!chunk_valid[i]) continue;
        const int64_t at = row + (part + i * layout.lanes) * kChunk;
        asm volatile("prefetch.global.L2 [%0];" ::"l"(keys + at));
        asm volatile("prefetch.global.L2 [%0];" ::"l"(values + at));
      }
    }
  }
  WaitForPreviousKernel();

  float qreg[kMaxPerLane][kChunk];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int c = part + i * layout.lanes;
#pragma unroll
    for (int e = 0; e < kChunk; ++e) qreg[i][e] = chunk_valid[i] ? qh[c * kChunk + e] : 0.0f;
  }
  load_pass(0, settled, n_kv, k_raw, v_raw);

  // The warp's running maximum; the lane's sum of exponentials and weighted
  // values over its row's positions (the rows side by side meet at the end).
  float max = -INFINITY;
  double sum = 0.0;
  float acc[kMaxPerLane][kChunk];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) acc[i][e] = 0.0f;
  }
  for (int pass = 0; pass < n_kv; pass += positions_per_pass) {
    if (pass > 0) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int i = 0; i < kMaxPerLane; ++i) k_raw[u][i] = v_raw[u][i] = C::Zero();
      }
      load_pass(pass, 0, n_kv, k_raw, v_raw);
    }
    float dots[kUnroll];
    float pass_max = -INFINITY;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i) {
        float k[kChunk];
        C::ToFloats(k_raw[u][i], k);
#pragma unroll
        for (int e = 0; e < kChunk; ++e) dot += qreg[i][e] * k[e];
      }
      for (int offset = layout.lanes / 2; offset > 0; offset /= 2) {
        dot += __shfl_xor_sync(0xffffffffu, dot, offset);
      }
      dots[u] = position(pass, u) < n_kv ? dot * scale : -INFINITY;
      pass_max = fmaxf(pass_max, dots[u]);
    }
    for (int offset = layout.lanes; offset < 32; offset *= 2) {
      pass_max = fmaxf(pass_max, __shfl_xor_sync(0xffffffffu, pass_max, offset));
    }
    if (pass_max == -INFINITY) continue;  // the warp has no position in this pass
    if (pass_max > max) {
      const float correction = expf(max - pass_max);  // 0 from no position yet
      sum *= correction;
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i) {
#pragma unroll
        for (int e = 0; e < kChunk; ++e) acc[i][e] *= correction;
      }
      max = pass_max;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const float weight = expf(dots[u] - max);  // 0 past the token's position
      sum += weight;
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i) {
        float v[kChunk];
        C::ToFloats(v_raw[u][i], v);
#pragma unroll
        for (int e = 0; e < kChunk; ++e) acc[i][e] += weight * v[e];
      }
    }
  }
  // The rows side by side in a warp, then the warps in order.
  for (int offset = layout.lanes; offset < 32; offset *= 2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  }
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) {
      for (int offset = layout.lanes; offset < 32; offset *= 2) {
        acc[i][e] += __shfl_xor_sync(0xffffffffu, acc[i][e], offset);
      }
      if (sub == 0 && chunk_valid[i])
        partial_out[warp][(part + i * layout.lanes) * kChunk + e] = acc[i][e];
    }
  }
  if (lane == 0) {
    warp_max[warp] = max;
    warp_sum[warp] = sum;
  }
  __syncthreads();
  float block_max = warp_max[0];  // finite: warp 0 holds position 0
  for (int w = 1; w < kWarps; ++w) block_max = fmaxf(block_max, warp_max[w]);
  float factors[kWarps];
  double total_sum = 0.0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    factors[w] = expf(warp_max[w] - block_max);  // 0 for a warp with no position
    total_sum += warp_sum[w] * factors[w];
  }
  const float inv = static_cast<float>(1.0 / total_sum);
  const int64_t head_row = static_cast<int64_t>(t) * p.n_heads + head;
  float* oh = out + head_row * p.head_dim;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += partial_out[w][d] * factors[w];
    total *= inv;
    oh[d] = total;
    if (halves != nullptr) {
      halves[MmaOrderIndex(head_row * p.head_dim + d)] = __half_as_ushort(__float2half_rn(total));
    }
    if (rounded.q != nullptr) {
      RoundBlock(total, lane, (head_row * p.head_dim + d) / 32, rounded.q, rounded.scale,
                 rounded.half_sums);
    }
  }
}

}  // namespace

cudaError_t LaunchAttention(const AttentionParams& params, const KvLayer& cache, const float* q,
                            int n_tokens, const TokenSlot* tokens, float* out, cudaStream_t stream,
                            const Q8Activations& rounded, bool overlap_previous,
                            uint16_t* halves_in_mma_order) {
  if (n_tokens <= 0 || params.head_dim <= 0 || params.head_dim > kMaxHeadDim ||
      params.n_kv_heads <= 0 || params.n_heads % params.n_kv_heads != 0 ||
      (rounded.q != nullptr && params.head_dim % 32 != 0) ||
      (halves_in_mma_order != nullptr && params.head_dim % 4 != 0)) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(params.n_heads), static_cast<unsigned>(n_tokens));
  const float scale = 1.0f / std::sqrt(static_cast<float>(params.head_dim));
  const int64_t pairs = static_cast<int64_t>(n_tokens) * params.n_heads;
  const bool small = pairs <= kDecodeMaxBlocks;
  const bool decode = params.batch_invariant || small;
  // Exact mode keeps one shape for every batch (the same code, the same bits).
  const bool one_wave = !params.batch_invariant && pairs <= MultiprocessorCount();
  const auto launch = [&]<typename T, int kWarps, int kBlocksPerSm>() -> cudaError_t {
    constexpr int kVector = static_cast<int>(sizeof(uint4) / sizeof(T));
    auto* kernel = params.head_dim % kVector == 0
                       ? AttentionKernel<T, kWarps, kVector, kBlocksPerSm>
                       : AttentionKernel<T, kWarps, 1, kBlocksPerSm>;
    return LaunchAfterPrevious(overlap_previous, kernel, grid, dim3(kWarps * 32), 0, stream, params,
                               cache, q, tokens, out, scale, rounded, halves_in_mma_order, small);
  };
  const auto launch_type = [&]<typename T>() -> cudaError_t {
    if (!decode) return launch.template operator()<T, kPrefillWarps, 8>();
    return one_wave ? launch.template operator()<T, kDecodeWarps, 1>()
                    : launch.template operator()<T, kDecodeWarps, 2>();
  };
  const cudaError_t error =
      cache.half ? launch_type.operator()<__half>() : launch_type.operator()<float>();
  if (error != cudaSuccess) return error;
  return cudaGetLastError();
}

}  // namespace chord::cuda
