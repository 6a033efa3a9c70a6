// Layers that do not fit in GPU memory, streamed through two GPU buffers
// (worker/shard/device_split.h): while the kernels read one layer from one
// buffer, the next streamed layer is copied from host memory into the other
// by cudaMemcpyAsync on a copy stream of its own. Events order the two
// streams: a copy into a buffer waits until the kernels of the layer it held
// are done, the kernels of a layer wait until its copy is done. The host
// memory is a LayerSource: every streamed layer held in (pinned) memory, or a
// shard cache that fetches from the loader what its budget cannot hold, with
// its own prefetch rules; copies from pinned memory run at the link's speed
// and overlap the kernels, copies from pageable memory are staged by the
// driver and do not.
//
// Layers stream in the order the stage runs them (first..end, then first
// again): after layer l's kernels are issued, the layer after the last one
// copied is copied into l's buffer, so each step's first streamed layers are
// already on their way while the step's resident layers run.
//
// Thread-safety: one thread (the stage's) uses it. A host layer is acquired
// only while no other is held (the previous copy is waited for and released
// first), so a shard cache with room for one layer is enough.
#pragma once

#include <array>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "common/model/model_config.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/matvec.h"
#include "worker/models/llama.h"

namespace chord {

class TensorSource;

// A layer's weights in GPU memory, as the kernels take them.
struct GpuLayerView {
  const float* attn_norm = nullptr;
  const float* ffn_norm = nullptr;
  cuda::DeviceMatrix wq, wk, wv, wo, gate, up, down;
};

// Copies layer `layer`'s tensors from `tensors` (host memory) into `base` (a
// device buffer of `capacity` bytes) on `stream`, packed in
// LlamaStage::LayerTensorNames order at 64-byte boundaries (as FetchedTensors
// packs them in host memory, so the same byte count), and describes them in
// `view`; returns the bytes the layer takes there. The norms must be F32 (as
// llama.cpp writes them). The host memory must stay valid until the copies
// are done.
absl::StatusOr<uint64_t> CopyLayerToDevice(const TensorSource& tensors, const ModelConfig& config,
                                           int64_t layer, uint8_t* base, uint64_t capacity,
                                           cudaStream_t stream, GpuLayerView* view);

class CudaLayerStream {
 public:
  // Streams layers `streamed` of `source` (which must outlive this) through
  // two buffers of `buffer_bytes` each on the current device.
  static absl::StatusOr<std::unique_ptr<CudaLayerStream>> Create(LayerSource& source,
                                                                 const ModelConfig& config,
                                                                 LayerRange streamed,
                                                                 uint64_t buffer_bytes);
  ~CudaLayerStream();  // waits for its copies and releases what it holds
  CudaLayerStream(const CudaLayerStream&) = delete;
  CudaLayerStream& operator=(const CudaLayerStream&) = delete;

  LayerRange streamed() const { return streamed_; }
  // Layer `layer`'s weights; work issued to `compute` after this waits for them.
  absl::StatusOr<GpuLayerView> Begin(int64_t layer, cudaStream_t compute);
  // The kernels reading `layer` are issued to `compute`: its buffer takes the
  // next layer to stream once they are done.
  absl::Status End(int64_t layer, cudaStream_t compute);
  // After an error between Begin and End: waits for both streams and forgets
  // what the buffers hold (the next Begin copies afresh).
  void Reset(cudaStream_t compute);
  uint64_t bytes_copied() const { return bytes_copied_; }

 private:
  struct Buffer {
    cuda::DeviceBuffer memory;
    cuda::Event ready;  // its copy is done
    cuda::Event free;   // the kernels that read it are done
    int64_t layer = -1;
    bool holding = false;  // `layer` is acquired from the source (copy maybe in flight)
    GpuLayerView view;
  };

  CudaLayerStream(LayerSource& source, const ModelConfig& config, LayerRange streamed)
      : source_(source), config_(config), streamed_(streamed) {}
  int64_t After(int64_t layer) const {
    return layer + 1 < streamed_.end ? layer + 1 : streamed_.first;
  }
  Buffer* Holding(int64_t layer);
  absl::Status ReleaseCopied();        // waits for held layers' copies, releases them
  absl::Status Copy(int64_t layer);    // into the next buffer in turn

  LayerSource& source_;
  const ModelConfig config_;
  const LayerRange streamed_;
  cuda::Stream copy_;
  std::array<Buffer, 2> buffers_;
  int next_buffer_ = 0;
  int64_t last_copied_ = -1;
  uint64_t bytes_copied_ = 0;
};

}  // namespace chord
