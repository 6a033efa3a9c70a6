#include "kernels/cuda/ops.h"

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/rms_scale.cuh"

namespace chord::cuda {
namespace {

constexpr int kNormThreads = 512;

// One block per row (RmsScale), written back with 16-byte stores where the
// row allows.
__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const float* __restrict__ x, const float* __restrict__ weight, int64_t n, float eps,
                  float* __restrict__ y) {
  const float* xr = x + blockIdx.x * n;
  float* yr = y + blockIdx.x * n;
  const bool float4s = RowOfFloat4s(xr, weight, n);
  const float scale = RmsScale<kNormThreads>(xr, n, eps, float4s);
  if (float4s && reinterpret_cast<uintptr_t>(yr) % 16 == 0) {
    const auto* x4 = reinterpret_cast<const float4*>(xr);
    const auto* w4 = reinterpret_cast<const float4*>(weight);
    auto* y4 = reinterpret_cast<float4*>(yr);
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
      const float4 v = x4[i], g = w4[i];
      y4[i] = make_float4(v.x * scale * g.x, v.y * scale * g.y, v.z * scale * g.z, v.w * scale * g.w);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * scale * weight[i];
  }
}

// Rows of n_heads heads a RoPE launch rotates.
struct RopeTarget {
  float* x;
  int n_heads;
};

// One thread per (token, head, pair) of target a, then of target b; the
// angle is advanced by repeated multiplication as the CPU path does, so both
// round alike.
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
  float theta = static_cast<float>(tokens[token].position);
  for (int i = 0; i < pair; ++i) theta *= theta_scale;
  const float factor = p.freq_factors != nullptr ? p.freq_factors[pair] : 1.0f;
  const float angle = p.freq_scale * (theta / factor);
  float sin_theta, cos_theta;
  sincosf(angle, &sin_theta, &cos_theta);
  float* head = t.x + head_row * p.head_dim;
  const float x0 = head[2 * pair], x1 = head[2 * pair + 1];
  head[2 * pair] = x0 * cos_theta - x1 * sin_theta;
  head[2 * pair + 1] = x0 * sin_theta + x1 * cos_theta;
}

__global__ void SwiGluKernel(float* __restrict__ gate, const float* __restrict__ up, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  gate[i] = (g / (1.0f + expf(-g))) * up[i];
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

unsigned Blocks(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

cudaError_t LaunchRmsNorm(const float* x, const float* weight, int64_t n, int n_rows, float eps,
                          float* y, cudaStream_t stream) {
  if (n_rows <= 0) return cudaErrorInvalidValue;
  RmsNormKernel<<<n_rows, kNormThreads, 0, stream>>>(x, weight, n, eps, y);
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

cudaError_t LaunchRope(float* x, int n_tokens, const TokenSlot* tokens, const RopeParams& params,
                       cudaStream_t stream) {
  return LaunchRope(x, nullptr, 0, n_tokens, tokens, params, stream);
}

cudaError_t LaunchSwiGlu(float* gate, const float* up, int64_t n, cudaStream_t stream) {
  SwiGluKernel<<<Blocks(n, 256), 256, 0, stream>>>(gate, up, n);
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
