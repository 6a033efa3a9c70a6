// The two inner loops of attention over one cached key/value row (F32 or F16):
// a query-key dot product and out += weight * value. Portable and AVX2
// versions, chosen once per process by BestKernelIsa() (multi_dot.h).
//
// Thread-safety: pure functions.
#pragma once

#include "common/tensor/dtype.h"
#include "kernels/cpu/multi_dot.h"

namespace chord::kernels {

struct KvRowOps {
  float (*dot)(const float* q, const void* row, int n);
  void (*axpy)(float a, const void* row, float* out, int n);
};

// kv_type: kF32 or kF16.
KvRowOps GetKvRowOps(DType kv_type, KernelIsa isa);

// Defined in x86/attention_avx2.cc; call only when HasAvx2(BestKernelIsa()).
KvRowOps GetKvRowOpsAvx2(DType kv_type);

}  // namespace chord::kernels
