#include "kernels/cpu/matmul.h"

#include "common/base/status.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/vec_dot.h"

namespace chord::kernels {

absl::Status MatMul::Run(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y) {
  const VecDotFn dot = GetVecDot(w.type);
  if (dot == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("no matrix product for weight type ", std::string(DTypeName(w.type))));
  }
  const int64_t act_bytes = ActivationRowBytes(w.type, w.cols);
  quantized_.resize(static_cast<size_t>(act_bytes * n_tokens));
  uint8_t* act = quantized_.data();
  pool_.ParallelFor(n_tokens, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      QuantizeActivations(w.type, x + t * w.cols, w.cols, act + t * act_bytes);
    }
  });
  // Rows in chunks of 16 keep each thread's share of the weights contiguous.
  pool_.ParallelFor(w.rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint8_t* row = w.row(r);
      for (int64_t t = 0; t < n_tokens; ++t) {
        y[t * w.rows + r] = dot(row, act + t * act_bytes, w.cols);
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace chord::kernels
