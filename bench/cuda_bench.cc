// Benchmark of the CUDA stage on one GPU: batch-1 decode (tok/s and the
// weight bytes streamed per second against a device-to-device copy measured in
// the same run), prefill of a long prompt, and aggregate decode of several
// sequences at once. With --make-model the model is generated first through
// the mkmodel library (seeded random weights, e.g. the llama2-7b preset).
// With --stream-budget F the same decode runs again with a GPU budget of F
// times the weights: the layers over it stream from pinned host memory each
// step, against the host-to-device copy bandwidth measured in the same run.
//
//   cuda_bench --model /tmp/l7.gguf --make-model --preset llama2-7b --type Q4_K_M
//   cuda_bench --model /tmp/l7.gguf --stream-budget 0.5
//   cuda_bench --int8-microbench [--int8-only "q4_K 11008x4096 n=1"] [--read-microbench]
//   cuda_bench --microbench-only [--microbench-tokens 16,64,128]
//
// With --profile decode|prefill|batch only one step runs inside the profiler's
// range (cudaProfilerStart/Stop), for `ncu --profile-from-start off`: a batch-1
// decode step, one prefill, or the last step of the first --batches size.
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "bench/read_probe.h"
#include "cli/mkmodel/mkmodel.h"
#include "common/gguf/gguf_file.h"
#include "common/model/model_config.h"
#include "common/tensor/dtype.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/matmul_half_mma.h"
#include "kernels/cuda/matmul_mma.h"
#include "kernels/cuda/matvec.h"
#include "kernels/cuda/matvec_q8.h"
#include "worker/cuda_stage.h"
#include "worker/fetched_tensors.h"
#include "worker/host_logits.h"
#include "worker/models/tensor_source.h"
#include "worker/shard/device_split.h"
#include "worker/shard/stage_weights.h"
#include "worker/stage_compute.h"

namespace chord {
namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

#define BENCH_CHECK(expr)                                                              \
  do {                                                                                 \
    const absl::Status status_ = (expr);                                               \
    if (!status_.ok()) {                                                               \
      std::fprintf(stderr, "%s: %s\n", #expr, std::string(status_.message()).c_str()); \
      return 1;                                                                        \
    }                                                                                  \
  } while (0)

// Mean microseconds of `reps` launches issued by `launch` on the default stream.
template <typename Launch>
absl::StatusOr<double> KernelMicroseconds(Launch&& launch, int reps = 50) {
  RETURN_IF_ERROR(launch());  // warm-up
  cudaEvent_t start, stop;
  CHORD_CUDA_RETURN(cudaEventCreate(&start));
  CHORD_CUDA_RETURN(cudaEventCreate(&stop));
  CHORD_CUDA_RETURN(cudaEventRecord(start));
  for (int i = 0; i < reps; ++i) RETURN_IF_ERROR(launch());
  CHORD_CUDA_RETURN(cudaEventRecord(stop));
  CHORD_CUDA_RETURN(cudaEventSynchronize(stop));
  float ms = 0;
  CHORD_CUDA_RETURN(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 1e3 * ms / reps;
}

// Device-to-device copy bandwidth, counting bytes read plus bytes written.
absl::StatusOr<double> CopyBandwidth() {
  const size_t bytes = size_t{2} << 30;
  ASSIGN_OR_RETURN(cuda::DeviceBuffer a, cuda::DeviceBuffer::Allocate(bytes));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer b, cuda::DeviceBuffer::Allocate(bytes));
  CHORD_CUDA_RETURN(cudaMemset(a.data(), 1, bytes));
  const auto copy = [&]() -> absl::Status {
    CHORD_CUDA_RETURN(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice));
    return absl::OkStatus();
  };
  ASSIGN_OR_RETURN(const double us, KernelMicroseconds(copy, 10));
  return 2.0 * static_cast<double>(bytes) / (us * 1e-6);
}

// Host-to-device copy bandwidth from pinned memory (what streamed layers move at).
absl::StatusOr<double> HostToDeviceBandwidth() {
  const size_t bytes = size_t{1} << 30;
  ASSIGN_OR_RETURN(cuda::DeviceBuffer device, cuda::DeviceBuffer::Allocate(bytes));
  void* host = nullptr;
  CHORD_CUDA_RETURN(cudaMallocHost(&host, bytes));
  std::memset(host, 1, bytes);
  const auto copy = [&]() -> absl::Status {
    CHORD_CUDA_RETURN(cudaMemcpyAsync(device.data(), host, bytes, cudaMemcpyHostToDevice));
    return absl::OkStatus();
  };
  absl::StatusOr<double> us = KernelMicroseconds(copy, 5);
  cudaFreeHost(host);
  if (!us.ok()) return us.status();
  return static_cast<double>(bytes) / (*us * 1e-6);
}

std::vector<int32_t> Prompt(int64_t n, int64_t n_vocab, int64_t seed) {
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    tokens[i] = static_cast<int32_t>((i * 7919 + seed * 104729 + 1) % n_vocab);
  return tokens;
}

// What a decode step hands back: every sequence's logits (n_vocab floats a
// row, copied to host memory), or only its greedy next token, picked on the
// GPU (what a worker returns for greedily sampled requests); that token is
// then the sequence's next input.
enum class StepOutput { kLogits, kGreedy };

// The seconds of a run of decode steps: on the host's clock (each step's
// Forward, its wait for the results and the issue of the next included) and
// on the GPU's (CudaStage::last_step_gpu_seconds added up; the stage times
// its steps with options.time_steps).
struct DecodeSeconds {
  double wall = 0.0;
  double gpu = 0.0;
};

// Prefills `slots` sequences with `prompt_len` tokens each, then decodes
// `steps` tokens for all of them in one batch per step; returns the decode
// steps' seconds. With `profile_last_step` the last step runs inside the
// profiler's range.
absl::StatusOr<DecodeSeconds> DecodeBatch(CudaStage& stage, int64_t slots, int64_t prompt_len,
                                          int64_t steps, StepOutput output = StepOutput::kLogits,
                                          bool profile_last_step = false) {
  const int64_t n_vocab = stage.config().n_vocab;
  // Page-locked, as a worker's (worker/host_logits.h).
  HostLogits host_logits(CudaMemoryPinner());
  const std::span<float> logits(host_logits.Reserve(static_cast<size_t>(slots * n_vocab)),
                                static_cast<size_t>(slots * n_vocab));
  for (int64_t s = 0; s < slots; ++s) {
    std::vector<BatchToken> batch;
    for (int64_t p = 0; p < prompt_len; ++p) batch.push_back({s, p});
    RETURN_IF_ERROR(stage.Forward(Prompt(prompt_len, n_vocab, s), batch, 1, logits.data()));
  }
  std::vector<int32_t> tokens(static_cast<size_t>(slots));
  for (int64_t s = 0; s < slots; ++s) tokens[s] = static_cast<int32_t>((31 + s) % n_vocab);
  std::vector<int32_t> greedy(static_cast<size_t>(slots));
  const std::vector<uint8_t> none_full(static_cast<size_t>(slots), 0);
  std::vector<BatchToken> batch(static_cast<size_t>(slots));
  DecodeSeconds seconds;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    for (int64_t s = 0; s < slots; ++s) batch[s] = {s, prompt_len + step};
    const bool profiled = profile_last_step && step + 1 == steps;
    if (profiled) cudaProfilerStart();
    if (output == StepOutput::kGreedy) {
      RETURN_IF_ERROR(
          stage.Forward(tokens, batch, slots, LogitsRequest{logits.data(), none_full, greedy}));
      tokens = greedy;
    } else {
      RETURN_IF_ERROR(stage.Forward(tokens, batch, slots, logits.data()));
      for (int64_t s = 0; s < slots; ++s) {
        tokens[s] = static_cast<int32_t>(((step + 1) * 31 + s) % n_vocab);
      }
    }
    if (profiled) cudaProfilerStop();
    seconds.gpu += stage.last_step_gpu_seconds();
  }
  seconds.wall = Seconds(start);
  return seconds;
}

