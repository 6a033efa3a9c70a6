// Element-wise and row-wise float operations of a transformer layer, written to
// follow llama.cpp's CPU arithmetic (double-precision sums in RMSNorm and
// softmax, RoPE angles advanced by repeated multiplication) so that chord's
// results stay within float rounding of llama.cpp's. Every function works on
// one row at a time, so its results do not depend on the batch size.
#pragma once

#include <cstdint>

namespace chord::kernels {

// y = x / sqrt(mean(x^2) + eps) * weight, for one row of n.
void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* y);

// Rotates pairs (x[2i], x[2i+1]) of each of n_heads heads of head_dim by
// position * base^(-2i/n_rot) * freq_scale (divided by freq_factors[i] when
// given, as Llama 3.1's rope_freqs does). Dimensions past n_rot stay as they are.
void RopeNormal(float* x, int n_heads, int head_dim, int n_rot, int64_t position,
                float freq_base, float freq_scale, const float* freq_factors);

// In place: x = softmax(x) over n values.
void Softmax(float* x, int64_t n);

// gate = silu(gate) * up, n values.
void SwiGlu(float* gate, const float* up, int64_t n);

// y += x, n values.
void AddInPlace(float* y, const float* x, int64_t n);

}  // namespace chord::kernels
