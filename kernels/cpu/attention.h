// Causal grouped-query attention for one query token over cached keys/values.
//
// Keys and values of positions 0..n_kv-1 are read from a cache laid out as one
// row per position holding all kv heads (n_kv_heads * head_dim elements, F32 or
// F16), either contiguous or in pages of 2^page_shift positions (a paged KV
// cache: the page table maps a sequence's pages to wherever the pool put them). Query head h uses
// kv head h / (n_heads / n_kv_heads). Scores are reduced over positions in order, so the result for
// a token depends only on its query and the cache contents, never on other tokens in the batch.
#pragma once

#include <cstdint>

#include "common/tensor/dtype.h"

namespace chord::kernels {

struct KvView {
  DType type = DType::kF32;  // kF32 or kF16
  const uint8_t* data =
      nullptr;            // contiguous: row for position 0; paged: this view's rows in page 0
  int64_t row_bytes = 0;  // stride between positions within a page
  const int32_t* pages = nullptr;  // paged: the pool page of each 2^page_shift positions
  int page_shift = 0;
  int64_t page_stride = 0;  // bytes between consecutive pool pages

  const uint8_t* Row(int64_t position) const {
    if (pages == nullptr) return data + position * row_bytes;
    const int64_t in_page = position & ((int64_t{1} << page_shift) - 1);
    return data + pages[position >> page_shift] * page_stride + in_page * row_bytes;
  }
};

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
};

// q: n_heads * head_dim floats; out: same size. scratch: at least n_kv floats.
void AttendOneToken(const AttentionShape& shape, const float* q, const KvView& keys,
                    const KvView& values, int64_t n_kv, int head, float* scores, float* out);

// A run of consecutive tokens of one sequence (a prompt, or a chunk of one):
// token i, its query at q + i * q_stride and its output at out + i * out_stride,
// attends to positions 0..n_kv - 1 + i. Each token's result is bit-identical
// to AttendOneToken's; the run reads each cached row once instead of once per
// token. scores: n_queries * (n_kv + n_queries - 1) floats.
void AttendTokens(const AttentionShape& shape, const float* q, int64_t q_stride, const KvView& keys,
                  const KvView& values, int64_t n_kv, int n_queries, int head, float* scores,
                  float* out, int64_t out_stride);

}  // namespace chord::kernels
