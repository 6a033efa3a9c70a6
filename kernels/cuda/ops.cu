#include "kernels/cuda/ops.h"

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/mma_order.cuh"
#include "kernels/cuda/rms_scale.cuh"
#include "kernels/cuda/rope_pair.cuh"

namespace chord::cuda {
namespace {

constexpr int kNormThreads = 512;

// RMSNorm of one row by a block (RmsScale), written back with 16-byte stores
// where the row allows; with `halves`, also as halves in mma order.
__device__ __forceinline__ void NormRow(const float* __restrict__ xr,
                                        const float* __restrict__ weight, int64_t n, float eps,
                                        float* __restrict__ yr, uint16_t* __restrict__ halves) {
  const bool float4s = RowOfFloat4s(xr, weight, n);
  const float scale = RmsScale<kNormThreads>(xr, n, eps, float4s);
  if (float4s && reinterpret_cast<uintptr_t>(yr) % 16 == 0) {
    const auto* x4 = reinterpret_cast<const float4*>(xr);
    const auto* w4 = reinterpret_cast<const float4*>(weight);
    auto* y4 = reinterpret_cast<float4*>(yr);
    auto* h4 = reinterpret_cast<uint2*>(halves);
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
      const float4 v = x4[i], g = w4[i];
      const float4 out =
          make_float4(v.x * scale * g.x, v.y * scale * g.y, v.z * scale * g.z, v.w * scale * g.w);
      y4[i] = out;
      if (h4 != nullptr) h4[i] = HalvesInMmaOrder(out);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float out = xr[i] * scale * weight[i];
      yr[i] = out;
      if (halves != nullptr) halves[MmaOrderIndex(i)] = __half_as_ushort(__float2half_rn(out));
    }
  }
}

__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const float* __restrict__ x, const float* __restrict__ weight, int64_t n,
                  float eps, float* __restrict__ y, uint16_t* __restrict__ halves) {
  LetNextKernelStart();
  WaitForPreviousKernel();
  NormRow(x + blockIdx.x * n, weight, n, eps, y + blockIdx.x * n,
          halves == nullptr ? nullptr : halves + blockIdx.x * n);
}

// x (+)= the partial sums, in order, element i of row r at
// parts.first + k * parts.stride + r * n + i.
__device__ __forceinline__ float AddParts(float x, const PartialSums& parts, int64_t index) {
  for (int k = 0; k < parts.count; ++k) x += parts.first[k * parts.stride + index];
  return x;
}

// Partial sums a launch of AddRmsNormKernel loads at once per element: the
// most a product splits K into.
constexpr int kMostParts = 8;

// The row's residual sum first (x += partial sums: what the product left),
// then its RMSNorm. One block a row, so each thread has several elements:
// whole float4 rows load every part of an element group before adding any
// (one memory round trip, not one a part).
__global__ void __launch_bounds__(kNormThreads)
    AddRmsNormKernel(float* __restrict__ x, PartialSums add, const float* __restrict__ weight,
                     int64_t n, float eps, float* __restrict__ y, uint16_t* __restrict__ halves) {
  LetNextKernelStart();
  WaitForPreviousKernel();
  float* xr = x + blockIdx.x * n;
  const int64_t offset = blockIdx.x * n;
  const bool float4s =
      n % 4 == 0 && add.count <= kMostParts && add.stride % 4 == 0 &&
      (reinterpret_cast<uintptr_t>(xr) | reinterpret_cast<uintptr_t>(add.first)) % 16 == 0;
  if (float4s) {
    auto* x4 = reinterpret_cast<float4*>(xr);
    const auto* parts = reinterpret_cast<const float4*>(add.first + offset);
    for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
      float4 part[kMostParts];
#pragma unroll
      for (int k = 0; k < kMostParts; ++k) {
        if (k < add.count) part[k] = parts[k * (add.stride / 4) + i];
      }
      float4 sum = x4[i];
#pragma unroll
      for (int k = 0; k < kMostParts; ++k) {
        if (k < add.count) {
          sum = make_float4(sum.x + part[k].x, sum.y + part[k].y, sum.z + part[k].z,
                            sum.w + part[k].w);
        }
      }
      x4[i] = sum;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) xr[i] = AddParts(xr[i], add, offset + i);
  }
  __syncthreads();  // the block reads its row back
  NormRow(xr, weight, n, eps, y + offset, halves == nullptr ? nullptr : halves + offset);
}

