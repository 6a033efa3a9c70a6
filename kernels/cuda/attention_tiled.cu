// Tiled causal attention for prompt-shaped batches (attention.h,
// LaunchTiledAttention): 64 query rows of one slot and one head a block, the
// slot's keys and values in tiles of 64 positions through shared memory,
// products on tensor cores (wmma, half inputs, float accumulation).
#include "kernels/cuda/attention.h"

#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>

namespace chord::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kRows = kAttentionTileRows;  // query rows a block
constexpr int kKeys = 64;                  // positions a key/value tile
constexpr int kWarps = kRows / 16;         // 16 rows a warp
constexpr int kThreads = kWarps * 32;

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major>;
using FragKt = wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major>;
using FragV = wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major>;
using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Shared memory of a block. Row pitches are padded against bank conflicts
// and keep every wmma pointer 32-byte aligned. The output is staged through
// the key/value tiles' space once they are no longer needed.
template <int kD>
struct TileSmem {
  static constexpr int kHalfLd = kD + 8;      // q, k, v rows (halves)
  static constexpr int kScoreLd = kKeys + 4;  // s rows (floats)
  static constexpr int kProbLd = kKeys + 8;   // p rows (halves)
  static constexpr int kOutLd = kD + 4;       // staged output rows (floats)
  __half q[kRows * kHalfLd];
  __half k[kKeys * kHalfLd];
  __half v[kKeys * kHalfLd];
  float s[kRows * kScoreLd];
  __half p[kRows * kProbLd];

  __device__ float* out() { return reinterpret_cast<float*>(k); }
  static_assert(sizeof(float) * kRows * kOutLd <= 2 * sizeof(__half) * kKeys * kHalfLd);
};

// Positions [first, first + kKeys) of each src[t] (rows of the cache at this
// head's offset) into dst[t]; positions at or past kv_end as zeros (the cache
// there may hold anything, and a zero weight times NaN would still be NaN).
// Every load of a thread is issued before the first store to shared memory.
template <int kD, int kTiles>
__device__ void LoadKvTiles(const __half* const (&src)[kTiles], int64_t pitch, int first,
                            int kv_end, __half* const (&dst)[kTiles]) {
  constexpr int kChunks = kD / 8;  // 16-byte chunks a row
  constexpr int kPerThread = kKeys * kChunks / kThreads;
  static_assert(kKeys * kChunks % kThreads == 0);
  uint4 chunk[kTiles][kPerThread];
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int i = threadIdx.x + j * kThreads;
      const int pos = first + i / kChunks;
      chunk[t][j] =
          pos < kv_end
              ? __ldg(reinterpret_cast<const uint4*>(src[t] + pos * pitch + i % kChunks * 8))
              : make_uint4(0, 0, 0, 0);
    }
  }
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int i = threadIdx.x + j * kThreads;
      *reinterpret_cast<uint4*>(dst[t] + i / kChunks * TileSmem<kD>::kHalfLd + i % kChunks * 8) =
          chunk[t][j];
    }
  }
}

