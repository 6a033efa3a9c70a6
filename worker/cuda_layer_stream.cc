#include "worker/cuda_layer_stream.h"

#include "absl/strings/str_format.h"
#include "common/base/status.h"
#include "worker/models/tensor_lookup.h"
#include "worker/models/tensor_source.h"

namespace chord {
namespace {

constexpr uint64_t kTensorAlignment = 64;  // as FetchedTensors::kAlignment

uint64_t AlignUp(uint64_t n) { return (n + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment; }

}  // namespace

absl::StatusOr<uint64_t> CopyLayerToDevice(const TensorSource& tensors, const ModelConfig& config,
                                           int64_t layer, uint8_t* base, uint64_t capacity,
                                           cudaStream_t stream, GpuLayerView* view) {
  uint64_t offset = 0;
  const auto place = [&](const std::string& name, const void* data, uint64_t bytes) -> absl::StatusOr<uint8_t*> {
    if (offset + bytes > capacity) {
      return absl::InternalError(absl::StrFormat(
          "layer %d does not fit its %d-byte GPU buffer (at %s)", layer, capacity, name));
    }
    uint8_t* at = base + offset;
    CHORD_CUDA_RETURN(cudaMemcpyAsync(at, data, bytes, cudaMemcpyHostToDevice, stream));
    offset += AlignUp(bytes);
    return at;
  };
  const auto norm = [&](const char* suffix, const float** out) -> absl::Status {
    const std::string name = LayerTensorName(layer, suffix);
    const gguf::TensorInfo* info = tensors.Find(name);
    if (info == nullptr || info->data == nullptr) return absl::NotFoundError(absl::StrCat("model tensor ", name, " is missing"));
    if (info->type != DType::kF32 || info->n_bytes != static_cast<uint64_t>(config.n_embd) * sizeof(float)) {
      return absl::UnimplementedError(absl::StrFormat(
          "model tensor %s must be %d F32 values to stream to the GPU", name, config.n_embd));
    }
    ASSIGN_OR_RETURN(uint8_t * at, place(name, info->data, info->n_bytes));
    *out = reinterpret_cast<const float*>(at);
    return absl::OkStatus();
  };
  const auto matrix = [&](const char* suffix, int64_t cols, int64_t rows, cuda::DeviceMatrix* out) -> absl::Status {
    const std::string name = LayerTensorName(layer, suffix);
    ASSIGN_OR_RETURN(const kernels::WeightMatrix host, LookupMatrix(tensors, name, cols, rows));
    const auto type = static_cast<uint32_t>(host.type);
    if (!cuda::MatVecSupports(type, host.cols)) {
      return absl::UnimplementedError(absl::StrFormat(
          "%s: the CUDA kernels do not read type %d with %d columns", name, type, host.cols));
    }
    ASSIGN_OR_RETURN(uint8_t * at, place(name, host.data, host.row_bytes * static_cast<uint64_t>(host.rows)));
    *out = cuda::DeviceMatrix{type, host.rows, host.cols, host.row_bytes, at};
    return absl::OkStatus();
  };
  const int64_t e = config.n_embd, kv = config.n_embd_kv(), ff = config.n_ff;
  RETURN_IF_ERROR(norm("attn_norm", &view->attn_norm));
  RETURN_IF_ERROR(matrix("attn_q", e, e, &view->wq));
  RETURN_IF_ERROR(matrix("attn_k", e, kv, &view->wk));
  RETURN_IF_ERROR(matrix("attn_v", e, kv, &view->wv));
  RETURN_IF_ERROR(matrix("attn_output", e, e, &view->wo));
  RETURN_IF_ERROR(norm("ffn_norm", &view->ffn_norm));
  RETURN_IF_ERROR(matrix("ffn_gate", e, ff, &view->gate));
  RETURN_IF_ERROR(matrix("ffn_up", e, ff, &view->up));
  RETURN_IF_ERROR(matrix("ffn_down", ff, e, &view->down));
  return offset;
}

absl::StatusOr<std::unique_ptr<CudaLayerStream>> CudaLayerStream::Create(LayerSource& source,
                                                                         const ModelConfig& config,
                                                                         LayerRange streamed,
                                                                         uint64_t buffer_bytes) {
  if (streamed.first < 0 || streamed.first >= streamed.end || streamed.end > config.n_layer ||
      buffer_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cannot stream layers [%d, %d) through %d-byte buffers", streamed.first, streamed.end,
        buffer_bytes));
  }
  std::unique_ptr<CudaLayerStream> stream(new CudaLayerStream(source, config, streamed));
  ASSIGN_OR_RETURN(stream->copy_, cuda::Stream::Create());
  for (Buffer& buffer : stream->buffers_) {
    ASSIGN_OR_RETURN(buffer.memory, cuda::DeviceBuffer::Allocate(buffer_bytes));
    ASSIGN_OR_RETURN(buffer.ready, cuda::Event::Create());
    ASSIGN_OR_RETURN(buffer.free, cuda::Event::Create());
  }
  return stream;
}

