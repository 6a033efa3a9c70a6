#include "kernels/cpu/multi_dot.h"

#include <cstdlib>
#include <cstring>

namespace chord::kernels {

KernelIsa BestKernelIsa() {
#if defined(__x86_64__) && defined(CHORD_HAVE_AVX2_KERNELS)
  static const KernelIsa isa = [] {
    // CHORD_KERNEL_ISA=portable or =avx2 caps the choice (comparisons, debugging).
    const char* forced = std::getenv("CHORD_KERNEL_ISA");
    if (forced != nullptr && std::strcmp(forced, "portable") == 0) return KernelIsa::kPortable;
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    if (!avx2) return KernelIsa::kPortable;
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    if (!avx512 || (forced != nullptr && std::strcmp(forced, "avx2") == 0)) return KernelIsa::kAvx2;
    return KernelIsa::kAvx512Vnni;
  }();
  return isa;
#else
  return KernelIsa::kPortable;
#endif
}

const char* KernelIsaName(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kAvx2:
      return "avx2";
    case KernelIsa::kAvx512Vnni:
      return "avx512-vnni";
    case KernelIsa::kPortable:
      return "portable";
  }
  return "unknown";
}

MultiDot GetMultiDot(DType weight_type, KernelIsa isa) {
#if defined(CHORD_HAVE_AVX2_KERNELS)
  if (isa == KernelIsa::kAvx512Vnni) {
    const MultiDot avx512 = GetMultiDotAvx512Vnni(weight_type);
    if (avx512.dot != nullptr) return avx512;
  }
  if (HasAvx2(isa)) return {GetMultiDotAvx2(weight_type)};
#else
  (void)weight_type;
  (void)isa;
#endif
  return {};
}

}  // namespace chord::kernels