// This warp's 16 rows of S = Q K^T for the key tile in shared memory.
template <int kD>
__device__ void Scores(TileSmem<kD>& sm, int warp) {
  constexpr int kLd = TileSmem<kD>::kHalfLd;
  FragAcc acc[kKeys / 16];
#pragma unroll
  for (int j = 0; j < kKeys / 16; ++j) wmma::fill_fragment(acc[j], 0.0f);
#pragma unroll
  for (int d = 0; d < kD; d += 16) {
    FragA a;
    wmma::load_matrix_sync(a, sm.q + warp * 16 * kLd + d, kLd);
#pragma unroll
    for (int j = 0; j < kKeys / 16; ++j) {
      FragKt b;
      wmma::load_matrix_sync(b, sm.k + j * 16 * kLd + d, kLd);
      wmma::mma_sync(acc[j], a, b, acc[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < kKeys / 16; ++j) {
    wmma::store_matrix_sync(sm.s + warp * 16 * TileSmem<kD>::kScoreLd + j * 16, acc[j],
                            TileSmem<kD>::kScoreLd, wmma::mem_row_major);
  }
  __syncwarp();
}

template <int kD>
__global__ void __launch_bounds__(kThreads)
    TiledAttentionKernel(AttentionParams p, KvLayer cache, const float* __restrict__ q,
                         const TokenSlot* __restrict__ tokens,
                         const AttentionTile* __restrict__ tiles, float* __restrict__ out,
                         float scale) {
  using Smem = TileSmem<kD>;
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  Smem& sm = *reinterpret_cast<Smem*>(smem_bytes);
  const int head = blockIdx.x;
  // The last tiles of a prompt see the most positions: they start first.
  const AttentionTile tile = tiles[gridDim.y - 1 - blockIdx.y];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = p.n_heads / p.n_kv_heads;
  const int64_t kv_offset = static_cast<int64_t>(head / group) * kD;
  const int64_t row0 = static_cast<int64_t>(tile.slot) * cache.n_ctx;
  const __half* keys = static_cast<const __half*>(cache.keys) + row0 * cache.n_embd_kv + kv_offset;
  const __half* values =
      static_cast<const __half*>(cache.values) + row0 * cache.n_embd_kv + kv_offset;

  // Queries as half (rows past the tile: zeros at position -1, masked everywhere).
  constexpr int kChunks = kD / 8;
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    uint4 packed = make_uint4(0, 0, 0, 0);
    if (r < tile.count) {
      const float* src = q + (static_cast<int64_t>(tile.first + r) * p.n_heads + head) * kD + c * 8;
      const float4 lo = *reinterpret_cast<const float4*>(src);
      const float4 hi = *reinterpret_cast<const float4*>(src + 4);
      __half2* halves = reinterpret_cast<__half2*>(&packed);
      halves[0] = __floats2half2_rn(lo.x, lo.y);
      halves[1] = __floats2half2_rn(lo.z, lo.w);
      halves[2] = __floats2half2_rn(hi.x, hi.y);
      halves[3] = __floats2half2_rn(hi.z, hi.w);
    }
    *reinterpret_cast<uint4*>(sm.q + r * Smem::kHalfLd + c * 8) = packed;
  }
  const int n_kv_tiles = (tile.kv_end + kKeys - 1) / kKeys;
  const int64_t pitch = cache.n_embd_kv;

  // Exponentials by the hardware's approximation (__expf, a relative error
  // near 1e-6: far inside what rounding the weights to half loses).
  // Each row's statistics belong to two lanes of its warp, each of which
  // takes every other column of the row's scores (h, h + 2, ...); the two
  // halves meet by one shuffle, so a row's sums have one order whatever its
  // place in the tile. Rows past the tile stand at position -1 (all masked).
  const int row = warp * 16 + lane % 16, h = lane / 16;
  const int row_pos = row < tile.count ? tokens[tile.first + row].position : -1;
  const float* row_scores = sm.s + row * Smem::kScoreLd;
  float row_max = -INFINITY, row_sum = 0.0f;

  // Pass 1: each row's maximum score and sum of exponentials.
  for (int kt = 0; kt < n_kv_tiles; ++kt) {
    LoadKvTiles<kD, 1>({keys}, pitch, kt * kKeys, tile.kv_end, {sm.k});
    __syncthreads();
    Scores<kD>(sm, warp);
    const int visible = row_pos - kt * kKeys;  // columns 0..visible are not masked
    float tile_max = -INFINITY;
#pragma unroll
    for (int c = h; c < kKeys; c += 2) {
      if (c <= visible) tile_max = fmaxf(tile_max, row_scores[c] * scale);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 16));
    const float new_max = fmaxf(row_max, tile_max);
    const float base = new_max == -INFINITY ? 0.0f : new_max;  // nothing visible yet
    float e = 0.0f;
#pragma unroll
    for (int c = h; c < kKeys; c += 2) {
      if (c <= visible) e += __expf(row_scores[c] * scale - base);
    }
    e += __shfl_xor_sync(0xffffffffu, e, 16);
    row_sum = row_sum * __expf(row_max - base) + e;
    row_max = new_max;
    __syncthreads();
  }

  // Pass 2: the normalised weights times the values.
  const float inv = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
  __half* row_probs = sm.p + row * Smem::kProbLd;
  FragAcc acc[kD / 16];
#pragma unroll
  for (int n = 0; n < kD / 16; ++n) wmma::fill_fragment(acc[n], 0.0f);
  for (int kt = 0; kt < n_kv_tiles; ++kt) {
    LoadKvTiles<kD, 2>({keys, values}, pitch, kt * kKeys, tile.kv_end, {sm.k, sm.v});
    __syncthreads();
    Scores<kD>(sm, warp);
    const int visible = row_pos - kt * kKeys;
#pragma unroll
    for (int c = h; c < kKeys; c += 2) {
      const float w = c <= visible ? __expf(row_scores[c] * scale - row_max) * inv : 0.0f;
      row_probs[c] = __float2half_rn(w);
    }
    __syncwarp();
#pragma unroll
    for (int kk = 0; kk < kKeys; kk += 16) {
      FragA a;
      wmma::load_matrix_sync(a, sm.p + warp * 16 * Smem::kProbLd + kk, Smem::kProbLd);
#pragma unroll
      for (int n = 0; n < kD / 16; ++n) {
        FragV b;
        wmma::load_matrix_sync(b, sm.v + kk * Smem::kHalfLd + n * 16, Smem::kHalfLd);
        wmma::mma_sync(acc[n], a, b, acc[n]);
      }
    }
    __syncthreads();
  }

  float* staged = sm.out();
#pragma unroll
  for (int n = 0; n < kD / 16; ++n) {
    wmma::store_matrix_sync(staged + warp * 16 * Smem::kOutLd + n * 16, acc[n], Smem::kOutLd,
                            wmma::mem_row_major);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < tile.count * (kD / 4); i += kThreads) {
    const int r = i / (kD / 4), c = i % (kD / 4);
    const float4 v = *reinterpret_cast<const float4*>(staged + r * Smem::kOutLd + c * 4);
    *reinterpret_cast<float4*>(
        out + (static_cast<int64_t>(tile.first + r) * p.n_heads + head) * kD + c * 4) = v;
  }
}

}  // namespace