__global__ void AddPartialSumsKernel(PartialSums add, int64_t n, float* __restrict__ y) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = AddParts(y[i], add, i);
}

// Rows of n_heads heads a RoPE launch rotates.
struct RopeTarget {
  float* x;
  int n_heads;
};

__device__ __forceinline__ float2 RotatedPair(const float* head, int pair, int position,
                                              const RopeParams& p, float theta_scale) {
  return RotatedPair(make_float2(head[2 * pair], head[2 * pair + 1]), pair, position, p,
                     theta_scale);
}

// Elements i, i + 1 of a vector held as partial sums, added in order.
__device__ __forceinline__ float2 PairOfParts(const PartialSums& parts, int64_t i) {
  float2 sum = make_float2(0.0f, 0.0f);
  for (int k = 0; k < parts.count; ++k) {
    const float2 v = *reinterpret_cast<const float2*>(parts.first + k * parts.stride + i);
    sum = make_float2(sum.x + v.x, sum.y + v.y);
  }
  return sum;
}

// One thread per (token, head, pair) of target a, then of target b.
__global__ void RopeKernel(RopeTarget a, RopeTarget b, int n_tokens,
                           const TokenSlot* __restrict__ tokens, RopeParams p, float theta_scale) {
  const int pairs = p.n_rot / 2;
  int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t in_a = static_cast<int64_t>(n_tokens) * a.n_heads * pairs;
  const bool second = id >= in_a;
  const RopeTarget t = second ? b : a;
  if (second) id -= in_a;
  if (id >= static_cast<int64_t>(n_tokens) * t.n_heads * pairs) return;
  const int pair = static_cast<int>(id % pairs);
  const int64_t head_row = id / pairs;  // token * n_heads + head
  const int token = static_cast<int>(head_row / t.n_heads);
  float* head = t.x + head_row * p.head_dim;
  const float2 r = RotatedPair(head, pair, tokens[token].position, p, theta_scale);
  head[2 * pair] = r.x;
  head[2 * pair + 1] = r.y;
}

// One thread per (token, head, rotated pair) of the queries, then per (token,
// kv head, pair of head_dim) of the keys and values: a key pair is rotated
// (those past n_rot are not) and stored with its value pair at the token's
// cache row. Each stored key is the one LaunchRope writes to k, which keeps
// it too.
// One thread per (token, query head, pair), then per (token, kv head, pair).
// q, k and v are read as partial sums (one part: the vectors themselves).
__global__ void RopeStoreKvKernel(PartialSums q_in, PartialSums k_in, PartialSums v_in,
                                  float* __restrict__ q, float* __restrict__ k, int n_k_heads,
                                  int n_tokens, const TokenSlot* __restrict__ tokens, RopeParams p,
                                  float theta_scale, KvLayer cache) {
  LetNextKernelStart();
  // The batch's slots and positions were written before the step's first
  // kernel: read before the wait.
  const int rot_pairs = p.n_rot / 2, head_pairs = p.head_dim / 2;
  int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t in_q = static_cast<int64_t>(n_tokens) * p.n_heads * head_pairs;
  if (id < in_q) {
    const int pair = static_cast<int>(id % head_pairs);
    const int64_t head_row = id / head_pairs;
    const int position = tokens[head_row / p.n_heads].position;
    WaitForPreviousKernel();
    const int64_t at = head_row * p.head_dim + 2 * pair;
    float2 value = PairOfParts(q_in, at);
    if (pair < rot_pairs) value = RotatedPair(value, pair, position, p, theta_scale);
    *reinterpret_cast<float2*>(q + at) = value;
    return;
  }
  id -= in_q;
  if (id >= static_cast<int64_t>(n_tokens) * n_k_heads * head_pairs) return;
  const int pair = static_cast<int>(id % head_pairs);
  const int64_t head_row = id / head_pairs;  // token * n_k_heads + kv head
  const auto token = static_cast<int>(head_row / n_k_heads);
  const TokenSlot at = tokens[token];
  WaitForPreviousKernel();
  const int64_t src = head_row * p.head_dim + 2 * pair;  // = token * n_embd_kv + element
  float2 key = PairOfParts(k_in, src);
  if (pair < rot_pairs) key = RotatedPair(key, pair, at.position, p, theta_scale);
  *reinterpret_cast<float2*>(k + src) = key;
  const float2 value = PairOfParts(v_in, src);
  const int64_t row = static_cast<int64_t>(at.slot) * cache.n_ctx + at.position;
  const int64_t dst = row * cache.n_embd_kv + (src - static_cast<int64_t>(token) * cache.n_embd_kv);
  StoreCachePair(cache, cache.keys, dst, key);
  StoreCachePair(cache, cache.values, dst, value);
}