CudaLayerStream::~CudaLayerStream() { (void)ReleaseCopied(); }

CudaLayerStream::Buffer* CudaLayerStream::Holding(int64_t layer) {
  for (Buffer& buffer : buffers_) {
    if (buffer.layer == layer) return &buffer;
  }
  return nullptr;
}

absl::Status CudaLayerStream::ReleaseCopied() {
  bool holding = false;
  for (const Buffer& buffer : buffers_) holding |= buffer.holding;
  if (!holding) return absl::OkStatus();
  // Whatever happens, the host memory is not read after this.
  const absl::Status copied = copy_.Synchronize();
  for (Buffer& buffer : buffers_) {
    if (!buffer.holding) continue;
    source_.Release(buffer.layer);
    buffer.holding = false;
    if (!copied.ok()) buffer.layer = -1;
  }
  return copied;
}

absl::Status CudaLayerStream::Copy(int64_t layer) {
  RETURN_IF_ERROR(ReleaseCopied());
  Buffer& buffer = buffers_[static_cast<size_t>(next_buffer_)];
  buffer.layer = -1;
  ASSIGN_OR_RETURN(const TensorSource* tensors, source_.Acquire(layer));
  buffer.layer = layer;
  buffer.holding = true;
  absl::Status copied = buffer.free.MakeWait(copy_.get());
  uint64_t bytes = 0;
  if (copied.ok()) {
    absl::StatusOr<uint64_t> issued = CopyLayerToDevice(*tensors, config_, layer, buffer.memory.as<uint8_t>(),
                                                        buffer.memory.bytes(), copy_.get(), &buffer.view);
    copied = issued.status();
    if (issued.ok()) bytes = *issued;
  }
  if (copied.ok()) copied = buffer.ready.Record(copy_.get());
  if (!copied.ok()) {
    (void)ReleaseCopied();
    buffer.layer = -1;
    return copied;
  }
  next_buffer_ ^= 1;
  last_copied_ = layer;
  bytes_copied_ += bytes;
  return absl::OkStatus();
}

absl::StatusOr<GpuLayerView> CudaLayerStream::Begin(int64_t layer, cudaStream_t compute) {
  if (layer < streamed_.first || layer >= streamed_.end) {
    return absl::InternalError(absl::StrFormat("layer %d does not stream", layer));
  }
  if (Holding(layer) == nullptr) {
    RETURN_IF_ERROR(Copy(layer));
    if (After(layer) != layer) RETURN_IF_ERROR(Copy(After(layer)));
  }
  Buffer* buffer = Holding(layer);
  if (buffer == nullptr) return absl::InternalError("a streamed layer lost its buffer");
  RETURN_IF_ERROR(buffer->ready.MakeWait(compute));
  return buffer->view;
}

absl::Status CudaLayerStream::End(int64_t layer, cudaStream_t compute) {
  Buffer* buffer = Holding(layer);
  if (buffer == nullptr) return absl::InternalError(absl::StrFormat("layer %d is not in a buffer", layer));
  RETURN_IF_ERROR(buffer->free.Record(compute));
  return Copy(After(last_copied_));
}

void CudaLayerStream::Reset(cudaStream_t compute) {
  (void)cudaStreamSynchronize(compute);
  (void)ReleaseCopied();
  for (Buffer& buffer : buffers_) buffer.layer = -1;
}

}  // namespace chord
