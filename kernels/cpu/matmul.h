// y = x W^T for a batch of activation rows: y[t][r] = dot(W.row(r), x[t]).
//
// Each activation row is quantized on its own (activation_quant.h). Weight rows
// are split across the pool's threads in contiguous chunks; inside a chunk, a
// tile of rows small enough to stay in cache is applied to the tokens in groups
// of up to kMaxDotGroup (multi_dot.h), so a prompt or a batch of sequences
// reads the weights from memory once per tile, not once per token.
//
// Batch invariance: every y[t][r] is computed by one thread with the same
// operations on x[t] alone, whatever n_tokens is or which group t falls in;
// hence a token's output depends neither on its batch nor on the thread count.
//
// Thread-safety: a MatMul object owns scratch space; use one per compute thread.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/multi_dot.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/weight_matrix.h"

namespace chord::kernels {

class MatMul {
 public:
  // `isa` selects the kernels (tests and benchmarks compare them); by default
  // the best the CPU supports.
  explicit MatMul(ThreadPool& pool, KernelIsa isa = BestKernelIsa()) : pool_(pool), isa_(isa) {}

  // x: n_tokens rows of w.cols floats; y: n_tokens rows of w.rows floats.
  // INVALID_ARGUMENT for a weight type without a dot product.
  absl::Status Run(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y);

  KernelIsa isa() const { return isa_; }

 private:
  ThreadPool& pool_;
  const KernelIsa isa_;
  // Activations in the weight type's dot format (and the kernel's prepared
  // layout); 64-byte units keep the prepared rows aligned.
  struct alignas(64) Line {
    uint8_t bytes[64];
  };
  std::vector<Line> scratch_;
};

}  // namespace chord::kernels
