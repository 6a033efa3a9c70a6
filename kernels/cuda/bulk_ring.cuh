// A warp's ring of shared-memory buffers filled by bulk copies (sm_90's
// tensor memory accelerator, `cp.async.bulk`): one instruction from one lane
// copies a whole row, and the buffer's mbarrier counts its bytes in. Against
// 16-byte `cp.async` copies from every lane (a row of 2304 bytes: 144 copies
// and their addresses, ~90 instructions a row a warp in the one-token
// products), the warp issues a handful of instructions a row, and the copies
// never occupy the load/store unit.
#pragma once

#include <cstdint>

namespace chord::cuda {

template <int S>
struct BulkRing {
  uint64_t* barriers;   // S mbarriers in shared memory, one a buffer
  uint32_t phases = 0;  // bit b: the parity of buffer b's next completion

  __device__ static uint32_t SharedAddress(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
  }

  // Lane 0 initializes the barriers (one arrival a phase: the lane that
  // starts the copy); the warp may fill buffers after this.
  __device__ explicit BulkRing(uint64_t* warp_barriers, int lane) : barriers(warp_barriers) {
    if (lane == 0) {
#pragma unroll
      for (int b = 0; b < S; ++b) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(SharedAddress(barriers + b)));
      }
      // The copies (the async proxy) must see the initialized barriers.
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncwarp();
  }

  // Lane 0 starts copying `bytes` (a multiple of 16; both addresses 16-byte
  // aligned) from `source` into buffer b at `target`. The warp must be done
  // reading the buffer (a __syncwarp after its last read).
  __device__ void Fill(int b, uint8_t* target, const uint8_t* source, uint32_t bytes,
                       int lane) const {
    if (lane != 0) return;
    const uint32_t barrier = SharedAddress(barriers + b);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(barrier), "r"(bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
            "r"(SharedAddress(target)),
        "l"(source), "r"(bytes), "r"(barrier)
        : "memory");
  }

  // Every lane waits until buffer b's copy has landed.
  __device__ void Wait(int b) {
    const uint32_t barrier = SharedAddress(barriers + b);
    const uint32_t parity = (phases >> b) & 1;
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT;\n"
        "}\n" ::"r"(barrier),
        "r"(parity)
        : "memory");
    phases ^= 1u << b;
  }
};

}  // namespace chord::cuda
