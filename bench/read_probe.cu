#include "bench/read_probe.h"

#include <algorithm>

#include "kernels/cuda/bulk_ring.cuh"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/matvec_common.cuh"

namespace chord::bench {
namespace {

__global__ void ReadProbeKernel(const uint4* __restrict__ data, size_t n, uint32_t* sink) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldg(data + i), b = __ldg(data + i + stride);
    const uint4 c = __ldg(data + i + 2 * stride), d = __ldg(data + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^
           d.w;
  }
  for (; i < n; i += stride) {
    const uint4 a = __ldg(data + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// Whole rows through a ring of S shared-memory buffers a warp, S - 1 rows
// ahead: by 16-byte copies from every lane, or by one bulk copy a row.
template <int S, bool kBulk>
__global__ void ReadRowsStagedKernel(const uint8_t* __restrict__ data, int64_t rows, int row_bytes,
                                     uint32_t* sink) {
  extern __shared__ __align__(16) uint8_t staged[];
  __shared__ uint64_t barriers[32][S];
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int warps_per_block = static_cast<int>(blockDim.x / 32);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * warps_per_block + warp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * warps_per_block;
  uint8_t* ring = staged + static_cast<size_t>(warp) * S * row_bytes;
  cuda::BulkRing<S> buffers(barriers[warp], lane);
  const auto copy_row = [&](int64_t k, int b) {
    const int64_t r = first + k * stride;
    if (r < rows) {
      const uint8_t* source = data + r * row_bytes;
      if constexpr (kBulk) {
        buffers.Fill(b, ring + b * row_bytes, source, static_cast<uint32_t>(row_bytes), lane);
      } else {
        for (int c = lane * 16; c < row_bytes; c += 32 * 16)
          cuda::CopyAsync16(ring + b * row_bytes + c, source + c);
      }
    }
    if constexpr (!kBulk) cuda::CommitCopies();
  };
#pragma unroll
  for (int s = 0; s < S - 1; ++s) copy_row(s, s);
  uint32_t acc = 0;
  int b = 0;
  for (int64_t k = 0; first + k * stride < rows; ++k, b = b + 1 == S ? 0 : b + 1) {
    copy_row(k + S - 1, b == 0 ? S - 1 : b - 1);
    if constexpr (kBulk) {
      buffers.Wait(b);
    } else {
      cuda::WaitForCopiesBut<S - 1>();
      __syncwarp();
    }
    acc ^= *reinterpret_cast<const uint32_t*>(ring + b * row_bytes + lane * 16);
    __syncwarp();
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// Two rows a warp at a time, each lane's part of both loaded before any is used.
__global__ void ReadRowsLoadsKernel(const uint8_t* __restrict__ data, int64_t rows, int row_bytes,
                                    uint32_t* sink) {
  constexpr int kMaxChunks = 8;  // rows up to 4096 bytes
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int warps_per_block = static_cast<int>(blockDim.x / 32);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * warps_per_block + warp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * warps_per_block;
  uint32_t acc = 0;
  for (int64_t r = first; r < rows; r += 2 * stride) {
    uint4 v[2][kMaxChunks];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = r + h * stride;
#pragma unroll
      for (int c = 0; c < kMaxChunks; ++c) {
        const int at = (lane + 32 * c) * 16;
        v[h][c] = row < rows && at < row_bytes
                      ? __ldg(reinterpret_cast<const uint4*>(data + row * row_bytes + at))
                      : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int c = 0; c < kMaxChunks; ++c) acc ^= v[h][c].x ^ v[h][c].y ^ v[h][c].z ^ v[h][c].w;
    }
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

template <typename... Params>
cudaError_t LaunchResident(void (*kernel)(Params...), int threads, size_t shared, int blocks_per_sm,
                           int64_t needed, cudaStream_t stream, Params... params) {
  cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared));
  if (error != cudaSuccess) return error;
  int fit = 0;
  error = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, threads, shared);
  if (error != cudaSuccess) return error;
  if (blocks_per_sm > 0) fit = std::min(fit, blocks_per_sm);
  const int sms = cuda::MultiprocessorCount();
  if (sms <= 0) return cudaErrorInvalidDevice;
  const int64_t blocks = std::min<int64_t>(needed, int64_t{std::max(1, fit)} * sms);
  kernel<<<static_cast<unsigned>(blocks), threads, shared, stream>>>(params...);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchReadRowsProbe(const void* data, int64_t rows, int row_bytes, RowRead how,
                                int stages, int warps, int blocks_per_sm, uint32_t* sink,
                                cudaStream_t stream) {
  if (row_bytes % 16 != 0 || row_bytes <= 0 || row_bytes > 4096 || rows <= 0 || warps <= 0 ||
      warps > 32 || reinterpret_cast<uintptr_t>(data) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  const auto* bytes = static_cast<const uint8_t*>(data);
  const int threads = warps * 32;
  const int64_t needed = (rows + warps - 1) / warps;
  if (how == RowRead::kLoads) {
    return LaunchResident(ReadRowsLoadsKernel, threads, 0, blocks_per_sm, needed, stream, bytes,
                          rows, row_bytes, sink);
  }
  const size_t shared = static_cast<size_t>(warps) * stages * row_bytes;
  const auto launch = [&]<int S, bool kBulk>() {
    return LaunchResident(ReadRowsStagedKernel<S, kBulk>, threads, shared, blocks_per_sm, needed,
                          stream, bytes, rows, row_bytes, sink);
  };
  const bool bulk = how == RowRead::kBulk;
  if (stages == 2) return bulk ? launch.operator()<2, true>() : launch.operator()<2, false>();
  if (stages == 3) return bulk ? launch.operator()<3, true>() : launch.operator()<3, false>();
  return cudaErrorInvalidValue;
}

cudaError_t LaunchReadProbe(const void* data, size_t bytes, uint32_t* sink, int blocks, int threads,
                            cudaStream_t stream) {
  if (bytes % 16 != 0 || reinterpret_cast<uintptr_t>(data) % 16 != 0 || blocks <= 0 ||
      threads <= 0) {
    return cudaErrorInvalidValue;
  }
  ReadProbeKernel<<<blocks, threads, 0, stream>>>(static_cast<const uint4*>(data), bytes / 16,
                                                  sink);
  return cudaGetLastError();
}

}  // namespace chord::bench
