// Conversion between float32 and the stored tensor types.
//
// Block layouts are ggml's, byte for byte (see blocks.h): what these functions
// write, llama.cpp reads, and the reverse. Rows are independent: a row's
// result never depends on other rows, so callers may split work across threads.
// Thread-safety: every function here is pure (no shared state; no allocation
// except for an error message).
// Quantized buffers hold ggml blocks, whose half fields need 2-byte alignment
// (true of any tensor in a GGUF file); plain F32/F16/BF16 buffers may be unaligned.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "common/tensor/dtype.h"

namespace chord::quant {

// Decodes `n` elements (a multiple of the type's block size) starting at `src`.
// INVALID_ARGUMENT for a type that is not computable or a bad n.
absl::Status DequantizeRow(DType type, const void* src, float* dst, int64_t n);

// True for the types QuantizeRows() writes: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K.
bool CanQuantize(DType type);

// Encodes `n_rows` rows of `n_per_row` floats (row-major) into `dst`, which must
// hold n_rows * RowBytes(type, n_per_row) bytes. The K-quants search per-block
// scales and mins that minimise squared error, as llama.cpp's reference
// quantizers do (without an importance matrix). INVALID_ARGUMENT for a type
// CanQuantize() rejects, a bad shape, a null buffer, or (for the block types
// only) a NaN or infinite input, which would otherwise poison a block's scales.
absl::Status QuantizeRows(DType type, const float* src, int64_t n_rows, int64_t n_per_row,
                          void* dst);

// IEEE half and bfloat16 conversions (round to nearest even; NaN stays NaN and
// is quieted; subnormals and infinities are exact). Independent of the FPU mode.
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float Bf16ToFloat(uint16_t b);
uint16_t FloatToBf16(float f);

}  // namespace chord::quant
