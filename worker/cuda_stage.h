// A pipeline stage on an NVIDIA GPU: the CUDA counterpart of LlamaStage
// (worker/models/llama.h). It runs a contiguous layer range [first, end) of a
// Llama model with weights copied once into GPU memory in their GGUF block
// layouts (no dequantized copy), and owns its KV cache in GPU memory. When
// its weights do not fit a GPU budget, the last layers of the range stream
// from host memory instead, each step (CudaStreamedLayers).
//
// Decode batches (fewer than `gemm_min_tokens` tokens, or up to
// `int8_max_tokens` over Q4_K/Q6_K/Q8_0 weights) use quantized
// matrix-vector kernels that read each weight once per step for up to eight
// tokens; larger batches (many sequences, prefill) multiply Q4_K and Q6_K
// blocks on tensor cores in integer arithmetic, and the other types on tensor
// cores in half precision (from the blocks, or dequantized for cuBLAS),
// accumulating in float32.
// Activations crossing the stage boundary are the float32 residual stream in
// host memory, as with LlamaStage.
//
// Thread-safety: one thread drives a stage at a time. Errors: CUDA failures
// become statuses naming the call; UNAVAILABLE means the device context is
// lost (the caller should report it and exit). The TensorSource need not
// outlive Load: weights are copied to the GPU.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/model_config.h"
#include "common/tensor/dtype.h"
#include "worker/logits_request.h"
#include "worker/models/llama.h"

namespace chord {

class LayerSource;
class TensorSource;

// Layers of a stage that do not fit in GPU memory (worker/shard/device_split.h):
// [first, range.end) come from `source` (host memory, pinned for speed) and
// stream through two GPU buffers of `buffer_bytes` each
// (worker/cuda_layer_stream.h); `source` must outlive the stage.
struct CudaStreamedLayers {
  LayerSource* source = nullptr;  // null: every layer is copied to the GPU at Load
  int64_t first = 0;
  uint64_t buffer_bytes = 0;
};

struct CudaStageOptions {
  int device = 0;
  int64_t n_slots = 1;          // sequences live at once
  int64_t n_ctx = 0;            // positions per sequence; 0: the model's training context
  DType kv_type = DType::kF16;  // kF16 or kF32
  // Batches of at least this many tokens take the dequantize + GEMM path.
  int64_t gemm_min_tokens = 4;
  // One-token work replays a captured CUDA graph: Forward's whole step, and
  // RunLayers' layer pass (measured: -1.05 ms per token on llama2-7b; see
  // kernels/cuda/NOTES.md).
  bool use_graph = true;
  // Decode products over Q4_K weights round their activations to 8 bits and
  // use integer dot products (kernels/cuda/matvec_q8.h); off: float path.
  bool int8_activations = true;
  // Batches of up to this many tokens take the integer path for the types it
  // reads whatever gemm_min_tokens says (measured on llama2-7b: 8 sequences
  // decode at 631 tok/s on it, 467 through dequantize + GEMM), except Q4_K
  // and Q6_K batches of half_mma_min_tokens or more (below).
  int64_t int8_max_tokens = 8;
  // Larger batches up to this many tokens multiply on tensor cores straight
  // from the quantized blocks (kernels/cuda/matmul_mma.h) for the weight
  // types where that beats dequantize + cuBLAS; beyond it, and for the other
  // types, dequantize + cuBLAS. 0: never. Measured on llama2-7b Q4_K_M: 16
  // sequences 14.4 ms/step against 16.7; even at 64; slower at 128 (each
  // 64-token tile decodes the weights again).
  int64_t mma_max_tokens = 32;
  // Batches of half_mma_min_tokens up to half_mma_max_tokens tokens multiply
  // Q4_K and Q6_K weights on tensor cores in half precision, each weight
  // decoded in registers by the lane that multiplies it
  // (kernels/cuda/matmul_half_mma.h), ahead of every path above. Measured on
  // llama2-7b Q4_K_M (H200): 16, 32 and 64 sequences decode at 1.34x, 1.18x
  // and 1.14x the integer tensor-core kernel it replaced (kernels/cuda/NOTES.md,
  // v22); from 4 sequences it beats the integer matrix-vector kernels (8
  // sequences: 5.1 against 7.8 ms a step; 3: 4.9 against 4.6); prompts run
  // faster through dequantize + cuBLAS. Max 0: never; -1: as far as it beats
  // that on this device (cuda::MatMulHalfMmaBestMaxTokens: 192 tokens where
  // the wgmma kernel runs, 64 elsewhere).
  int64_t half_mma_min_tokens = 4;
  int64_t half_mma_max_tokens = -1;
  // The quantized products (integer and half tensor-core), the norms and the
  // layer's small kernels start while the kernel before them runs
  // (programmatic dependent launch: the products' weights stream in
  // meanwhile); the same results either way.
  bool overlap_launches = true;
  // One-token steps on the integer path (kernels/cuda/NOTES.md, v32):
  // `fused_swiglu`: the gate/up product writes SwiGLU and its rounding for
  // the down product as each 32-row group is done (the same bits as the
  // separate launch). `deferred_norms`: an RMSNorm's input is rounded before
  // its factor rather than after, and the products that read it apply the
  // factor to their sums, so that the product before the norm (the attention
  // output's, a down product's where matvec_q8.h's
  // MatVecQ8ResidualRmsRoundSupports takes it) rounds it in its epilogue; a
  // rounding step may then fall apart from the other paths' in rare elements.
  bool fused_swiglu = true;
  bool deferred_norms = true;
  // Times each Forward's work on the GPU with two events on its stream
  // (last_step_gpu_seconds), for benchmarks.
  bool time_steps = false;
  // Tests: the tensor-core kernel for every type it reads.
  bool mma_every_type = false;
  // Exact mode: every product takes the per-token matrix-vector kernels
  // (integer where the type has them, whatever the batch size), never GEMM or
  // the tensor-core product, so a token's results do not depend on the other
  // tokens of its step: not on its batch, not on how its prompt was chunked.
  // The other kernels (norms, RoPE, attention: a block per token and head)
  // already are per token. Costs prompt and large-batch speed (BENCHMARKS.md).
  bool exact = false;
};

class CudaStage {
 public:
  // INVALID_ARGUMENT for a bad range or options, UNIMPLEMENTED for a weight
  // type the GPU kernels do not read, UNAVAILABLE without a usable device,
  // RESOURCE_EXHAUSTED when GPU memory runs out.
  // `source` holds the stage tensors and the layers that do not stream.
  static absl::StatusOr<std::unique_ptr<CudaStage>> Load(const TensorSource& source,
                                                         const ModelConfig& config,
                                                         LayerRange range,
                                                         const CudaStageOptions& options,
                                                         CudaStreamedLayers streamed = {});
  ~CudaStage();
  CudaStage(const CudaStage&) = delete;
  CudaStage& operator=(const CudaStage&) = delete;