__device__ __forceinline__ float SwiGlu(float g, float u) { return (g / (1.0f + expf(-g))) * u; }

__global__ void SwiGluKernel(float* __restrict__ gate, const float* __restrict__ up, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  gate[i] = SwiGlu(gate[i], up[i]);
}

// The value at element i (of four at once) of a PartialSums.
__device__ __forceinline__ float4 SumOfParts(const PartialSums& p, int64_t group) {
  const auto* parts = reinterpret_cast<const float4*>(p.first);
  float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int k = 0; k < p.count; ++k) {
    const float4 v = parts[k * (p.stride / 4) + group];
    sum = make_float4(sum.x + v.x, sum.y + v.y, sum.z + v.z, sum.w + v.w);
  }
  return sum;
}

// Four elements a thread: silu(gate) * up from their partial sums, stored as
// halves in mma order.
__global__ void SwiGluHalvesKernel(PartialSums gate, PartialSums up, int64_t groups,
                                   uint2* __restrict__ out) {
  LetNextKernelStart();
  WaitForPreviousKernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= groups) return;
  const float4 g = SumOfParts(gate, i), u = SumOfParts(up, i);
  out[i] = HalvesInMmaOrder(
      make_float4(SwiGlu(g.x, u.x), SwiGlu(g.y, u.y), SwiGlu(g.z, u.z), SwiGlu(g.w, u.w)));
}

__global__ void FloatToHalfKernel(const float* __restrict__ x, int64_t n,
                                  __half* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2half(x[i]);
}

// Grid (token, chunk of 256 elements): a row spreads over many blocks, so
// one token's store is not a single block's serial loop.
__global__ void StoreKvKernel(KvLayer layer, const float* __restrict__ k,
                              const float* __restrict__ v, const TokenSlot* __restrict__ tokens) {
  const int t = blockIdx.x;
  const int i = static_cast<int>(blockIdx.y * blockDim.x + threadIdx.x);
  if (i >= layer.n_embd_kv) return;
  const int64_t row = static_cast<int64_t>(tokens[t].slot) * layer.n_ctx + tokens[t].position;
  const int64_t dst = row * layer.n_embd_kv + i;
  const int64_t src = static_cast<int64_t>(t) * layer.n_embd_kv + i;
  if (layer.half) {
    static_cast<__half*>(layer.keys)[dst] = __float2half(k[src]);
    static_cast<__half*>(layer.values)[dst] = __float2half(v[src]);
  } else {
    static_cast<float*>(layer.keys)[dst] = k[src];
    static_cast<float*>(layer.values)[dst] = v[src];
  }
}

constexpr int kGreedyThreads = 512;

// A candidate of the greedy choice: the largest logit of a range of ids, the
// lowest id among equal ones, NaNs skipped (valid: one was found).
struct Greedy {
  float value;
  int32_t id;
  bool valid;
};

// The better of a (lower ids) and b (higher ids), as the sequential scan
// would leave it.
__device__ __forceinline__ Greedy Better(const Greedy& a, const Greedy& b) {
  if (!b.valid) return a;
  if (!a.valid || b.value > a.value || (b.value == a.value && b.id < a.id)) return b;
  return a;
}

