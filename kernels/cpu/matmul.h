// y = x W^T for a batch of activation rows: y[t][r] = dot(W.row(r), x[t]).
//
// Batch invariance: every y[t][r] is computed by the same row dot product
// (vec_dot.h) on x[t] alone, quantized on its own, whatever n_tokens is; rows are
// split across threads, one thread per output element. So a token's output
// does not depend on the batch it is in, nor on the thread count.
//
// Thread-safety: a MatMul object owns scratch space; use one per compute thread.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/weight_matrix.h"

namespace chord::kernels {

class MatMul {
 public:
  explicit MatMul(ThreadPool& pool) : pool_(pool) {}

  // x: n_tokens rows of w.cols floats; y: n_tokens rows of w.rows floats.
  // INVALID_ARGUMENT for a weight type without a dot product.
  absl::Status Run(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y);

 private:
  ThreadPool& pool_;
  std::vector<uint8_t> quantized_;  // activations in the weight type's dot format
};

}  // namespace chord::kernels
