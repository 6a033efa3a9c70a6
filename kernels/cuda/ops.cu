#include "kernels/cuda/ops.h"

#include <cuda_fp16.h>

#include <cstdint>

namespace chord::cuda {
namespace {

constexpr int kNormThreads = 512;

// One block per row. Rows of whole float4s (n % 4 == 0, 16-byte aligned: every
// row of the stage's buffers) are read with 16-byte loads, so a 4096-wide row
// takes two loads per thread, issued together; the sum of squares is kept in
// double and reduced in a fixed order (the same bits for a row whatever the
// other rows are).
__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const float* __restrict__ x, const float* __restrict__ weight, int64_t n, float eps,
                  float* __restrict__ y) {
  const float* xr = x + blockIdx.x * n;
  float* yr = y + blockIdx.x * n;
  const bool vector = n % 4 == 0 && (reinterpret_cast<uintptr_t>(xr) | reinterpret_cast<uintptr_t>(yr) |
                                     reinterpret_cast<uintptr_t>(weight)) % 16 == 0;
  double sum = 0.0;
  if (vector) {
    const auto* x4 = reinterpret_cast<const float4*>(xr);
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
      const float4 v = x4[i];
      sum += static_cast<double>(v.x) * v.x + static_cast<double>(v.y) * v.y +
             static_cast<double>(v.z) * v.z + static_cast<double>(v.w) * v.w;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const double v = xr[i];
      sum += v * v;
    }
  }
  __shared__ double partial[kNormThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kNormThreads / 32; ++w) total += partial[w];
  const float scale = static_cast<float>(1.0 / sqrt(total / static_cast<double>(n) + eps));
  if (vector) {
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

// One thread per (token, head, pair); the angle is advanced by repeated
// multiplication as the CPU path does, so both round alike.
__global__ void RopeKernel(float* __restrict__ x, int n_tokens, const TokenSlot* __restrict__ tokens,
                           RopeParams p, float theta_scale) {
  const int pairs = p.n_rot / 2;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= static_cast<int64_t>(n_tokens) * p.n_heads * pairs) return;
  const int pair = static_cast<int>(id % pairs);
  const int64_t head_row = id / pairs;  // token * n_heads + head
  const int token = static_cast<int>(head_row / p.n_heads);
  float theta = static_cast<float>(tokens[token].position);
  for (int i = 0; i < pair; ++i) theta *= theta_scale;
  const float factor = p.freq_factors != nullptr ? p.freq_factors[pair] : 1.0f;
  const float angle = p.freq_scale * (theta / factor);
  float sin_theta, cos_theta;
  sincosf(angle, &sin_theta, &cos_theta);
  float* head = x + head_row * p.head_dim;
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

cudaError_t LaunchRope(float* x, int n_tokens, const TokenSlot* tokens, const RopeParams& params,
                       cudaStream_t stream) {
  if (n_tokens <= 0 || params.n_rot <= 0 || params.n_rot % 2 != 0 || params.n_rot > params.head_dim) {
    return cudaErrorInvalidValue;
  }
  const float theta_scale = powf(params.freq_base, -2.0f / static_cast<float>(params.n_rot));
  const int64_t total = static_cast<int64_t>(n_tokens) * params.n_heads * (params.n_rot / 2);
  RopeKernel<<<Blocks(total, 256), 256, 0, stream>>>(x, n_tokens, tokens, params, theta_scale);
  return cudaGetLastError();
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