  const ModelConfig& config() const;
  LayerRange range() const;
  bool has_embedding() const { return range().first == 0; }
  bool has_output() const { return range().end == config().n_layer; }
  uint64_t weight_bytes() const;  // GPU memory held by weights (stream buffers included)
  // Bytes copied to the GPU for streamed layers so far.
  uint64_t streamed_bytes() const;
  uint64_t kv_bytes() const;  // GPU memory held by the KV cache

  // As LlamaStage, with host buffers: x gets tokens.size() rows of n_embd floats.
  absl::Status Embed(std::span<const int32_t> tokens, float* x);
  // Embed into DeviceRows instead, for RunLayers with input_on_device: queued
  // on the stage's stream, nothing crosses to the host.
  absl::Status EmbedOnDevice(std::span<const int32_t> tokens);
  // Runs the layers over x (batch.size() rows, host memory, updated in place),
  // reading and extending this stage's KV cache. One row replays a captured
  // graph when options.use_graph is set (same kernels, same results).
  absl::Status RunLayers(std::span<const BatchToken> batch, float* x);
  // RunLayers with either end of the residual stream left in GPU memory, in
  // DeviceRows (for NCCL links between GPU stages): `input_on_device`: the
  // rows are there already and x is not read; `output_on_device`: they stay
  // there, x is not written, and the call returns once the work is queued on
  // the stage's stream (what reads the rows next, a link's send or
  // LogitsOfDeviceRows, waits for it: a next stage can be told of the step
  // while this one still computes it).
  absl::Status RunLayers(std::span<const BatchToken> batch, float* x, bool input_on_device,
                         bool output_on_device);
  // The GPU buffer of the residual stream with room for n_rows rows (growing
  // it discards what it held), and the cudaStream_t the stage's work is
  // issued on.
  absl::StatusOr<float*> DeviceRows(int64_t n_rows);
  void* stream() const;
  // The logits of rows [first_row, first_row + n_rows) of the residual
  // stream a RunLayers left on the GPU (output_on_device), as Logits hands
  // them back.
  absl::Status LogitsOfDeviceRows(int64_t first_row, int64_t n_rows, const LogitsRequest& out);
  // Final norm and output projection of n_rows rows of x into n_vocab logits each.
  absl::Status Logits(const float* x, int64_t n_rows, float* logits);
  // The same, handing back only what `out` asks for: the greedy tokens are
  // picked on the GPU, and only the rows flagged are copied to the host.
  absl::Status Logits(const float* x, int64_t n_rows, const LogitsRequest& out);

  // A whole-model step with activations kept on the GPU (needs both the
  // embeddings and the output layer): embeds `tokens`, runs the layers and
  // writes n_vocab logits for each of the last `n_logit_rows` tokens into
  // `logits` (host). A one-token step is replayed from a captured CUDA graph
  // when options.use_graph is set (same kernels, same results).
  absl::Status Forward(std::span<const int32_t> tokens, std::span<const BatchToken> batch,
                       int64_t n_logit_rows, float* logits);
  // The same, handing back the logit rows as `out` asks (see Logits).
  absl::Status Forward(std::span<const int32_t> tokens, std::span<const BatchToken> batch,
                       int64_t n_logit_rows, const LogitsRequest& out);

  // With options.time_steps, the GPU time of the last Forward: from its first
  // operation on the stage's stream to the end of its last (the idle time
  // between steps, while the host takes the results and issues the next, is
  // not in it). 0 otherwise.
  double last_step_gpu_seconds() const;

  // Waits for the device and reports any asynchronous error.
  absl::Status Synchronize();
  // What every wait of the stage on its stream calls instead of a plain
  // synchronize, when set: a stage that queues its work behind an NCCL
  // receive waits through the link (NcclLink::WaitFor), which gives up on a
  // transfer whose peer is gone.
  void set_stream_waiter(std::function<absl::Status()> waiter);

  struct Impl;

 private:
  explicit CudaStage(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chord
