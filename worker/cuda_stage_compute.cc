// StageCompute on an NVIDIA GPU: CudaStage, which holds a full context per
// slot in GPU memory (so Reserve only checks bounds; the coordinator's page
// accounting, made for the smallest pool of a plan, never asks for more).
#include <algorithm>
#include <chrono>
#include <numeric>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/base/status.h"
#include "common/tensor/dtype.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/matvec.h"
#include "worker/cuda_stage.h"
#include "worker/nccl_link.h"
#include "worker/stage_compute.h"

namespace chord {
namespace {

class CudaStageCompute final : public StageCompute {
 public:
  CudaStageCompute(std::unique_ptr<CudaStage> stage, int64_t n_slots, int64_t n_ctx)
      : stage_(std::move(stage)), n_ctx_(n_ctx), positions_(static_cast<size_t>(n_slots), 0) {}

  bool has_embedding() const override { return stage_->has_embedding(); }
  bool has_output() const override { return stage_->has_output(); }
  uint64_t kv_cache_bytes() const override { return stage_->kv_bytes(); }
  double kv_cache_usage() const override {
    const int64_t held = std::accumulate(positions_.begin(), positions_.end(), int64_t{0});
    return static_cast<double>(held) /
           static_cast<double>(n_ctx_ * static_cast<int64_t>(positions_.size()));
  }
  absl::Status Reserve(std::span<const SlotExtent> extents) override {
    for (const SlotExtent& extent : extents) {
      if (extent.slot < 0 || extent.slot >= static_cast<int64_t>(positions_.size()) ||
          extent.end > n_ctx_) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "slot %d positions [0, %d) are outside the GPU KV cache (%d slots of %d)", extent.slot,
            extent.end, positions_.size(), n_ctx_));
      }
    }
    for (const SlotExtent& extent : extents) {
      int64_t& held = positions_[static_cast<size_t>(extent.slot)];
      held = extent.restart ? extent.end : std::max(held, extent.end);
    }
    return absl::OkStatus();
  }
  void Release(int64_t slot) override { positions_[static_cast<size_t>(slot)] = 0; }
  absl::Status Embed(std::span<const int32_t> tokens, float* x) override {
    return stage_->Embed(tokens, x);
  }
  absl::Status RunLayers(std::span<const BatchToken> batch, float* x) override {
    return stage_->RunLayers(batch, x);
  }
  absl::Status Logits(const float* x, int64_t n_rows, const LogitsRequest& out) override {
    return stage_->Logits(x, n_rows, out);
  }
  void set_between_layers(std::function<void()>) override {}

  bool can_forward() const override { return stage_->has_embedding() && stage_->has_output(); }
  absl::Status Forward(std::span<const int32_t> tokens, std::span<const BatchToken> batch,
                       int64_t n_logit_rows, const LogitsRequest& out) override {
    return stage_->Forward(tokens, batch, n_logit_rows, out);
  }

  bool can_link() const override { return true; }
  absl::Status ReceiveRows(NcclLink& link, int64_t n_rows) override {
    ASSIGN_OR_RETURN(float* rows, stage_->DeviceRows(n_rows));
    // The layers queue behind the receive; the stage's waits go through the
    // link from now on (the executor that holds both destroys the link last).
    stage_->set_stream_waiter([&link, stream = stage_->stream()] { return link.WaitFor(stream); });
    return link.ReceiveQueued(rows, n_rows * stage_->config().n_embd, stage_->stream());
  }
  absl::Status EmbedOnDevice(std::span<const int32_t> tokens) override {
    return stage_->EmbedOnDevice(tokens);
  }
  absl::Status RunLayersOnDevice(std::span<const BatchToken> batch, float* x, bool input_on_device,
                                 bool output_on_device) override {
    return stage_->RunLayers(batch, x, input_on_device, output_on_device);
  }
  absl::Status LogitsOfDeviceRows(int64_t first_row, int64_t n_rows,
                                  const LogitsRequest& out) override {
    return stage_->LogitsOfDeviceRows(first_row, n_rows, out);
  }
  absl::Status SendRows(NcclLink& link, int64_t n_rows) override {
    ASSIGN_OR_RETURN(float* rows, stage_->DeviceRows(n_rows));
    return link.Send(rows, n_rows * stage_->config().n_embd, stage_->stream());
  }

 private:
  std::unique_ptr<CudaStage> stage_;
  int64_t n_ctx_;
  std::vector<int64_t> positions_;  // per slot, for the usage gauge
};

}  // namespace