// One block per row: each thread scans ids thread, thread + 512, ... then
// the block reduces. Entry 0 a NaN: the scan never moves off it, so 0.
__global__ void __launch_bounds__(kGreedyThreads)
    GreedyTokensKernel(const float* __restrict__ logits, int64_t n_vocab,
                       int32_t* __restrict__ tokens) {
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * n_vocab;
  Greedy best{0.0f, 0, false};
  for (int64_t id = threadIdx.x; id < n_vocab; id += kGreedyThreads) {
    const float v = row[id];
    if (!isnan(v)) best = Better(best, Greedy{v, static_cast<int32_t>(id), true});
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const Greedy other{__shfl_down_sync(0xffffffffu, best.value, offset),
                       __shfl_down_sync(0xffffffffu, best.id, offset),
                       __shfl_down_sync(0xffffffffu, best.valid, offset) != 0};
    best = Better(best, other);
  }
  __shared__ Greedy warps[kGreedyThreads / 32];
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = best;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kGreedyThreads / 32; ++w) best = Better(best, warps[w]);
  tokens[blockIdx.x] = isnan(row[0]) || !best.valid ? 0 : best.id;
}

unsigned Blocks(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace

cudaError_t LaunchRmsNorm(const float* x, const float* weight, int64_t n, int n_rows, float eps,
                          float* y, cudaStream_t stream, uint16_t* halves_in_mma_order,
                          bool overlap_previous) {
  if (n_rows <= 0 || (halves_in_mma_order != nullptr && n % 4 != 0)) return cudaErrorInvalidValue;
  return LaunchAfterPrevious(overlap_previous, RmsNormKernel, dim3(n_rows), dim3(kNormThreads), 0,
                             stream, x, weight, n, eps, y, halves_in_mma_order);
}

cudaError_t LaunchRope(float* q, float* k, int n_k_heads, int n_tokens, const TokenSlot* tokens,
                       const RopeParams& params, cudaStream_t stream) {
  if (n_tokens <= 0 || params.n_rot <= 0 || params.n_rot % 2 != 0 ||
      params.n_rot > params.head_dim || n_k_heads < 0 || (k == nullptr && n_k_heads > 0)) {
    return cudaErrorInvalidValue;
  }
  const float theta_scale = RopeThetaScale(params);
  const int64_t total =
      static_cast<int64_t>(n_tokens) * (params.n_heads + n_k_heads) * (params.n_rot / 2);
  RopeKernel<<<Blocks(total, 256), 256, 0, stream>>>(RopeTarget{q, params.n_heads},
                                                     RopeTarget{k, n_k_heads}, n_tokens, tokens,
                                                     params, theta_scale);
  return cudaGetLastError();
}

cudaError_t LaunchGreedyTokens(const float* logits, int n_rows, int64_t n_vocab, int32_t* tokens,
                               cudaStream_t stream) {
  if (n_rows <= 0 || n_vocab <= 0 || logits == nullptr || tokens == nullptr) {
    return cudaErrorInvalidValue;
  }
  GreedyTokensKernel<<<n_rows, kGreedyThreads, 0, stream>>>(logits, n_vocab, tokens);
  return cudaGetLastError();
}

float RopeThetaScale(const RopeParams& params) {
  return powf(params.freq_base, -2.0f / static_cast<float>(params.n_rot));
}

cudaError_t LaunchRopeStoreKv(const PartialSums& q_in, const PartialSums& k_in,
                              const PartialSums& v_in, float* q, float* k, int n_k_heads,
                              int n_tokens, const TokenSlot* tokens, const RopeParams& params,
                              const KvLayer& cache, cudaStream_t stream, bool overlap_previous) {
  const int64_t q_size = static_cast<int64_t>(n_tokens) * params.n_heads * params.head_dim;
  const int64_t kv_size = static_cast<int64_t>(n_tokens) * cache.n_embd_kv;
  const auto valid = [](const PartialSums& p, int64_t size) {
    return p.first != nullptr && p.count >= 1 && (p.count == 1 || p.stride >= size) &&
           p.stride % 2 == 0 && reinterpret_cast<uintptr_t>(p.first) % 8 == 0;
  };
  if (n_tokens <= 0 || params.n_rot <= 0 || params.n_rot % 2 != 0 ||
      params.n_rot > params.head_dim || params.head_dim % 2 != 0 || n_k_heads <= 0 ||
      q == nullptr || k == nullptr || !valid(q_in, q_size) || !valid(k_in, kv_size) ||
      !valid(v_in, kv_size) ||
      static_cast<int64_t>(n_k_heads) * params.head_dim != cache.n_embd_kv) {
    return cudaErrorInvalidValue;
  }
  const float theta_scale = RopeThetaScale(params);
  const int64_t total = static_cast<int64_t>(n_tokens) *
                        (static_cast<int64_t>(params.n_heads) + n_k_heads) * (params.head_dim / 2);
  return LaunchAfterPrevious(overlap_previous, RopeStoreKvKernel, dim3(Blocks(total, 256)),
                             dim3(256), 0, stream, q_in, k_in, v_in, q, k, n_k_heads, n_tokens,
                             tokens, params, theta_scale, cache);
}

cudaError_t LaunchRopeStoreKv(float* q, float* k, const float* v, int n_k_heads, int n_tokens,
                              const TokenSlot* tokens, const RopeParams& params,
                              const KvLayer& cache, cudaStream_t stream, bool overlap_previous) {
  return LaunchRopeStoreKv({q, 1, 0}, {k, 1, 0}, {v, 1, 0}, q, k, n_k_heads, n_tokens, tokens,
                           params, cache, stream, overlap_previous);
}

cudaError_t LaunchRope(float* x, int n_tokens, const TokenSlot* tokens, const RopeParams& params,
                       cudaStream_t stream) {
  return LaunchRope(x, nullptr, 0, n_tokens, tokens, params, stream);
}

cudaError_t LaunchAddRmsNorm(float* x, const PartialSums& add, const float* weight, int64_t n,
                             int n_rows, float eps, float* y, cudaStream_t stream,
                             uint16_t* halves_in_mma_order, bool overlap_previous) {
  if (n_rows <= 0 || add.first == nullptr || add.count < 1 ||
      (add.count > 1 && add.stride < n * n_rows) ||
      (halves_in_mma_order != nullptr && n % 4 != 0)) {
    return cudaErrorInvalidValue;
  }
  return LaunchAfterPrevious(overlap_previous, AddRmsNormKernel, dim3(n_rows), dim3(kNormThreads),
                             0, stream, x, add, weight, n, eps, y, halves_in_mma_order);
}

cudaError_t LaunchAddPartialSums(const PartialSums& add, int64_t n, float* y, cudaStream_t stream) {
  if (n <= 0 || add.first == nullptr || add.count < 1 || (add.count > 1 && add.stride < n) ||
      y == nullptr) {
    return cudaErrorInvalidValue;
  }
  AddPartialSumsKernel<<<Blocks(n, 256), 256, 0, stream>>>(add, n, y);
  return cudaGetLastError();
}

cudaError_t LaunchSwiGlu(float* gate, const float* up, int64_t n, cudaStream_t stream) {
  SwiGluKernel<<<Blocks(n, 256), 256, 0, stream>>>(gate, up, n);
  return cudaGetLastError();
}

cudaError_t LaunchSwiGluHalves(const PartialSums& gate, const PartialSums& up, int64_t n,
                               uint16_t* halves_in_mma_order, cudaStream_t stream,
                               bool overlap_previous) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const auto valid = [&](const PartialSums& p) {
    return p.first != nullptr && aligned(p.first) && p.count >= 1 &&
           (p.count == 1 || (p.stride >= n && p.stride % 4 == 0));
  };
  if (n <= 0 || n % 4 != 0 || !valid(gate) || !valid(up) || halves_in_mma_order == nullptr ||
      !aligned(halves_in_mma_order)) {
    return cudaErrorInvalidValue;
  }
  return LaunchAfterPrevious(overlap_previous, SwiGluHalvesKernel, dim3(Blocks(n / 4, 256)),
                             dim3(256), 0, stream, gate, up, n / 4,
                             reinterpret_cast<uint2*>(halves_in_mma_order));
}

cudaError_t LaunchFloatToHalf(const float* x, int64_t n, uint16_t* out, cudaStream_t stream) {
  FloatToHalfKernel<<<Blocks(n, 256), 256, 0, stream>>>(x, n, reinterpret_cast<__half*>(out));
  return cudaGetLastError();
}

cudaError_t LaunchStoreKv(const KvLayer& layer, const float* k, const float* v, int n_tokens,
                          const TokenSlot* tokens, cudaStream_t stream) {
  if (n_tokens <= 0) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(n_tokens), Blocks(layer.n_embd_kv, 256));
  StoreKvKernel<<<grid, 256, 0, stream>>>(layer, k, v, tokens);
  return cudaGetLastError();
}

}  // namespace chord::cuda