// Batch-1 decode (and 8 sequences) with a GPU budget of `fraction` of the
// weights: the layers over it stream from pinned host memory each step.
absl::Status StreamedDecode(const gguf::GgufFile& file, const ModelConfig& config,
                            CudaStageOptions options, double fraction, int64_t steps) {
  const LayerRange all{0, config.n_layer};
  ASSIGN_OR_RETURN(const uint64_t stage_bytes,
                   FetchedTensors::BytesNeeded(file, LlamaStage::StageTensorNames(config, all)));
  std::vector<uint64_t> layer_bytes;
  uint64_t total = stage_bytes;
  for (int64_t l = 0; l < config.n_layer; ++l) {
    ASSIGN_OR_RETURN(const uint64_t bytes,
                     FetchedTensors::BytesNeeded(file, LlamaStage::LayerTensorNames(l)));
    layer_bytes.push_back(bytes);
    total += bytes;
  }
  const auto budget = static_cast<uint64_t>(fraction * static_cast<double>(total));
  ASSIGN_OR_RETURN(const DeviceSplit split, SplitForDevice(all, stage_bytes, layer_bytes, budget));
  std::vector<std::string> names;
  for (int64_t l = split.streamed_first; l < config.n_layer; ++l) {
    for (std::string& name : LlamaStage::LayerTensorNames(l)) names.push_back(std::move(name));
  }
  const auto pin_start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<FetchedTensors> host,
                   FetchedTensors::FetchBatch(
                       file, names,
                       [&file](std::span<const gguf::TensorRead> reads) {
                         for (const gguf::TensorRead& read : reads) {
                           std::memcpy(read.out, file.FindTensor(read.info->name)->data,
                                       read.info->n_bytes);
                         }
                         return absl::OkStatus();
                       },
                       CudaMemoryPinner()));
  const double host_tier_gb = static_cast<double>(host->bytes()) / 1e9;
  std::printf(
      "streamed: GPU budget %.3f GB (%.2f of %.3f GB): layers [0, %ld) resident, [%ld, %ld) (%.3f "
      "GB) "
      "stream from pinned host memory (filled and pinned in %.1f s) through two %.1f MB buffers\n",
      static_cast<double>(budget) / 1e9, fraction, static_cast<double>(total) / 1e9,
      static_cast<long>(split.streamed_first), static_cast<long>(split.streamed_first),
      static_cast<long>(config.n_layer), host_tier_gb, Seconds(pin_start),
      static_cast<double>(split.buffer_bytes) / 1e6);
  HeldLayers layers(std::move(host));
  ASSIGN_OR_RETURN(const double h2d, HostToDeviceBandwidth());
  ASSIGN_OR_RETURN(
      std::unique_ptr<CudaStage> stage,
      CudaStage::Load(GgufTensorSource(file), config, all, options,
                      CudaStreamedLayers{&layers, split.streamed_first, split.buffer_bytes}));
  std::printf("streamed: %.3f GB of weights on the GPU; host-to-device copy (pinned): %.1f GB/s\n",
              static_cast<double>(stage->weight_bytes()) / 1e9, h2d / 1e9);
  for (const int64_t slots : {int64_t{1}, int64_t{8}}) {
    if (slots > options.n_slots) continue;
    RETURN_IF_ERROR(DecodeBatch(*stage, slots, 16, 4).status());  // warm-up
    const uint64_t before = stage->streamed_bytes();
    ASSIGN_OR_RETURN(const DecodeSeconds decode, DecodeBatch(*stage, slots, 16, steps));
    const double seconds = decode.wall;
    // DecodeBatch prefills first: count the bytes of the decode steps only.
    const double per_step =
        static_cast<double>(stage->streamed_bytes() - before) / static_cast<double>(steps + slots);
    const double step_s = seconds / static_cast<double>(steps);
    std::printf(
        "streamed decode %ld sequences: %.1f tok/s, %.2f ms/step; %.3f GB streamed per step = %.1f "
        "GB/s "
        "(%.0f%% of the host-to-device copy; bound %.1f steps/s)\n",
        static_cast<long>(slots), static_cast<double>(slots) / step_s, step_s * 1e3, per_step / 1e9,
        per_step / step_s / 1e9, 100.0 * per_step / step_s / h2d, h2d / per_step);
  }
  return absl::OkStatus();
}

