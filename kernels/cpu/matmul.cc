#include "kernels/cpu/matmul.h"

#include <algorithm>

#include "common/base/status.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/vec_dot.h"

namespace chord::kernels {
namespace {

// Weight bytes per tile: re-read from L2 by every token group of a batch.
constexpr int64_t kTileBytes = 96 << 10;
// The first token group of a batch reads each tile from memory while its
// products run long enough per row that the hardware prefetcher falls behind:
// it asks for the rows this far ahead itself (measured: +10-25% on 16-64
// tokens). One token streams fine without.
constexpr int64_t kPrefetchRows = 4;
// Groups this large take two rows a call where the kernel can
// (MultiDot::two_rows): the shared activation loads pay from here; smaller
// groups stream the weights faster one row at a time (Q8_0, one core, GMAC/s
// one row vs two: 2 tokens 55 vs 41, 8 tokens 87 vs 98, 64 tokens 115 vs 130).
constexpr int kTwoRowsFrom = 6;

struct Product {
  const WeightMatrix& w;
  const uint8_t* act;
  int64_t act_bytes;
  int64_t n_tokens;
  float* y;
};

// Rows [begin, end) of one thread, tiled for cache reuse across token groups;
// two rows a call where the kernel has a two-row form (same bits).
void RunRows(const Product& p, const MultiDot& multi, VecDotFn dot, int64_t begin, int64_t end) {
  const int64_t tile = std::max<int64_t>(1, kTileBytes / static_cast<int64_t>(p.w.row_bytes));
  for (int64_t r0 = begin; r0 < end; r0 += tile) {
    const int64_t r1 = std::min(end, r0 + tile);
    for (int64_t t0 = 0; t0 < p.n_tokens; t0 += kMaxDotGroup) {
      const int group = static_cast<int>(std::min<int64_t>(kMaxDotGroup, p.n_tokens - t0));
      const void* acts[kMaxDotGroup];
      for (int g = 0; g < group; ++g) acts[g] = p.act + (t0 + g) * p.act_bytes;
      int64_t rows = 1;
      for (int64_t r = r0; r < r1; r += rows) {
        rows = multi.two_rows != nullptr && group >= kTwoRowsFrom && r + 1 < r1 ? 2 : 1;
        if (t0 == 0 && p.n_tokens > 1) {
          for (int64_t ahead = r + kPrefetchRows; ahead < std::min(end, r + kPrefetchRows + rows);
               ++ahead) {
            for (uint64_t b = 0; b < p.w.row_bytes; b += 64)
              __builtin_prefetch(p.w.row(ahead) + b, 0, 2);
          }
        }
        float out[2][kMaxDotGroup];
        if (rows == 2) {
          multi.two_rows(p.w.row(r), static_cast<int64_t>(p.w.row_bytes), acts, group, p.w.cols,
                         out[0], out[1]);
        } else if (multi.dot != nullptr) {
          multi.dot(p.w.row(r), acts, group, p.w.cols, out[0]);
        } else {
          for (int g = 0; g < group; ++g) out[0][g] = dot(p.w.row(r), acts[g], p.w.cols);
        }
        for (int64_t i = 0; i < rows; ++i) {
          for (int g = 0; g < group; ++g) p.y[(t0 + g) * p.w.rows + r + i] = out[i][g];
        }
      }
    }
  }
}

}  // namespace

absl::Status MatMul::Run(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y) {
  const VecDotFn dot = GetVecDot(w.type);
  if (dot == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("no matrix product for weight type ", std::string(DTypeName(w.type))));
  }
  const MultiDot multi = GetMultiDot(w.type, isa_);
  int64_t act_bytes = ActivationRowBytes(w.type, w.cols);
  const uint8_t* act = reinterpret_cast<const uint8_t*>(x);
  if (ActivationTypeFor(w.type) != DType::kF32) {
    const int64_t quantized_bytes = act_bytes;
    const bool prepared = multi.prepare != nullptr;
    if (prepared) act_bytes = multi.prepared_bytes(w.cols);
    // One quantized row per token, then (for kernels that want it) the
    // prepared row, 64-byte aligned, after all of them.
    const int64_t prepared_offset = (quantized_bytes * n_tokens + 63) & ~int64_t{63};
    const int64_t total =
        prepared ? prepared_offset + act_bytes * n_tokens : quantized_bytes * n_tokens;
    scratch_.resize(static_cast<size_t>((total + 64) / 64));
    uint8_t* quantized = reinterpret_cast<uint8_t*>(scratch_.data());
    uint8_t* out = prepared ? quantized + prepared_offset : quantized;
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(w.cols, 1));
    pool_.ParallelFor(n_tokens, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        uint8_t* q = quantized + t * quantized_bytes;
        QuantizeActivations(w.type, x + t * w.cols, w.cols, q);
        if (prepared) multi.prepare(q, w.cols, out + t * act_bytes);
      }
    });
    act = out;
  }
  // Waking a thread costs microseconds: hand each at least ~64 KiB of weight
  // rows (times the tokens that reuse them), so tiny matrices stay on one thread.
  const int64_t work_per_row = static_cast<int64_t>(w.row_bytes) * n_tokens;
  const int64_t grain =
      std::max<int64_t>(16, (int64_t{64} << 10) / std::max<int64_t>(work_per_row, 1));
  const Product product{w, act, act_bytes, n_tokens, y};
  pool_.ParallelFor(w.rows, grain,
                    [&](int64_t begin, int64_t end) { RunRows(product, multi, dot, begin, end); });
  return absl::OkStatus();
}

}  // namespace chord::kernels
