#include "kernels/cuda/ops.h"

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/mma_order.cuh"
#include "kernels/cuda/rms_scale.cuh"

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
    RmsNormKernel(const float* __restrict__ x, const float* __restrict__ weight, int64_t n, float eps,
                  float* __restrict__ y, uint16_t* __restrict__ halves) {
  NormRow(x + blockIdx.x * n, weight, n, eps, y + blockIdx.x * n,
          halves == nullptr ? nullptr : halves + blockIdx.x * n);
}

// x (+)= the partial sums, in order, element i of row r at
// parts.first + k * parts.stride + r * n + i.
__device__ __forceinline__ float AddParts(float x, const PartialSums& parts, int64_t index) {
  for (int k = 0; k < parts.count; ++k) x += parts.first[k * parts.stride + index];
  return x;
}

// The row's residual sum first (x += partial sums: what the product left),
// then its RMSNorm.
__global__ void __launch_bounds__(kNormThreads)
    AddRmsNormKernel(float* __restrict__ x, PartialSums add, const float* __restrict__ weight,
                     int64_t n, float eps, float* __restrict__ y, uint16_t* __restrict__ halves) {
  float* xr = x + blockIdx.x * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    xr[i] = AddParts(xr[i], add, blockIdx.x * n + i);
  }
  __syncthreads();  // the block reads its row back
  NormRow(xr, weight, n, eps, y + blockIdx.x * n,
          halves == nullptr ? nullptr : halves + blockIdx.x * n);
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

// Pair `pair` of a head's row rotated for `position`; the angle is advanced
// by repeated multiplication as the CPU path does, so both round alike.
__device__ __forceinline__ float2 RotatedPair(const float* head, int pair, int position,
                                              const RopeParams& p, float theta_scale) {
  float theta = static_cast<float>(position);
  for (int i = 0; i < pair; ++i) theta *= theta_scale;
  const float factor = p.freq_factors != nullptr ? p.freq_factors[pair] : 1.0f;
  const float angle = p.freq_scale * (theta / factor);
  float sin_theta, cos_theta;
  sincosf(angle, &sin_theta, &cos_theta);
  const float x0 = head[2 * pair], x1 = head[2 * pair + 1];
  return make_float2(x0 * cos_theta - x1 * sin_theta, x0 * sin_theta + x1 * cos_theta);
}

// One thread per (token, head, pair) of target a, then of target b.
__global__ void RopeKernel(RopeTarget a, RopeTarget b, int n_tokens, const TokenSlot* __restrict__ tokens,
                           RopeParams p, float theta_scale) {
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
__global__ void RopeStoreKvKernel(float* __restrict__ q, float* __restrict__ k,
                                  const float* __restrict__ v, int n_k_heads, int n_tokens,
                                  const TokenSlot* __restrict__ tokens, RopeParams p,
                                  float theta_scale, KvLayer cache) {
  LetNextKernelStart();
  WaitForPreviousKernel();
  const int rot_pairs = p.n_rot / 2, head_pairs = p.head_dim / 2;
  int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t in_q = static_cast<int64_t>(n_tokens) * p.n_heads * rot_pairs;
  if (id < in_q) {
    const int pair = static_cast<int>(id % rot_pairs);
    const int64_t head_row = id / rot_pairs;
    float* head = q + head_row * p.head_dim;
    const float2 r =
        RotatedPair(head, pair, tokens[head_row / p.n_heads].position, p, theta_scale);
    head[2 * pair] = r.x;
    head[2 * pair + 1] = r.y;
    return;
  }
  id -= in_q;
  if (id >= static_cast<int64_t>(n_tokens) * n_k_heads * head_pairs) return;
  const int pair = static_cast<int>(id % head_pairs);
  const int64_t head_row = id / head_pairs;  // token * n_k_heads + kv head
  const auto token = static_cast<int>(head_row / n_k_heads);
  const TokenSlot at = tokens[token];
  float* head = k + head_row * p.head_dim;
  float2 key = make_float2(head[2 * pair], head[2 * pair + 1]);
  if (pair < rot_pairs) {
    key = RotatedPair(head, pair, at.position, p, theta_scale);
    head[2 * pair] = key.x;
    head[2 * pair + 1] = key.y;
  }
  const int64_t src = head_row * p.head_dim + 2 * pair;  // = token * n_embd_kv + element
  const float2 value = make_float2(v[src], v[src + 1]);
  const int64_t row = static_cast<int64_t>(at.slot) * cache.n_ctx + at.position;
  const int64_t dst = row * cache.n_embd_kv + (src - static_cast<int64_t>(token) * cache.n_embd_kv);
  if (cache.half) {
    reinterpret_cast<__half2*>(static_cast<__half*>(cache.keys) + dst)[0] =
        __halves2half2(__float2half(key.x), __float2half(key.y));
    reinterpret_cast<__half2*>(static_cast<__half*>(cache.values) + dst)[0] =
        __halves2half2(__float2half(value.x), __float2half(value.y));
  } else {
    reinterpret_cast<float2*>(static_cast<float*>(cache.keys) + dst)[0] = key;
    reinterpret_cast<float2*>(static_cast<float*>(cache.values) + dst)[0] = value;
  }
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
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= groups) return;
  const float4 g = SumOfParts(gate, i), u = SumOfParts(up, i);
  out[i] = HalvesInMmaOrder(
      make_float4(SwiGlu(g.x, u.x), SwiGlu(g.y, u.y), SwiGlu(g.z, u.z), SwiGlu(g.w, u.w)));
}