// One 11008 x 4096 matrix (llama2-7b's FFN) of random bytes per weight type
// (timing only: the values are meaningless), as GB/s of weights read: the
// decode kernels at 1 and 8 tokens, then batches of 16, 64 and 128 tokens on
// the tensor-core kernels (half from weights decoded in registers for Q4_K/Q6_K, half from shared
// memory) against dequantize + cuBLAS.
absl::Status MatVecMicrobench(const std::vector<int>& batch_tokens) {
  const int64_t rows = 11008, cols = 4096, max_tokens = 128;
  ASSIGN_OR_RETURN(cuda::BlasHandle blas, cuda::BlasHandle::Create(nullptr));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer x,
                   cuda::DeviceBuffer::Allocate(max_tokens * cols * sizeof(float)));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer x_half, cuda::DeviceBuffer::Allocate(max_tokens * cols * 2));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer w_half, cuda::DeviceBuffer::Allocate(rows * cols * 2));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer y,
                   cuda::DeviceBuffer::Allocate(max_tokens * rows * sizeof(float)));
  size_t scratch_floats_max = 0;
  for (const int n : batch_tokens) {
    if (n < 1 || n > max_tokens)
      return absl::InvalidArgumentError("--microbench-tokens: 1 to 128 each");
    scratch_floats_max = std::max(scratch_floats_max, cuda::MatMulMmaScratchFloats(rows, cols, n));
    for (const DType type : {DType::kQ4_K, DType::kQ6_K}) {
      const cuda::DeviceMatrix shape{static_cast<uint32_t>(type), rows, cols, *RowBytes(type, cols),
                                     x.data()};
      scratch_floats_max = std::max(scratch_floats_max, cuda::MatMulHalfMmaScratchFloats(shape, n));
    }
  }
  ASSIGN_OR_RETURN(cuda::DeviceBuffer scratch,
                   cuda::DeviceBuffer::Allocate(scratch_floats_max * sizeof(float) + 4));
  CHORD_CUDA_RETURN(cudaMemset(x.data(), 0x3c, x.bytes()));
  CHORD_CUDA_RETURN(cudaMemset(x_half.data(), 0x3c, x_half.bytes()));
  for (const DType type : {DType::kQ4_K, DType::kQ6_K, DType::kQ8_0, DType::kQ4_0, DType::kF16}) {
    ASSIGN_OR_RETURN(uint64_t row_bytes, RowBytes(type, cols));
    const size_t bytes = row_bytes * static_cast<size_t>(rows);
    std::vector<uint8_t> host(bytes);
    std::mt19937 rng(5);
    for (auto& b : host) b = static_cast<uint8_t>(rng() & 0x3b);  // keeps halves finite
    ASSIGN_OR_RETURN(cuda::DeviceBuffer w, cuda::DeviceBuffer::Allocate(bytes));
    CHORD_CUDA_RETURN(cudaMemcpy(w.data(), host.data(), bytes, cudaMemcpyHostToDevice));
    const cuda::DeviceMatrix m{static_cast<uint32_t>(type), rows, cols, row_bytes, w.data()};
    const std::string name(DTypeName(type));
    const auto report = [&](const char* kernel, int n, double us) {
      std::printf("%s %s %ldx%ld, %d token(s): %.1f us, %.0f GB/s of weights\n", kernel,
                  name.c_str(), static_cast<long>(rows), static_cast<long>(cols), n, us,
                  static_cast<double>(bytes) / (us * 1e3));
    };
    for (const int n : {1, 8}) {
      ASSIGN_OR_RETURN(const double us, KernelMicroseconds([&] {
                         return cuda::CudaStatus(
                             cuda::LaunchMatVec(m, x.as<float>(), n, y.as<float>(), false, nullptr),
                             "LaunchMatVec");
                       }));
      report("matvec", n, us);
    }
    for (const int n : batch_tokens) {
      if (cuda::MatMulHalfMmaSupports(m)) {
        const size_t half_scratch = cuda::MatMulHalfMmaScratchFloats(m, n);
        ASSIGN_OR_RETURN(
            const double half_mma, KernelMicroseconds([&] {
              return cuda::CudaStatus(
                  cuda::LaunchMatMulHalfMma(m, x_half.as<uint16_t>(), n, y.as<float>(), false,
                                            scratch.as<float>(), half_scratch, nullptr),
                  "LaunchMatMulHalfMma");
            }));
        report("half mma", n, half_mma);
      }
      const size_t scratch_floats = cuda::MatMulMmaScratchFloats(rows, cols, n);
      ASSIGN_OR_RETURN(
          const double mma, KernelMicroseconds([&] {
            return cuda::CudaStatus(
                cuda::LaunchMatMulMma(m, x_half.as<uint16_t>(), n, y.as<float>(), false,
                                      scratch.as<float>(), scratch_floats, nullptr),
                "LaunchMatMulMma");
          }));
      report("mma", n, mma);
      ASSIGN_OR_RETURN(const double gemm, KernelMicroseconds([&]() -> absl::Status {
                         RETURN_IF_ERROR(cuda::CudaStatus(
                             cuda::LaunchDequantizeToHalf(m, w_half.as<uint16_t>(), nullptr),
                             "LaunchDequantizeToHalf"));
                         return blas.GemmHalf(w_half.as<uint16_t>(), rows, cols,
                                              x_half.as<uint16_t>(), n, y.as<float>(), false);
                       }));
      report("dequantize+cublas", n, gemm);
    }
  }
  return absl::OkStatus();
}

