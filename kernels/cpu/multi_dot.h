// Dot products of one weight row with a small group of activation rows, the
// building block of MatMul: a weight block is loaded and unpacked once and
// applied to every activation row of the group, so a batch (prefill, batched
// decode) reads the weights once per group instead of once per token.
//
// Batch invariance: each activation row has its own accumulators and goes
// through exactly the same sequence of operations whatever the group size, so
// out[t] is bit-identical to a call with that row alone (SIMD files are built
// with -ffp-contract=off so the compiler cannot fuse differently per group
// size). Different instruction sets (AVX2 vs portable) may differ in the last
// bits; one process uses one of them for every product.
//
// Weights are read in their GGUF layout (no repacking, no extra memory).
// Activations are quantized once per product (activation_quant.h); a kernel may
// also ask for each quantized row to be converted, once per product, into a
// layout of its own (MultiDot::prepare) that carries what every weight row
// would otherwise recompute, such as float scales and per-group sums.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include "common/tensor/dtype.h"

namespace chord::kernels {

// Largest group a MultiDotFn accepts.
inline constexpr int kMaxDotGroup = 8;

// out[t] = dot(weights, acts[t]) for t < n_acts (1..kMaxDotGroup); `weights` is
// one row of `n` elements in the weight type's layout, each acts[t] one row in
// ActivationTypeFor(type) (activation_quant.h), or in the kernel's own layout
// when it has a `prepare` step.
using MultiDotFn = void (*)(const void* weights, const void* const* acts, int n_acts, int64_t n,
                            float* out);

// Two weight rows (the second row_bytes after the first) against the same
// group: first[t] and second[t] bit-identical to two MultiDotFn calls.
using TwoRowDotFn = void (*)(const void* weights, int64_t row_bytes, const void* const* acts,
                             int n_acts, int64_t n, float* first, float* second);

// A group kernel and, optionally, the conversion of its activations and a
// kernel over two rows at once (for types whose products are bound by
// activation loads; MatMul takes rows in pairs when it exists).
struct MultiDot {
  MultiDotFn dot = nullptr;
  // Both null: `dot` reads the quantized rows as they are. Otherwise each
  // quantized row of n elements becomes prepared_bytes(n) bytes (a multiple of
  // 64) at a 64-byte aligned address, through prepare(quantized, n, out).
  int64_t (*prepared_bytes)(int64_t n) = nullptr;
  void (*prepare)(const void* quantized, int64_t n, void* out) = nullptr;
  TwoRowDotFn two_rows = nullptr;
};

// kAvx512Vnni: AVX-512 F/BW/VL and VNNI kernels where they exist (Q4_0, Q8_0,
// Q4_K, Q5_K, Q6_K), the AVX2 ones for the other types.
enum class KernelIsa { kPortable, kAvx2, kAvx512Vnni };

// The best instruction set this CPU supports (CPUID, once); the environment
// variable CHORD_KERNEL_ISA=portable or =avx2 caps it (comparisons,
// debugging).
KernelIsa BestKernelIsa();
const char* KernelIsaName(KernelIsa isa);
// True for the sets that include the AVX2 kernels.
inline bool HasAvx2(KernelIsa isa) {
  return isa == KernelIsa::kAvx2 || isa == KernelIsa::kAvx512Vnni;
}

// dot == nullptr when `isa` has no kernel for the type (the caller then uses
// the portable row dot product of vec_dot.h once per activation row).
MultiDot GetMultiDot(DType weight_type, KernelIsa isa);

// Defined in x86/multi_dot_avx2.cc (built for AVX2+FMA+F16C) and
// x86/multi_dot_avx512.cc (AVX-512 F/BW/VL + VNNI; dot == nullptr for the
// types it leaves to AVX2); call only when BestKernelIsa() says so.
MultiDotFn GetMultiDotAvx2(DType weight_type);
MultiDot GetMultiDotAvx512Vnni(DType weight_type);

}  // namespace chord::kernels