__global__ void FloatToHalfKernel(const float* __restrict__ x, int64_t n, __half* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2half(x[i]);
}

// Grid (token, chunk of 256 elements): a row spreads over many blocks, so
// one token's store is not a single block's serial loop.
__global__ void StoreKvKernel(KvLayer layer, const float* __restrict__ k, const float* __restrict__ v,
                              const TokenSlot* __restrict__ tokens) {
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

unsigned Blocks(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

cudaError_t LaunchRmsNorm(const float* x, const float* weight, int64_t n, int n_rows, float eps,
                          float* y, cudaStream_t stream, uint16_t* halves_in_mma_order) {
  if (n_rows <= 0 || (halves_in_mma_order != nullptr && n % 4 != 0)) return cudaErrorInvalidValue;
  RmsNormKernel<<<n_rows, kNormThreads, 0, stream>>>(x, weight, n, eps, y, halves_in_mma_order);
  return cudaGetLastError();
}

cudaError_t LaunchRope(float* q, float* k, int n_k_heads, int n_tokens, const TokenSlot* tokens,
                       const RopeParams& params, cudaStream_t stream) {
  if (n_tokens <= 0 || params.n_rot <= 0 || params.n_rot % 2 != 0 || params.n_rot > params.head_dim ||
      n_k_heads < 0 || (k == nullptr && n_k_heads > 0)) {
    return cudaErrorInvalidValue;
  }
  const float theta_scale = powf(params.freq_base, -2.0f / static_cast<float>(params.n_rot));
  const int64_t total = static_cast<int64_t>(n_tokens) * (params.n_heads + n_k_heads) * (params.n_rot / 2);
  RopeKernel<<<Blocks(total, 256), 256, 0, stream>>>(RopeTarget{q, params.n_heads}, RopeTarget{k, n_k_heads},
                                                     n_tokens, tokens, params, theta_scale);
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

cudaError_t LaunchRopeStoreKv(float* q, float* k, const float* v, int n_k_heads, int n_tokens,
                              const TokenSlot* tokens, const RopeParams& params,
                              const KvLayer& cache, cudaStream_t stream, bool overlap_previous) {
  if (n_tokens <= 0 || params.n_rot <= 0 || params.n_rot % 2 != 0 ||
      params.n_rot > params.head_dim || params.head_dim % 2 != 0 || n_k_heads <= 0 ||
      q == nullptr || k == nullptr || v == nullptr ||
      static_cast<int64_t>(n_k_heads) * params.head_dim != cache.n_embd_kv) {
    return cudaErrorInvalidValue;
  }
  const float theta_scale = powf(params.freq_base, -2.0f / static_cast<float>(params.n_rot));
  const int64_t total =
      static_cast<int64_t>(n_tokens) * (static_cast<int64_t>(params.n_heads) * (params.n_rot / 2) +
                                        static_cast<int64_t>(n_k_heads) * (params.head_dim / 2));
  return LaunchAfterPrevious(overlap_previous, RopeStoreKvKernel, dim3(Blocks(total, 256)),
                             dim3(256), 0, stream, q, k, v, n_k_heads, n_tokens, tokens, params,
                             theta_scale, cache);
}

cudaError_t LaunchRope(float* x, int n_tokens, const TokenSlot* tokens, const RopeParams& params,
                       cudaStream_t stream) {
  return LaunchRope(x, nullptr, 0, n_tokens, tokens, params, stream);
}

cudaError_t LaunchAddRmsNorm(float* x, const PartialSums& add, const float* weight, int64_t n,
                             int n_rows, float eps, float* y, cudaStream_t stream,
                             uint16_t* halves_in_mma_order) {
  if (n_rows <= 0 || add.first == nullptr || add.count < 1 ||
      (add.count > 1 && add.stride < n * n_rows) ||
      (halves_in_mma_order != nullptr && n % 4 != 0)) {
    return cudaErrorInvalidValue;
  }
  AddRmsNormKernel<<<n_rows, kNormThreads, 0, stream>>>(x, add, weight, n, eps, y,
                                                        halves_in_mma_order);
  return cudaGetLastError();
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
                               uint16_t* halves_in_mma_order, cudaStream_t stream) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const auto valid = [&](const PartialSums& p) {
    return p.first != nullptr && aligned(p.first) && p.count >= 1 &&
           (p.count == 1 || (p.stride >= n && p.stride % 4 == 0));
  };
  if (n <= 0 || n % 4 != 0 || !valid(gate) || !valid(up) || halves_in_mma_order == nullptr ||
      !aligned(halves_in_mma_order)) {
    return cudaErrorInvalidValue;
  }
  SwiGluHalvesKernel<<<Blocks(n / 4, 256), 256, 0, stream>>>(
      gate, up, n / 4, reinterpret_cast<uint2*>(halves_in_mma_order));
  return cudaGetLastError();
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
