// Half-precision GEMM on tensor cores through cuBLAS, for prefill: weights are
// dequantized to a half scratch matrix, activations converted to half, and the
// product accumulated in float32 (optionally onto the output: a fused residual).
//
// Thread-safety: one BlasHandle per stream-driving thread. Errors: cuBLAS
// failures become INTERNAL statuses naming the call.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

namespace chord::cuda {

class BlasHandle {
 public:
  static absl::StatusOr<BlasHandle> Create(cudaStream_t stream);
  BlasHandle(BlasHandle&&) noexcept;
  BlasHandle& operator=(BlasHandle&&) noexcept;
  ~BlasHandle();

  // y[t * rows + r] (+)= sum_c w[r * cols + c] * x[t * cols + c] for t < n_tokens;
  // w and x are half (row-major), y float.
  absl::Status GemmHalf(const uint16_t* w, int64_t rows, int64_t cols, const uint16_t* x,
                        int64_t n_tokens, float* y, bool accumulate);

 private:
  struct Impl;
  explicit BlasHandle(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chord::cuda
