#include "kernels/cpu/matmul.h"

#include <algorithm>

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
  pool_.ParallelFor(n_tokens, std::max<int64_t>(1, 16384 / std::max<int64_t>(w.cols, 1)),
                    [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      QuantizeActivations(w.type, x + t * w.cols, w.cols, act + t * act_bytes);
    }
  });
  // Waking a thread costs microseconds: hand each at least ~64 KiB of weight
  // rows (times the tokens that reuse them), so tiny matrices stay on one thread.
  const int64_t work_per_row = static_cast<int64_t>(w.row_bytes) * n_tokens;
  const int64_t grain = std::max<int64_t>(16, (int64_t{64} << 10) / std::max<int64_t>(work_per_row, 1));
  pool_.ParallelFor(w.rows, grain, [&](int64_t begin, int64_t end) {
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
