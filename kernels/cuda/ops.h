// Element-wise and row-wise kernels of a Llama layer on the GPU, following
// kernels/cpu/ops.h's arithmetic (double sums in RMSNorm, RoPE angles advanced
// by repeated multiplication) so that results stay within float rounding of
// the CPU path. Launchers return the launch's error and never synchronize.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace chord::cuda {

// Per token of a batch: its KV-cache slot and position (device array entries).
struct TokenSlot {
  int32_t slot;
  int32_t position;
};

// A vector held as `count` partial sums, `stride` floats apart, that add up
// to it in order (0 + first[i] + first[stride + i] + ...): what a product
// that splits K leaves before its sums are added (count 1: the vector
// itself).
struct PartialSums {
  const float* first = nullptr;
  int count = 1;
  int64_t stride = 0;
};

// y = x / sqrt(mean(x^2) + eps) * weight for n_rows rows of n. With
// `halves_in_mma_order` (n a multiple of 4), y is also written there as the
// half tensor-core product reads its input (LaunchFloatToHalfMmaOrder's bits).
// With `overlap_previous`, here and below: a programmatic dependent launch
// (dependent_launch.cuh), the same results.
cudaError_t LaunchRmsNorm(const float* x, const float* weight, int64_t n, int n_rows, float eps,
                          float* y, cudaStream_t stream, uint16_t* halves_in_mma_order = nullptr,
                          bool overlap_previous = false);

// x += add (element by element, the partial sums in order), then RMSNorm of
// the new x as LaunchRmsNorm: a residual sum that a product left as partial
// sums and the norm that reads it, in one launch.
cudaError_t LaunchAddRmsNorm(float* x, const PartialSums& add, const float* weight, int64_t n,
                             int n_rows, float eps, float* y, cudaStream_t stream,
                             uint16_t* halves_in_mma_order = nullptr,
                             bool overlap_previous = false);

// y[i] += the partial sums of element i, in order, for i < n.
cudaError_t LaunchAddPartialSums(const PartialSums& add, int64_t n, float* y, cudaStream_t stream);

// RoPE in place on n_tokens rows of n_heads * head_dim (the "normal" pair
// layout); freq_factors may be null.
struct RopeParams {
  int n_heads = 0;
  int head_dim = 0;
  int n_rot = 0;
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;
  const float* freq_factors = nullptr;
};
// The factor between the angles of consecutive pairs: freq_base^(-2 / n_rot).
float RopeThetaScale(const RopeParams& params);

cudaError_t LaunchRope(float* x, int n_tokens, const TokenSlot* tokens, const RopeParams& params,
                       cudaStream_t stream);
// Queries (params.n_heads) and keys (n_k_heads) of the same tokens in one
// launch; the same values as a LaunchRope each.
cudaError_t LaunchRope(float* q, float* k, int n_k_heads, int n_tokens, const TokenSlot* tokens,
                       const RopeParams& params, cudaStream_t stream);

// gate = silu(gate) * up, n values.
cudaError_t LaunchSwiGlu(float* gate, const float* up, int64_t n, cudaStream_t stream);

// silu(gate) * up for n values (a multiple of 4) given as partial sums
// (16-byte aligned), written only as halves in mma order: the input of the
// down product on the half tensor-core path, without a float copy or
// separate additions of the partial sums.
cudaError_t LaunchSwiGluHalves(const PartialSums& gate, const PartialSums& up, int64_t n,
                               uint16_t* halves_in_mma_order, cudaStream_t stream,
                               bool overlap_previous = false);

// out = half(x), n values.
cudaError_t LaunchFloatToHalf(const float* x, int64_t n, uint16_t* out, cudaStream_t stream);

// The K/V cache of one layer: n_slots * n_ctx rows of n_embd_kv elements
// (F32 when !half, else F16), slot-major.
struct KvLayer {
  void* keys = nullptr;
  void* values = nullptr;
  int64_t n_ctx = 0;
  int n_embd_kv = 0;
  bool half = false;
};

// Stores each token's k and v rows (n_embd_kv floats) at its slot/position.
cudaError_t LaunchStoreKv(const KvLayer& layer, const float* k, const float* v, int n_tokens,
                          const TokenSlot* tokens, cudaStream_t stream);

// For each of n_rows rows of n_vocab logits, the id of its largest entry,
// the lowest id among equal ones; a NaN is never chosen unless it is entry 0,
// which then is (the sequential scan `if (x[id] > x[best]) best = id`: the
// host sampler's greedy choice, worker/sampler.h).
cudaError_t LaunchGreedyTokens(const float* logits, int n_rows, int64_t n_vocab, int32_t* tokens,
                               cudaStream_t stream);

// LaunchRope of q (params.n_heads) and k (n_k_heads) then LaunchStoreKv of
// k and v, in one launch (the same values in q, k and the cache); `cache`
// holds rows of n_k_heads * head_dim. `overlap_previous`: a programmatic
// dependent launch (dependent_launch.cuh); the results are the same.
cudaError_t LaunchRopeStoreKv(float* q, float* k, const float* v, int n_k_heads, int n_tokens,
                              const TokenSlot* tokens, const RopeParams& params,
                              const KvLayer& cache, cudaStream_t stream,
                              bool overlap_previous = false);
// The same with q, k and v read as partial sums (what products that split K
// leave), added in order as they are read: q and k receive the rotated sums.
cudaError_t LaunchRopeStoreKv(const PartialSums& q_in, const PartialSums& k_in,
                              const PartialSums& v_in, float* q, float* k, int n_k_heads,
                              int n_tokens, const TokenSlot* tokens, const RopeParams& params,
                              const KvLayer& cache, cudaStream_t stream,
                              bool overlap_previous = false);

}  // namespace chord::cuda