absl::StatusOr<std::unique_ptr<StageCompute>> MakeCudaStageCompute(
    const TensorSource& tensors, const ModelConfig& config, const StageComputeOptions& options,
    DeviceStreamedLayers streamed) {
  CudaStageOptions cuda;
  cuda.device = options.device;
  cuda.n_slots = options.kv.n_slots;
  cuda.n_ctx = options.kv.n_ctx;
  cuda.kv_type = options.kv.type;
  cuda.exact = options.exact;
  absl::StatusOr<std::unique_ptr<CudaStage>> stage =
      CudaStage::Load(tensors, config, options.range, cuda,
                      CudaStreamedLayers{streamed.source, streamed.first, streamed.buffer_bytes});
  if (!stage.ok()) return stage.status();
  return std::make_unique<CudaStageCompute>(*std::move(stage), options.kv.n_slots,
                                            options.kv.n_ctx);
}

bool CudaBackendBuilt() { return true; }

namespace {

class CudaHostPinner final : public MemoryPinner {
 public:
  absl::Status Pin(void* data, uint64_t bytes) const override {
    return cuda::CudaStatus(cudaHostRegister(data, bytes, cudaHostRegisterDefault),
                            "cudaHostRegister");
  }
  void Unpin(void* data) const override { (void)cudaHostUnregister(data); }
};

}  // namespace

const MemoryPinner* CudaMemoryPinner() {
  static const CudaHostPinner pinner;
  return &pinner;
}

absl::StatusOr<double> MeasureCudaWeightThroughput(int device) {
  CHORD_CUDA_RETURN(cudaSetDevice(device));
  constexpr int64_t kCols = 4096;
  constexpr int64_t kRows = 16384;  // 16384 x 4352 bytes: 68 MiB of Q8_0
  ASSIGN_OR_RETURN(const uint64_t row_bytes, RowBytes(DType::kQ8_0, kCols));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer weights, cuda::DeviceBuffer::Allocate(row_bytes * kRows));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer x, cuda::DeviceBuffer::Allocate(kCols * sizeof(float)));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer y, cuda::DeviceBuffer::Allocate(kRows * sizeof(float)));
  // 0x11 bytes: every block's scale is a small finite half, every quant 17.
  CHORD_CUDA_RETURN(cudaMemset(weights.data(), 0x11, weights.bytes()));
  CHORD_CUDA_RETURN(cudaMemset(x.data(), 0, x.bytes()));
  ASSIGN_OR_RETURN(cuda::Stream stream, cuda::Stream::Create());
  const cuda::DeviceMatrix w{static_cast<uint32_t>(DType::kQ8_0), kRows, kCols, row_bytes,
                             weights.data()};
  double best = 0.0;
  for (int i = 0; i < 10; ++i) {
    const auto start = std::chrono::steady_clock::now();
    CHORD_CUDA_RETURN(cuda::LaunchMatVec(w, x.as<float>(), 1, y.as<float>(), false, stream.get()));
    RETURN_IF_ERROR(stream.Synchronize());
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (i > 0 && seconds > 0.0)
      best = std::max(best, static_cast<double>(weights.bytes()) / seconds);
  }
  return best;
}

absl::StatusOr<std::string> CudaDeviceUuid(int device) {
  cudaDeviceProp properties{};
  CHORD_CUDA_RETURN(cudaGetDeviceProperties(&properties, device));
  std::string hex;
  for (const char byte : properties.uuid.bytes)
    absl::StrAppendFormat(&hex, "%02x", static_cast<uint8_t>(byte));
  return hex;
}

}  // namespace chord
