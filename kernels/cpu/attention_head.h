// The body of AttendOneToken (attention.h) for one query head, per instruction
// set: the portable loops live in attention.cc, the AVX2 routine in
// x86/attention_avx2.cc (reached after a CPUID check).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace chord::kernels {

// One query head for a run of consecutive query tokens of one sequence: query
// i (at q + i * q_stride) attends to positions 0..n_kv - 1 + i.
struct HeadAttention {
  const float* q = nullptr;  // the first query's head, head_dim floats
  const KvView* keys = nullptr;
  const KvView* values = nullptr;
  int64_t key_offset = 0;  // bytes into a cache row where this head's kv head starts
  int64_t value_offset = 0;
  int64_t n_kv = 0;  // of the first query
  int head_dim = 0;
  float scale = 0.0f;       // applied to every query-key dot product
  float* scores = nullptr;  // n_queries rows of scores_stride floats of scratch
  float* out = nullptr;     // the first query's output head, head_dim floats
  int n_queries = 1;
  int64_t q_stride = 0;       // floats between consecutive queries
  int64_t out_stride = 0;     // floats between consecutive outputs
  int64_t scores_stride = 0;  // at least n_kv + n_queries - 1
};

// Scores four keys at a time (one horizontal reduction for the four), a
// vectorized exp, and the weighted sum of the values kept in registers; the
// queries of a run share each key and value row while it is in L1. For
// head_dim a multiple of 8 and keys and values of one type (F32 or F16).
void AttendHeadAvx2(const HeadAttention& job);

}  // namespace chord::kernels