// The integer decode products (LaunchMatVecQ8Shaped) over llama2-7b's
// matrix shapes, each launch on another copy of the matrix so that weights
// come from memory, not from the 50 MB L2: microseconds a launch, weight
// bytes a second and their ratio to the device-to-device copy, for 1, 2 and
// 8 tokens and several launch shapes. `only`: the rows whose label (as
// "q4_K 11008x4096 n=1 r=1 b=0 s=1") contains it.
absl::Status Int8MatVecMicrobench(double copy_bandwidth, const std::string& only) {
  const size_t pool_bytes = size_t{768} << 20;
  ASSIGN_OR_RETURN(cuda::DeviceBuffer pool, cuda::DeviceBuffer::Allocate(pool_bytes));
  const int64_t max_cols = 11008, max_tokens = 8;
  ASSIGN_OR_RETURN(cuda::DeviceBuffer x,
                   cuda::DeviceBuffer::Allocate(max_tokens * max_cols * sizeof(float)));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer q8,
                   cuda::DeviceBuffer::Allocate(cuda::Q8ActivationBytes(max_tokens, max_cols)));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer y,
                   cuda::DeviceBuffer::Allocate(max_tokens * max_cols * sizeof(float)));
  {
    std::vector<float> host(static_cast<size_t>(max_tokens * max_cols));
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (float& v : host) v = dist(rng);
    CHORD_CUDA_RETURN(
        cudaMemcpy(x.data(), host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  std::printf(
      "int8 matvec (weights from memory; %% of the %.0f GB/s copy; r: rows a warp, b: blocks an SM "
      "(0: "
      "a block per rows, or as many as fit with s > 1), s: shared-memory row buffers a warp (1: "
      "none); "
      "r = b = s = 0: the tuned default the stage uses):\n",
      copy_bandwidth / 1e9);
  std::printf(
      "| type | rows x cols | tokens | r | b | s | us | GB/s | of copy "
      "|\n|---|---|---|---|---|---|---|---|---|\n");
  for (const DType type : {DType::kQ4_K, DType::kQ6_K, DType::kQ8_0}) {
    for (const auto& [rows, cols] :
         std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {11008, 4096}, {4096, 11008}}) {
      ASSIGN_OR_RETURN(uint64_t row_bytes, RowBytes(type, cols));
      const size_t bytes = row_bytes * static_cast<size_t>(rows);
      const size_t stride = (bytes + 255) / 256 * 256;
      const size_t copies = pool_bytes / stride;
      bool filled = false;
      for (const int n : {1, 2, 8}) {
        const cuda::Q8Activations a = cuda::Q8ActivationsIn(q8.data(), n, cols);
        CHORD_CUDA_RETURN(cuda::LaunchQuantizeActivations(x.as<float>(), n, cols, a, nullptr));
        for (const cuda::MatVecQ8Shape shape :
             {cuda::MatVecQ8Shape{1, 0, 1}, cuda::MatVecQ8Shape{2, 0, 1},
              cuda::MatVecQ8Shape{1, 0, 2}, cuda::MatVecQ8Shape{1, 0, 3},
              cuda::MatVecQ8Shape{1, 0, 4}, cuda::MatVecQ8Shape{1, 4, 2},
              cuda::MatVecQ8Shape{1, 6, 3}, cuda::MatVecQ8Shape{}}) {
          // Staged shapes are one-token passes (rows over 4096 split over warps).
          if ((n > 2 && shape.rows_per_warp > 1) || (n > 1 && shape.stages > 1)) continue;
          const std::string label =
              absl::StrFormat("%s %ldx%ld n=%d r=%d b=%d s=%d", DTypeName(type), rows, cols, n,
                              shape.rows_per_warp, shape.blocks_per_sm, shape.stages);
          if (label.find(only) == std::string::npos) continue;
          if (!filled) {
            std::vector<uint8_t> host(bytes);
            std::mt19937 rng(5);
            for (auto& b : host) b = static_cast<uint8_t>(rng() & 0x3b);  // keeps halves finite
            for (size_t c = 0; c < copies; ++c) {
              CHORD_CUDA_RETURN(cudaMemcpy(pool.as<uint8_t>() + c * stride, host.data(), bytes,
                                           cudaMemcpyHostToDevice));
            }
            filled = true;
          }
          size_t next = 0;
          ASSIGN_OR_RETURN(
              const double us,
              KernelMicroseconds(
                  [&] {
                    const cuda::DeviceMatrix m{static_cast<uint32_t>(type), rows, cols, row_bytes,
                                               pool.as<uint8_t>() + (next++ % copies) * stride};
                    return cuda::CudaStatus(
                        cuda::LaunchMatVecQ8Shaped(m, a, n, y.as<float>(), shape, nullptr),
                        "LaunchMatVecQ8Shaped");
                  },
                  200));
          const double gbs = static_cast<double>(bytes) / (us * 1e3);
          std::printf("| %s | %ldx%ld | %d | %d | %d | %d | %.1f | %.0f | %.1f%% |\n",
                      std::string(DTypeName(type)).c_str(), static_cast<long>(rows),
                      static_cast<long>(cols), n, shape.rows_per_warp, shape.blocks_per_sm,
                      shape.stages, us, gbs, 100.0 * gbs * 1e9 / copy_bandwidth);
        }
      }
    }
  }
  return absl::OkStatus();
}

// Kernels that only read, over the byte counts of llama2-7b Q4_K_M's
// one-token products (the attention output; the Q4_K down; Q/K/V in Q4_K,
// and with a Q6_K V; the Q6_K down; gate/up; the output head), each launch
// from another copy in a pool larger than L2 (weights from memory): the
// floor under a product of those bytes, timed as the int8 microbenchmark
// times its launches.
absl::Status ReadMicrobench(double copy_bandwidth) {
  const size_t pool_bytes = size_t{1} << 30;
  ASSIGN_OR_RETURN(cuda::DeviceBuffer pool, cuda::DeviceBuffer::Allocate(pool_bytes));
  ASSIGN_OR_RETURN(cuda::DeviceBuffer sink, cuda::DeviceBuffer::Allocate(sizeof(uint32_t)));
  CHORD_CUDA_RETURN(cudaMemset(pool.data(), 0x35, pool_bytes));
  const int sms = cuda::MultiprocessorCount();
  if (sms <= 0) return absl::UnavailableError("the device's SM count is unknown");
  // Microseconds a launch of `read` over `bytes` takes, each launch reading
  // the next copy in the pool.
  const auto time_reads = [&](size_t bytes, const auto& read) -> absl::StatusOr<double> {
    const size_t stride = (bytes + 4095) / 4096 * 4096;
    const size_t copies = pool_bytes / stride;
    size_t next = 0;
    return KernelMicroseconds(
        [&] { return read(pool.as<uint8_t>() + (next++ % copies) * stride, sink.as<uint32_t>()); },
        200);
  };
  std::printf(
      "read-only kernels (%% of the %.0f GB/s copy):\n| MB | blocks x threads | us | GB/s | of "
      "copy |\n|---|---|---|---|---|\n",
      copy_bandwidth / 1e9);
  for (const size_t bytes : {size_t{9481368}, size_t{25422496}, size_t{28335120}, size_t{32683248},
                             size_t{37029968}, size_t{50748544}, size_t{107544832}}) {
    for (const auto& [per_sm, threads] : std::vector<std::pair<int, int>>{{4, 512}, {2, 512}}) {
      ASSIGN_OR_RETURN(
          const double us, time_reads(bytes, [&](const uint8_t* data, uint32_t* out) {
            return cuda::CudaStatus(
                bench::LaunchReadProbe(data, bytes / 16 * 16, out, per_sm * sms, threads, nullptr),
                "LaunchReadProbe");
          }));
      const double gbs = static_cast<double>(bytes) / (us * 1e3);
      std::printf("| %.1f | %d x %d | %.1f | %.0f | %.1f%% |\n", static_cast<double>(bytes) / 1e6,
                  per_sm * sms, threads, us, gbs, 100.0 * gbs * 1e9 / copy_bandwidth);
    }
  }
  // The same bytes read as the one-token products read them: whole rows of
  // a 4096-wide Q4_K matrix (2304 bytes), each warp its own rows.
  std::printf(
      "\nrows of 2304 bytes, warp w of blocks of 8 reading rows w, w + warps, ...:\n| rows | MB | "
      "read | us | GB/s | of copy |\n|---|---|---|---|---|---|\n");
  constexpr int kRowBytes = 2304;
  for (const int64_t rows : {int64_t{4096}, int64_t{12288}, int64_t{22016}}) {
    const size_t bytes = static_cast<size_t>(rows) * kRowBytes;
    struct Read {
      bench::RowRead how;
      int stages;
      const char* name;
    };
    for (const Read& read : {Read{bench::RowRead::kCopies, 2, "16-byte copies, 2 buffers"},
                             Read{bench::RowRead::kCopies, 3, "16-byte copies, 3 buffers"},
                             Read{bench::RowRead::kBulk, 2, "bulk copies, 2 buffers"},
                             Read{bench::RowRead::kBulk, 3, "bulk copies, 3 buffers"},
                             Read{bench::RowRead::kLoads, 0, "loads, 2 rows"}}) {
      ASSIGN_OR_RETURN(const double us, time_reads(bytes, [&](const uint8_t* data, uint32_t* out) {
                         return cuda::CudaStatus(
                             bench::LaunchReadRowsProbe(data, rows, kRowBytes, read.how,
                                                        read.stages, 8, 0, out, nullptr),
                             "LaunchReadRowsProbe");
                       }));
      const double gbs = static_cast<double>(bytes) / (us * 1e3);
      std::printf("| %ld | %.1f | %s | %.1f | %.0f | %.1f%% |\n", static_cast<long>(rows),
                  static_cast<double>(bytes) / 1e6, read.name, us, gbs,
                  100.0 * gbs * 1e9 / copy_bandwidth);
    }
  }
  return absl::OkStatus();
}

int Run(int argc, char** argv) {
  CLI::App app{"chord CUDA stage benchmark"};
  std::string model_path, preset = "llama2-7b", type = "Q4_K_M", batches = "8,32,64";
  std::string profile;
  std::string step_output = "logits";
  bool make_model = false;
  int64_t decode_steps = 128, prefill_len = 512, prompt_len = 128;
  int64_t gemm_min_tokens = CudaStageOptions{}.gemm_min_tokens;
  bool use_graph = CudaStageOptions{}.use_graph;
  bool int8_activations = CudaStageOptions{}.int8_activations;
  int64_t int8_max_tokens = CudaStageOptions{}.int8_max_tokens;
  int64_t mma_max_tokens = CudaStageOptions{}.mma_max_tokens;
  int64_t half_mma_min_tokens = CudaStageOptions{}.half_mma_min_tokens;
  int64_t half_mma_max_tokens = CudaStageOptions{}.half_mma_max_tokens;
  bool exact = false;
  double stream_budget = 0.0;
  bool microbench = true, microbench_only = false;
  std::string microbench_tokens = "16,64,128";
  bool int8_microbench = false;
  bool read_microbench = false;
  std::string int8_only;
  bool overlap_launches = CudaStageOptions{}.overlap_launches;
  bool fused_swiglu = CudaStageOptions{}.fused_swiglu;
  bool deferred_norms = CudaStageOptions{}.deferred_norms;
  app.add_option("--model", model_path,
                 "GGUF model (required unless --int8-microbench or --read-microbench)");
  app.add_flag("--make-model", make_model, "generate the model first if the file is missing");
  app.add_option("--preset", preset, "mkmodel preset for --make-model");
  app.add_option("--type", type, "mkmodel file type for --make-model");
  app.add_option("--decode-steps", decode_steps);
  app.add_option("--prefill", prefill_len);
  app.add_option("--prompt", prompt_len, "prompt tokens per sequence for batched decode");
  app.add_option("--gemm-min-tokens", gemm_min_tokens, "batches this large use dequantize + GEMM");
  app.add_flag("--graph,!--no-graph", use_graph, "replay one-token decode steps from a CUDA graph");
  app.add_flag("--int8,!--no-int8", int8_activations,
               "decode products over Q4_K weights with 8-bit activations and integer dot products");
  app.add_option("--int8-max-tokens", int8_max_tokens,
                 "batches up to this size take the integer path (Q4_K)");
  app.add_option("--mma-max-tokens", mma_max_tokens,
                 "larger batches up to this size multiply on tensor cores from the quantized "
                 "blocks (0: never)");
  app.add_option("--half-mma-min-tokens", half_mma_min_tokens,
                 "the smallest batch for the half-precision tensor-core kernel");
  app.add_option("--half-mma-max-tokens", half_mma_max_tokens,
                 "batches up to this size multiply Q4_K/Q6_K on tensor cores in half precision "
                 "from weights decoded in registers (0: never; -1: as far as it wins on this "
                 "device)");
  app.add_flag("--exact", exact,
               "exact mode: per-token kernels whatever the batch (results independent of it)");
  app.add_flag(
      "--overlap,!--no-overlap", overlap_launches,
      "products, norms and the layer's small kernels start while the kernel before them runs "
      "(programmatic dependent launch)");
  app.add_flag("--fused-swiglu,!--no-fused-swiglu", fused_swiglu,
               "one-token steps: SwiGLU and its rounding in the gate/up product's epilogue");
  app.add_flag("--deferred-norms,!--no-deferred-norms", deferred_norms,
               "one-token steps: RMSNorm inputs rounded before the factor, in the epilogue of the "
               "product before them where it can");
  app.add_flag("--microbench,!--no-microbench", microbench,
               "time single products of each weight type first");
  app.add_flag("--microbench-only", microbench_only, "only the single products (no model)");
  app.add_option("--microbench-tokens", microbench_tokens,
                 "comma-separated batch sizes of the tensor-core products");
  app.add_flag(
      "--int8-microbench", int8_microbench,
      "time the integer decode products over llama2-7b's shapes (weights from memory), then stop");
  app.add_flag("--read-microbench", read_microbench,
               "time read-only kernels over the bytes of llama2-7b's one-token products (weights "
               "from memory), then stop (with --int8-microbench: after it)");
  app.add_option("--int8-only", int8_only,
                 "with --int8-microbench: the rows whose label contains this");
  app.add_option(
         "--stream-budget", stream_budget,
         "also decode with a GPU budget of this fraction of the weights (layers over it stream "
         "from pinned host memory); 0: skip")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--batches", batches, "comma-separated sequence counts for aggregate decode");
  app.add_option("--step-output", step_output,
                 "what each aggregate decode step hands back: every sequence's logits, or its "
                 "greedy next token picked on the GPU (then its next input)")
      ->check(CLI::IsMember({"logits", "greedy"}));
  app.add_option("--profile", profile,
                 "run one step inside the profiler's range: a batch-1 decode step, one prefill, or "
                 "the last step of the first --batches size")
      ->check(CLI::IsMember({"decode", "prefill", "batch"}));
  CLI11_PARSE(app, argc, argv);
  if (int8_microbench || read_microbench) {
    auto copy = CopyBandwidth();
    BENCH_CHECK(copy.status());
    if (int8_microbench) BENCH_CHECK(Int8MatVecMicrobench(*copy, int8_only));
    if (read_microbench) BENCH_CHECK(ReadMicrobench(*copy));
    return 0;
  }
  std::vector<int> product_tokens;
  for (const auto& part : CLI::detail::split(microbench_tokens, ','))
    product_tokens.push_back(std::stoi(part));
  if (microbench_only) {
    BENCH_CHECK(MatVecMicrobench(product_tokens));
    return 0;
  }
  if (model_path.empty()) {
    std::fprintf(stderr, "--model is required\n");
    return 1;
  }

  if (make_model && !std::filesystem::exists(model_path)) {
    mkmodel::MkmodelOptions options;
    const auto shape = mkmodel::FindPreset(preset);
    const auto file_type = mkmodel::ParseFileType(type);
    if (!shape || !file_type) {
      std::fprintf(stderr, "unknown preset or type\n");
      return 1;
    }
    options.shape = *shape;
    options.file_type = *file_type;
    options.seed = 1;
    options.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const auto start = std::chrono::steady_clock::now();
    BENCH_CHECK(mkmodel::WriteModel(options, model_path));
    std::printf("generated %s in %.1f s\n", model_path.c_str(), Seconds(start));
  }
  auto file = gguf::GgufFile::Open(model_path);
  BENCH_CHECK(file.status());
  auto config = ReadModelConfig(**file);
  BENCH_CHECK(config.status());
  std::vector<int64_t> batch_sizes;
  for (const auto& part : CLI::detail::split(batches, ',')) batch_sizes.push_back(std::stoll(part));
  const int64_t max_slots =
      std::max<int64_t>(1, *std::max_element(batch_sizes.begin(), batch_sizes.end()));

  auto copy = CopyBandwidth();
  BENCH_CHECK(copy.status());
  if (microbench) BENCH_CHECK(MatVecMicrobench(product_tokens));
  CudaStageOptions options;
  options.n_slots = max_slots;
  options.gemm_min_tokens = gemm_min_tokens;
  options.use_graph = use_graph;
  options.int8_activations = int8_activations;
  options.int8_max_tokens = int8_max_tokens;
  options.mma_max_tokens = mma_max_tokens;
  options.half_mma_min_tokens = half_mma_min_tokens;
  options.half_mma_max_tokens = half_mma_max_tokens;
  options.exact = exact;
  options.overlap_launches = overlap_launches;
  options.fused_swiglu = fused_swiglu;
  options.deferred_norms = deferred_norms;
  options.time_steps = true;
  options.n_ctx = std::max(prefill_len, prompt_len + decode_steps) + 16;
  auto stage =
      CudaStage::Load(GgufTensorSource(**file), *config, LayerRange{0, config->n_layer}, options);
  BENCH_CHECK(stage.status());
  const double weight_gb = static_cast<double>((*stage)->weight_bytes()) / 1e9;
  std::printf("model %s: %.3f GB of weights on the GPU, KV cache %.2f GB\n", model_path.c_str(),
              weight_gb, static_cast<double>((*stage)->kv_bytes()) / 1e9);
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", *copy / 1e9);

  // Batch-1 decode after a 16-token prompt; the first steps warm up.
  auto one = DecodeBatch(**stage, 1, 16, 8);
  BENCH_CHECK(one.status());
  one = DecodeBatch(**stage, 1, 16, decode_steps, StepOutput::kLogits, profile == "decode");
  BENCH_CHECK(one.status());
  // The rate on GPU time (what the GPU spends on a token); on the host's
  // clock, each step also waits for its logits and then issues the next.
  const double tps = static_cast<double>(decode_steps) / one->gpu;
  const double achieved = weight_gb * 1e9 * tps;
  std::printf(
      "decode batch 1: %.1f tok/s, %.3f ms/token GPU time, %.0f GB/s weights = %.1f%% of copy "
      "(copy bound %.0f tok/s); host clock %.3f ms/token (%.1f tok/s)\n",
      tps, 1e3 / tps, achieved / 1e9, 100.0 * achieved / *copy, *copy / (weight_gb * 1e9),
      1e3 * one->wall / static_cast<double>(decode_steps),
      static_cast<double>(decode_steps) / one->wall);

  // Prefill: one prompt of prefill_len tokens, logits of the last.
  const int64_t n_vocab = config->n_vocab;
  if (prefill_len > 0) {
    std::vector<float> logits(static_cast<size_t>(n_vocab));
    std::vector<BatchToken> batch;
    for (int64_t p = 0; p < prefill_len; ++p) batch.push_back({0, p});
    const std::vector<int32_t> prompt = Prompt(prefill_len, n_vocab, 99);
    BENCH_CHECK((*stage)->Forward(prompt, batch, 1, logits.data()));
    const auto start = std::chrono::steady_clock::now();
    const int reps = 5;
    for (int i = 0; i < reps; ++i) BENCH_CHECK((*stage)->Forward(prompt, batch, 1, logits.data()));
    const double prefill_s = Seconds(start) / reps;
    if (profile == "prefill") {
      cudaProfilerStart();
      BENCH_CHECK((*stage)->Forward(prompt, batch, 1, logits.data()));
      cudaProfilerStop();
    }
    std::printf("prefill %ld tokens: %.1f ms, %.0f tok/s\n", static_cast<long>(prefill_len),
                prefill_s * 1e3, static_cast<double>(prefill_len) / prefill_s);
  }

  const StepOutput output = step_output == "greedy" ? StepOutput::kGreedy : StepOutput::kLogits;
  for (const int64_t b : batch_sizes) {
    auto seconds = DecodeBatch(**stage, b, prompt_len, decode_steps, output,
                               profile == "batch" && b == batch_sizes[0]);
    BENCH_CHECK(seconds.status());
    std::printf(
        "aggregate decode %ld sequences (%ld-token prompts, %ld new, %s back): %.0f tok/s, %.2f "
        "ms/step (GPU time %.2f ms/step)\n",
        static_cast<long>(b), static_cast<long>(prompt_len), static_cast<long>(decode_steps),
        output == StepOutput::kGreedy ? "greedy tokens" : "all logits",
        static_cast<double>(b * decode_steps) / seconds->wall,
        1e3 * seconds->wall / static_cast<double>(decode_steps),
        1e3 * seconds->gpu / static_cast<double>(decode_steps));
  }
  if (stream_budget > 0.0) {
    stage->reset();
    BENCH_CHECK(StreamedDecode(**file, *config, options, stream_budget,
                               std::min<int64_t>(decode_steps, 32)));
  }
  return 0;
}

}  // namespace
}  // namespace chord

int main(int argc, char** argv) { return chord::Run(argc, argv); }
