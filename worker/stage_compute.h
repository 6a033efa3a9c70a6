// What a pipeline stage computes on: the layers of its range, its KV cache and,
// on the first and last stage, the embedding and output layers. The CPU
// implementation is LlamaStage over a paged KvCache; the CUDA one is
// CudaStage, which keeps its weights and KV cache in GPU memory (built when
// nvcc is found). StageExecutor validates steps and drives either the same way.
//
// Thread-safety: one thread drives a StageCompute at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/model_config.h"
#include "kernels/cpu/thread_pool.h"
#include "worker/kv_cache.h"
#include "worker/logits_request.h"
#include "worker/memory_pinner.h"
#include "worker/models/llama.h"
#include "worker/models/tensor_source.h"

namespace chord {

class NcclLink;
class ShardCache;

class StageCompute {
 public:
  virtual ~StageCompute() = default;

  virtual bool has_embedding() const = 0;
  virtual bool has_output() const = 0;
  virtual uint64_t kv_cache_bytes() const = 0;
  virtual double kv_cache_usage() const = 0;  // 0..1

  // Room in the KV cache for a step's slots, all or nothing: RESOURCE_EXHAUSTED
  // (and no change) when it cannot hold them (see KvCache::Reserve).
  virtual absl::Status Reserve(std::span<const SlotExtent> extents) = 0;
  // Forgets what the slot holds.
  virtual void Release(int64_t slot) = 0;

  virtual absl::Status Embed(std::span<const int32_t> tokens, float* x) = 0;
  // Runs the stage's layers over x (batch.size() rows of n_embd floats in host
  // memory, updated in place), reading and extending the KV cache.
  virtual absl::Status RunLayers(std::span<const BatchToken> batch, float* x) = 0;
  // The final norm and output projection of n_rows rows of x, handed back as
  // `out` asks (worker/logits_request.h).
  virtual absl::Status Logits(const float* x, int64_t n_rows, const LogitsRequest& out) = 0;

  // NCCL links between GPU stages (worker/nccl_link.h); a CPU stage has none
  // (UNIMPLEMENTED). ReceiveRows queues the receive of a step's n_rows input
  // rows from the previous stage into the stage's GPU buffer (the layers
  // queued next run once they land; the stage's waits go through `link`,
  // which must outlive it); RunLayersOnDevice is RunLayers
  // with the input already there (`input_on_device`, x not read) and/or the
  // output left there (`output_on_device`, x not written) for SendRows or
  // LogitsOfDeviceRows, which wait for the layers: RunLayersOnDevice may
  // return with them still running.
  virtual bool can_link() const { return false; }
  virtual absl::Status ReceiveRows(NcclLink& link, int64_t n_rows);
  virtual absl::Status RunLayersOnDevice(std::span<const BatchToken> batch, float* x,
                                         bool input_on_device, bool output_on_device);
  virtual absl::Status SendRows(NcclLink& link, int64_t n_rows);
  // On a first stage that can_link(): Embed into the stage's GPU buffer, for
  // RunLayersOnDevice with input_on_device (the rows never cross to the host).
  virtual absl::Status EmbedOnDevice(std::span<const int32_t> tokens);
  // On a last stage that can_link(): the logits of rows [first_row,
  // first_row + n_rows) of the output RunLayersOnDevice left on the device,
  // handed back as `out` asks (the rows never cross to the host).
  virtual absl::Status LogitsOfDeviceRows(int64_t first_row, int64_t n_rows,
                                          const LogitsRequest& out);
  // A stage holding the whole model can run a step from token ids to the
  // logits of its last n_logit_rows rows in one call, the rows staying where
  // the stage computes (the CUDA stage: on the GPU, a one-token step as one
  // captured graph). False: the caller uses Embed, RunLayers and Logits.
  virtual bool can_forward() const { return false; }
  virtual absl::Status Forward(std::span<const int32_t> tokens, std::span<const BatchToken> batch,
                               int64_t n_logit_rows, const LogitsRequest& out);
  // See LlamaStage::set_between_layers (a GPU stage's steps are short: unused).
  virtual void set_between_layers(std::function<void()> hook) = 0;
};

struct StageComputeOptions {
  LayerRange range;
  KvCacheShape kv;  // n_layers is taken from the range
  int device = 0;   // CUDA device ordinal
  // Every token through the same kernels whatever its batch or prompt chunk
  // (the CPU stage always is; the CUDA stage then keeps to its per-token
  // matrix-vector kernels).
  bool exact = false;
};

// The CPU stage over `tensors` (and `streamed` layers when the range does not
// fit in memory; may be null). `pool` must outlive it.
absl::StatusOr<std::unique_ptr<StageCompute>> MakeCpuStageCompute(
    const TensorSource& tensors, const ModelConfig& config, const StageComputeOptions& options,
    ThreadPool& pool, ShardCache* streamed);

// Layers of a GPU stage that stream to it from host memory each step
// (worker/shard/device_split.h): [first, range.end) from `source` through two
// GPU buffers of `buffer_bytes`. `source` must outlive the stage.
struct DeviceStreamedLayers {
  LayerSource* source = nullptr;  // null: every layer is copied to the GPU once
  int64_t first = 0;
  uint64_t buffer_bytes = 0;
};

// The CUDA stage (weights copied to the GPU once; `tensors`, which hold the
// stage tensors and the layers that do not stream, need not outlive it).
// UNIMPLEMENTED when chord was built without CUDA; UNAVAILABLE without a
// usable device.
absl::StatusOr<std::unique_ptr<StageCompute>> MakeCudaStageCompute(
    const TensorSource& tensors, const ModelConfig& config, const StageComputeOptions& options,
    DeviceStreamedLayers streamed = {});

// Page-locks host memory for GPU copies (cudaHostRegister); null in a build
// without CUDA.
const MemoryPinner* CudaMemoryPinner();

// True when this build has the CUDA backend.
bool CudaBackendBuilt();

// Matrix-vector throughput of GPU `device` in weight bytes per second (a
// 64 MiB Q8_0 product, best of 10): what the coordinator plans a CUDA worker's
// share of the layers by, as MeasureWeightThroughput does for the CPU.
absl::StatusOr<double> MeasureCudaWeightThroughput(int device);

// GPU `device`'s UUID as hex (the same GPU seen from any process).
absl::StatusOr<std::string> CudaDeviceUuid(int device);

}  // namespace chord
