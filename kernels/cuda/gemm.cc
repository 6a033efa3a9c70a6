#include "kernels/cuda/gemm.h"

#include <cublas_v2.h>

#include "absl/strings/str_format.h"

namespace chord::cuda {
namespace {

absl::Status BlasStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("%s failed: cuBLAS status %d", what, static_cast<int>(status)));
}

}  // namespace

struct BlasHandle::Impl {
  cublasHandle_t handle = nullptr;
  ~Impl() {
    if (handle != nullptr) cublasDestroy(handle);
  }
};

BlasHandle::BlasHandle(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BlasHandle::BlasHandle(BlasHandle&&) noexcept = default;
BlasHandle& BlasHandle::operator=(BlasHandle&&) noexcept = default;
BlasHandle::~BlasHandle() = default;

absl::StatusOr<BlasHandle> BlasHandle::Create(cudaStream_t stream) {
  auto impl = std::make_unique<Impl>();
  absl::Status status = BlasStatus(cublasCreate(&impl->handle), "cublasCreate");
  if (!status.ok()) return status;
  status = BlasStatus(cublasSetStream(impl->handle, stream), "cublasSetStream");
  if (!status.ok()) return status;
  return BlasHandle(std::move(impl));
}

absl::Status BlasHandle::GemmHalf(const uint16_t* w, int64_t rows, int64_t cols, const uint16_t* x,
                                  int64_t n_tokens, float* y, bool accumulate) {
  // Column-major view: Y^T (rows x n) = W^T' (rows x cols) * X^T (cols x n),
  // where W row-major is W^T column-major with leading dimension cols.
  const float alpha = 1.0f;
  const float beta = accumulate ? 1.0f : 0.0f;
  return BlasStatus(
      cublasGemmEx(impl_->handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows),
                   static_cast<int>(n_tokens), static_cast<int>(cols), &alpha, w, CUDA_R_16F,
                   static_cast<int>(cols), x, CUDA_R_16F, static_cast<int>(cols), &beta, y,
                   CUDA_R_32F, static_cast<int>(rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

}  // namespace chord::cuda
