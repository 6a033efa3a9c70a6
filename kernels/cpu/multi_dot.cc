#include "kernels/cpu/multi_dot.h"

#include <cstdlib>
#include <cstring>

namespace chord::kernels {

KernelIsa BestKernelIsa() {
#if defined(__x86_64__) && defined(CHORD_HAVE_AVX2_KERNELS)
  static const KernelIsa isa = [] {
    // CHORD_KERNEL_ISA=portable forces the portable kernels (comparisons, debugging).
    const char* forced = std::getenv("CHORD_KERNEL_ISA");
    if (forced != nullptr && std::strcmp(forced, "portable") == 0) return KernelIsa::kPortable;
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    return avx2 ? KernelIsa::kAvx2 : KernelIsa::kPortable;
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
    case KernelIsa::kPortable:
      return "portable";
  }
  return "unknown";
}

MultiDotFn GetMultiDot(DType weight_type, KernelIsa isa) {
#if defined(CHORD_HAVE_AVX2_KERNELS)
  if (isa == KernelIsa::kAvx2) return GetMultiDotAvx2(weight_type);
#else
  (void)weight_type;
  (void)isa;
#endif
  return nullptr;
}

}  // namespace chord::kernels
