// Dot products of one weight row (in its stored GGUF layout) with one
// activation row (float, or quantized by activation_quant.h for quantized
// weights). Portable scalar code: each block's integer dot product is exact,
// and blocks are accumulated in order, so a result depends only on the two
// rows (never on the batch or the thread that computes it).
#pragma once

#include <cstdint>

#include "common/tensor/dtype.h"

namespace chord::kernels {

// Signature of a row dot product: `weights` is one row of `n` elements in the
// weight type's layout; `activations` one row in ActivationTypeFor(type).
using VecDotFn = float (*)(const void* weights, const void* activations, int64_t n);

// nullptr when the type is not computable.
VecDotFn GetVecDot(DType weight_type);

}  // namespace chord::kernels
