// Quantization of activations (one row of floats) to the 8-bit block formats
// that the quantized dot products consume, rounding as llama.cpp's CPU backend
// does, so chord's quantized products agree with llama.cpp's closely:
//   Q8_0 (for Q4_0, Q5_0, Q8_0 weights): d = amax / 127, q = round-half-even(x * 127 / amax).
//   Q8_1 (for Q4_1, Q5_1 weights): as Q8_0, plus s = d * sum(q) stored as half.
//   Q8_K (for K-quant weights): d = max / -127 (the signed value of largest magnitude),
//        q = min(127, round-half-even(x / d)), per-16 sums of q kept for the mins.
#pragma once

#include <cstdint>

#include "common/quant/blocks.h"
#include "common/tensor/dtype.h"

namespace chord::kernels {

struct BlockQ8_1 {
  uint16_t d;
  uint16_t s;
  int8_t qs[quant::kQK];
};
static_assert(sizeof(BlockQ8_1) == 36);

void QuantizeActivationsQ8_0(const float* x, int64_t n, quant::BlockQ8_0* out);
void QuantizeActivationsQ8_1(const float* x, int64_t n, BlockQ8_1* out);
void QuantizeActivationsQ8_K(const float* x, int64_t n, quant::BlockQ8_K* out);

// The same with AVX2 (x86/activation_quant_avx2.cc): identical bytes; call
// only when the CPU has AVX2 (HasAvx2(BestKernelIsa())), as
// QuantizeActivations does.
void QuantizeActivationsQ8_0Avx2(const float* x, int64_t n, quant::BlockQ8_0* out);
void QuantizeActivationsQ8_KAvx2(const float* x, int64_t n, quant::BlockQ8_K* out);

// The activation format a weight type's dot product consumes; kF32 means the
// activations stay float (F32, F16 and BF16 weights).
DType ActivationTypeFor(DType weight_type);
// Bytes of one quantized activation row of n elements.
int64_t ActivationRowBytes(DType weight_type, int64_t n);
// Quantizes one activation row into `out` (ActivationRowBytes long) for `weight_type`.
void QuantizeActivations(DType weight_type, const float* x, int64_t n, void* out);

}  // namespace chord::kernels