std::vector<AttentionTile> PlanAttentionTiles(std::span<const TokenSlot> tokens) {
  std::vector<AttentionTile> tiles;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const TokenSlot& token = tokens[t];
    if (tiles.empty() || tiles.back().slot != token.slot ||
        tiles.back().count == kAttentionTileRows) {
      tiles.push_back({static_cast<int32_t>(t), 0, token.slot, 0});
    }
    AttentionTile& tile = tiles.back();
    ++tile.count;
    if (token.position + 1 > tile.kv_end) tile.kv_end = token.position + 1;
  }
  return tiles;
}

bool TiledAttentionSupports(const AttentionParams& params, const KvLayer& cache) {
  return cache.half && (params.head_dim == 64 || params.head_dim == 128) && params.n_kv_heads > 0 &&
         params.n_heads % params.n_kv_heads == 0;
}

cudaError_t LaunchTiledAttention(const AttentionParams& params, const KvLayer& cache,
                                 const float* q, const TokenSlot* tokens,
                                 const AttentionTile* tiles, int n_tiles, float* out,
                                 cudaStream_t stream) {
  if (n_tiles <= 0 || !TiledAttentionSupports(params, cache)) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(params.n_heads), static_cast<unsigned>(n_tiles));
  const float scale = 1.0f / std::sqrt(static_cast<float>(params.head_dim));
  const auto launch = [&]<int kD>() -> cudaError_t {
    auto* kernel = TiledAttentionKernel<kD>;
    constexpr int kBytes = static_cast<int>(sizeof(TileSmem<kD>));
    const cudaError_t error =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
    if (error != cudaSuccess) return error;
    kernel<<<grid, kThreads, kBytes, stream>>>(params, cache, q, tokens, tiles, out, scale);
    return cudaGetLastError();
  };
  return params.head_dim == 64 ? launch.operator()<64>() : launch.operator()<128>();
}

}  // namespace chord::cuda
