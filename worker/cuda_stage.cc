#include "worker/cuda_stage.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/base/status.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/matmul_half_mma.h"
#include "kernels/cuda/matmul_mma.h"
#include "kernels/cuda/matvec.h"
#include "kernels/cuda/matvec_q8.h"
#include "kernels/cuda/ops.h"
#include "worker/cuda_layer_stream.h"
#include "worker/models/tensor_lookup.h"
#include "worker/models/tensor_source.h"

namespace chord {

using cuda::DeviceBuffer;
using cuda::DeviceMatrix;

namespace {

// Prompt tokens a tile of tiled attention must hold on average to be used.
constexpr size_t kMinRowsPerTile = 4;

struct GpuMatrix {
  DeviceMatrix view;
  DeviceBuffer storage;
};

struct GpuLayer {
  DeviceBuffer attn_norm, ffn_norm;
  GpuMatrix wq, wk, wv, wo, gate, up, down;

  GpuLayerView View() const {
    return GpuLayerView{attn_norm.as<float>(),
                        ffn_norm.as<float>(),
                        wq.view,
                        wk.view,
                        wv.view,
                        wo.view,
                        gate.view,
                        up.view,
                        down.view};
  }
};

absl::StatusOr<GpuMatrix> UploadMatrix(const TensorSource& source, const std::string& name,
                                       int64_t cols, int64_t rows, uint64_t* total) {
  ASSIGN_OR_RETURN(kernels::WeightMatrix host, LookupMatrix(source, name, cols, rows));
  const auto type = static_cast<uint32_t>(host.type);
  if (!cuda::MatVecSupports(type, host.cols)) {
    return absl::UnimplementedError(absl::StrFormat(
        "%s: the CUDA kernels do not read type %d with %d columns", name, type, host.cols));
  }
  GpuMatrix m;
  const uint64_t bytes = host.row_bytes * static_cast<uint64_t>(host.rows);
  ASSIGN_OR_RETURN(m.storage, DeviceBuffer::Allocate(bytes));
  CHORD_CUDA_RETURN(cudaMemcpy(m.storage.data(), host.data, bytes, cudaMemcpyHostToDevice));
  m.view = DeviceMatrix{type, host.rows, host.cols, host.row_bytes, m.storage.data()};
  *total += bytes;
  return m;
}

absl::StatusOr<DeviceBuffer> UploadFloats(const std::vector<float>& values, uint64_t* total) {
  ASSIGN_OR_RETURN(DeviceBuffer buffer, DeviceBuffer::Allocate(values.size() * sizeof(float)));
  CHORD_CUDA_RETURN(
      cudaMemcpy(buffer.data(), values.data(), buffer.bytes(), cudaMemcpyHostToDevice));
  *total += buffer.bytes();
  return buffer;
}

// Grows a device buffer to at least `bytes` (contents are not kept).
absl::Status Ensure(DeviceBuffer& buffer, size_t bytes) {
  if (buffer.bytes() >= bytes) return absl::OkStatus();
  buffer = DeviceBuffer();
  ASSIGN_OR_RETURN(buffer, DeviceBuffer::Allocate(bytes));
  return absl::OkStatus();
}

}  // namespace

struct CudaStage::Impl {
  ModelConfig config;
  LayerRange range;
  CudaStageOptions options;
  cuda::Stream stream;
  std::function<absl::Status()> stream_waiter;  // see set_stream_waiter
  absl::Status Wait();
  // options.time_steps: events around the Forward in progress (step_timed).
  cuda::Event step_begin, step_end;
  bool step_timed = false;
  double last_step_gpu_seconds = 0.0;
  std::unique_ptr<cuda::BlasHandle> blas;
  std::vector<GpuLayer> layers;               // resident: range.first .. + layers.size()
  std::unique_ptr<CudaLayerStream> streamed;  // the rest, when they do not fit
  GpuMatrix token_embd, output;               // output.view aliases token_embd when tied
  DeviceBuffer output_norm, rope_freq_factors;
  DeviceBuffer kv_keys, kv_values;
  uint64_t weight_bytes = 0;
  int64_t n_ctx = 0;

  // Scratch, grown to the largest batch seen.
  int64_t capacity = 0;
  DeviceBuffer x, norm, q, k, v, attn, gate, up, tokens, ids, logits, greedy, half_x, half_w;
  // Activations rounded to 8 bits per 32 elements for the integer decode
  // kernels (Q8Activations).
  DeviceBuffer q8x;
  // Activations as halves in mma order for the half tensor-core path.
  DeviceBuffer mma_x;
  // What q8x (or, for kHalfMma, mma_x) holds: `in` of n rows of cols in that
  // form; Q/K/V (and gate/up) read the same normed rows and so convert them
  // once. Forgotten whenever the kernels rewrite a product's input buffer
  // (ForgetRounded).
  enum class Form : uint8_t { kQ8, kHalfMma };
  struct Rounded {
    const float* in = nullptr;
    int64_t n = 0, cols = 0;
    Form form = Form::kQ8;
    cuda::Q8Activations q8;  // kQ8: where (q8x unless a fused epilogue wrote it elsewhere)
  } rounded;
  // One-token steps: the SwiGLU rounding the gate/up product writes for the
  // down product (options.fused_swiglu), and the rounding of an RMSNorm's
  // input with its factor deferred (options.deferred_norms) that the output
  // product (or a launch of its own) writes, with its sums of squares. Apart
  // from q8x, which the products before them read.
  DeviceBuffer q8_ff, q8_norm, rms_sums;
  // The RMSNorm whose input rounding a product's epilogue has written for
  // the next Norm of x (one row) with this weight; null: none.
  struct NormAhead {
    const float* weight = nullptr;
    cuda::Q8Activations q8;
  } norm_ahead;
  DeviceBuffer mma_partials;  // split-K partial sums of the tensor-core product
  // The output and down products' sums that x still lacks: their split-K
  // partial sums (in mma_partials), added by the next RMSNorm as it reads x
  // (LaunchAddRmsNorm) or by FlushPendingX. count 0: none.
  cuda::PartialSums pending_x{nullptr, 0, 0};
  std::vector<cuda::TokenSlot> host_tokens;
  // No slot has two tokens in the uploaded batch (decode steps).
  bool one_token_per_slot = false;
  // Prompt-shaped batches attend in tiles (cuda::LaunchTiledAttention) when
  // n_attention_tiles > 0; the tiles are in attention_tiles.
  std::vector<cuda::AttentionTile> host_tiles;
  DeviceBuffer attention_tiles;
  int n_attention_tiles = 0;

  // Captured one-token work: the whole-model decode step (embedding, layers,
  // logits) and a pipeline stage's layer pass. Graphs bake in buffer
  // addresses, so each is recaptured whenever Reserve reallocates (a new epoch).
  struct CapturedStep {
    cuda::Graph graph;
    int64_t epoch = -1;
    bool failed = false;
    NormAhead norm_ahead_after;  // what the captured work leaves in norm_ahead
  };
  CapturedStep decode_step, layers_step;
  int64_t epoch = 0;

  cudaStream_t s() const { return stream.get(); }
  bool has_output_layer() const { return range.end == config.n_layer; }
  absl::Status Reserve(int64_t n_tokens);
  bool Int8Batch(int64_t n) const {
    return options.int8_activations && (n <= options.int8_max_tokens || options.exact);
  }
  // One token on the integer path, not in exact mode: where the products'
  // epilogues may do the next kernel's work.
  bool OneTokenInt8(int64_t n) const { return n == 1 && !options.exact && Int8Batch(1); }
  bool DeferredNorms(int64_t n) const { return options.deferred_norms && OneTokenInt8(n); }
  // Whether a product of w over n rows takes the half tensor-core kernel.
  bool HalfMma(const DeviceMatrix& w, int64_t n) const {
    return !options.exact && n >= options.half_mma_min_tokens && n <= options.half_mma_max_tokens &&
           cuda::MatMulHalfMmaSupports(w);
  }
  // The most tokens a rounding of activations holds.
  int64_t RoundedTokens(int64_t n) const {
    if (options.exact) return n;
    return std::min(n, options.int8_max_tokens);
  }
  absl::StatusOr<cuda::Q8Activations> RoundInput(const float* in, int64_t n, int64_t cols);
  absl::StatusOr<const uint16_t*> HalvesInMmaOrder(const float* in, int64_t n, int64_t cols);
  absl::Status MatMul(const DeviceMatrix& w, const float* in, int64_t n, float* out,
                      bool accumulate);
  // Products of the same input rows (Q/K/V, gate/up): on the integer and the
  // half tensor-core paths, consecutive matrices of one type and width go in
  // one launch.
  struct Product {
    const DeviceMatrix& w;
    float* out;
  };
  // With `results` (one per product), the half tensor-core products leave
  // their split-K partial sums for the kernel that reads them: results[i]
  // is where product i's value is held (mma_partials, or its out).
  absl::Status MatMuls(std::initializer_list<Product> products, const float* in, int64_t n,
                       std::span<cuda::PartialSums> results = {});
  void ForgetRounded() { rounded = {}; }
  // Whether a product of w over n rows reads rounded activations.
  bool RoundsFor(const DeviceMatrix& w, int64_t n) const {
    return Int8Batch(n) && cuda::MatVecQ8Supports(w.type, w.cols) && !HalfMma(w, n);
  }
  // RMSNorm of n rows of `rows` into `norm`, the input of a product by
  // `next`: when that product reads rounded activations, the rounding comes
  // out of the same launch. `deferred` (one row, DeferredNorms()): the products
  // that read it apply the norm's factor (cuda::Q8Activations::rms_sum_squares),
  // and `norm` is not written; the rounding is a product epilogue's
  // (norm_ahead) or a launch's of its own, the same bits.
  absl::Status Norm(const float* rows, const float* weight, int64_t n, const DeviceMatrix& next,
                    bool deferred = false);
  absl::Status UploadBatch(std::span<const BatchToken> batch);
  cuda::AttentionParams AttentionParamsFor() const {
    return {static_cast<int>(config.n_head), static_cast<int>(config.n_head_kv),
            static_cast<int>(config.head_dim), options.exact, one_token_per_slot};
  }
  absl::Status EmbedDevice(std::span<const int32_t> tokens);
  absl::Status CheckIds(std::span<const int32_t> tokens) const;
  absl::Status EmbedKernel(int64_t n);
  bool GraphFor(int64_t n_tokens) const {
    // Streamed layers wait on the host for their copies: not capturable.
    return n_tokens == 1 && options.use_graph && options.gemm_min_tokens > 1 && streamed == nullptr;
  }
  absl::Status Replay(CapturedStep& step, const std::function<absl::Status()>& issue);
  absl::Status LayersDevice(int64_t n_tokens);
  cuda::RopeParams RopeParamsFor() const;
  // Whether one token's Q/K/V of `layer` (index `index`) take one launch with
  // RoPE and the KV store (which also takes the attention norm's factor
  // deferred, with DeferredNorms()).
  bool QkvRopeFused(const GpuLayerView& layer, int64_t index, int64_t n) const;
  // Whether the output product reads its norm's rounding with the factor deferred.
  bool OutputNormDeferred(int64_t n) const;
  // Whether gate/up of `layer` write the down product's input themselves.
  bool SwiGluFused(const GpuLayerView& layer, int64_t n) const;
  // `product`'s epilogue (x += product) rounds x for the RMSNorm with
  // `norm_weight` (null: none) that the layer's next products read.
  bool NormFusedAfter(const DeviceMatrix& product, const float* norm_weight, int64_t n) const;
  // The weight of the RMSNorm after layer i of the resident layers, when the
  // products that read it take a deferred factor (null otherwise).
  const float* NormAfterLayer(size_t i, int64_t n) const;
  // The first layer's attention norm weight where the embedding of one token
  // rounds x for it (EmbedKernel), else null.
  const float* NormAfterEmbedding(int64_t n) const;
  // x += product(in), as MatMul; with `norm_weight`, the epilogue also
  // rounds x for that RMSNorm (norm_ahead).
  absl::Status ResidualProduct(const DeviceMatrix& product, const float* in, int64_t n,
                               const float* norm_weight);
  absl::Status RunLayer(const GpuLayerView& layer, int64_t index, int64_t n_tokens,
                        const float* next_norm);
  absl::Status FeedForwardHalfMma(const GpuLayerView& layer, int64_t n);
  absl::Status FlushPendingX(int64_t n);
  absl::Status LogitsDevice(const float* rows, int64_t n_rows);
  // Hands the n_rows rows of `logits` to the host as `out` asks, then waits.
  absl::Status CopyLogits(int64_t n_rows, const LogitsRequest& out);
  cuda::KvLayer KvFor(int64_t layer) const;
};

absl::Status CudaStage::Impl::Reserve(int64_t n) {
  if (n <= capacity) return absl::OkStatus();
  const int64_t e = config.n_embd, kv = config.n_embd_kv(), ff = config.n_ff;
  const auto f = [n](int64_t per) { return static_cast<size_t>(n * per) * sizeof(float); };
  RETURN_IF_ERROR(Ensure(x, f(e)));
  RETURN_IF_ERROR(Ensure(norm, f(e)));
  RETURN_IF_ERROR(Ensure(q, f(e)));
  RETURN_IF_ERROR(Ensure(k, f(kv)));
  RETURN_IF_ERROR(Ensure(v, f(kv)));
  RETURN_IF_ERROR(Ensure(attn, f(e)));
  RETURN_IF_ERROR(Ensure(gate, f(ff)));
  RETURN_IF_ERROR(Ensure(up, f(ff)));
  RETURN_IF_ERROR(Ensure(tokens, static_cast<size_t>(n) * sizeof(cuda::TokenSlot)));
  RETURN_IF_ERROR(Ensure(attention_tiles, static_cast<size_t>(n) * sizeof(cuda::AttentionTile)));
  RETURN_IF_ERROR(Ensure(ids, static_cast<size_t>(n) * sizeof(int32_t)));
  if (has_output_layer()) {
    RETURN_IF_ERROR(Ensure(logits, f(config.n_vocab)));
    RETURN_IF_ERROR(Ensure(greedy, static_cast<size_t>(n) * sizeof(int32_t)));
  }
  // Allocated here, not on first use: the decode graph bakes in its address.
  const int64_t widest = std::max(e, ff);
  RETURN_IF_ERROR(Ensure(q8x, cuda::Q8ActivationBytes(RoundedTokens(n), widest)));
  // Sized here too: the fused kernels that write it (RMSNorm, SwiGLU) run
  // after the products that read it are queued, and a reallocation would
  // lose what it holds.
  const int64_t half_rows = std::min(n, options.half_mma_max_tokens);
  if (half_rows > 0) RETURN_IF_ERROR(Ensure(mma_x, static_cast<size_t>(half_rows * widest) * 2));
  RETURN_IF_ERROR(Ensure(q8_ff, cuda::Q8ActivationBytes(1, ff)));
  RETURN_IF_ERROR(Ensure(q8_norm, cuda::Q8ActivationBytes(1, e)));
  RETURN_IF_ERROR(Ensure(rms_sums, static_cast<size_t>(e / 32 + 1) * sizeof(double)));
  capacity = n;
  ++epoch;
  ForgetRounded();
  return absl::OkStatus();
}

absl::Status CudaStage::Impl::Norm(const float* rows, const float* weight, int64_t n,
                                   const DeviceMatrix& next, bool deferred) {
  const int64_t e = config.n_embd;
  const NormAhead ahead = std::exchange(norm_ahead, {});
  if (deferred && DeferredNorms(n)) {
    if (ahead.weight != weight || rows != x.as<float>()) {
      cuda::Q8Activations q8 = cuda::Q8ActivationsIn(q8_norm.data(), 1, e);
      CHORD_CUDA_RETURN(cuda::LaunchRmsNormRoundDeferred(rows, weight, e, q8, rms_sums.as<double>(),
                                                         s(), options.overlap_launches));
      q8.rms_sum_squares = rms_sums.as<double>();
      q8.rms_eps = config.rms_eps;
      rounded = {norm.as<float>(), n, e, Form::kQ8, q8};
      return absl::OkStatus();
    }
    // A product's epilogue has rounded x for this norm already.
    rounded = {norm.as<float>(), n, e, Form::kQ8, ahead.q8};
    return absl::OkStatus();
  }
  if (pending_x.count > 0 && rows == x.as<float>()) {
    if (HalfMma(next, n) && next.cols == e && e % 4 == 0) {
      // The residual sums, the norm and the product's input halves in one launch.
      RETURN_IF_ERROR(Ensure(mma_x, static_cast<size_t>(n * e) * 2));
      CHORD_CUDA_RETURN(cuda::LaunchAddRmsNorm(
          x.as<float>(), pending_x, weight, e, static_cast<int>(n), config.rms_eps,
          norm.as<float>(), s(), mma_x.as<uint16_t>(), options.overlap_launches));
      pending_x = {nullptr, 0, 0};
      rounded = {norm.as<float>(), n, e, Form::kHalfMma};
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(FlushPendingX(n));
  }
  if (RoundsFor(next, n) && next.cols == e) {
    const cuda::Q8Activations q8 = cuda::Q8ActivationsIn(q8x.data(), n, e);
    CHORD_CUDA_RETURN(cuda::LaunchRmsNormQuantize(rows, weight, e, static_cast<int>(n),
                                                  config.rms_eps, norm.as<float>(), q8, s(),
                                                  options.overlap_launches));
    rounded = {norm.as<float>(), n, e, Form::kQ8, q8};
    return absl::OkStatus();
  }
  if (HalfMma(next, n) && next.cols == e && e % 4 == 0) {
    // The normed rows also as the halves the product reads, in one launch.
    RETURN_IF_ERROR(Ensure(mma_x, static_cast<size_t>(n * e) * 2));
    CHORD_CUDA_RETURN(cuda::LaunchRmsNorm(rows, weight, e, static_cast<int>(n), config.rms_eps,
                                          norm.as<float>(), s(), mma_x.as<uint16_t>(),
                                          options.overlap_launches));
    rounded = {norm.as<float>(), n, e, Form::kHalfMma};
    return absl::OkStatus();
  }
  CHORD_CUDA_RETURN(cuda::LaunchRmsNorm(rows, weight, e, static_cast<int>(n), config.rms_eps,
                                        norm.as<float>(), s()));
  ForgetRounded();
  return absl::OkStatus();
}

absl::StatusOr<cuda::Q8Activations> CudaStage::Impl::RoundInput(const float* in, int64_t n,
                                                                int64_t cols) {
  if (rounded.in != in || rounded.n != n || rounded.cols != cols || rounded.form != Form::kQ8) {
    const cuda::Q8Activations q8 = cuda::Q8ActivationsIn(q8x.data(), n, cols);
    RETURN_IF_ERROR(
        cuda::CudaStatus(cuda::LaunchQuantizeActivations(in, static_cast<int>(n), cols, q8, s()),
                         "LaunchQuantizeActivations"));
    rounded = {in, n, cols, Form::kQ8, q8};
  }
  return rounded.q8;
}

absl::StatusOr<const uint16_t*> CudaStage::Impl::HalvesInMmaOrder(const float* in, int64_t n,
                                                                  int64_t cols) {
  if (rounded.in != in || rounded.n != n || rounded.cols != cols ||
      rounded.form != Form::kHalfMma) {
    RETURN_IF_ERROR(Ensure(mma_x, static_cast<size_t>(n * cols) * 2));
    RETURN_IF_ERROR(
        cuda::CudaStatus(cuda::LaunchFloatToHalfMmaOrder(in, n, cols, mma_x.as<uint16_t>(), s()),
                         "LaunchFloatToHalfMmaOrder"));
    rounded = {in, n, cols, Form::kHalfMma};
  }
  return mma_x.as<uint16_t>();
}

absl::Status CudaStage::Impl::MatMuls(std::initializer_list<Product> products, const float* in,
                                      int64_t n, std::span<cuda::PartialSums> results) {
  const std::vector<Product> list(products);
  const bool defer = !results.empty();
  if (defer && results.size() != list.size()) {
    return absl::InternalError("MatMuls: one result per product");
  }
  // Runs of consecutive products that share a type and width and take the
  // same batched path (at most a group each): one launch a run.
  enum class Path : uint8_t { kHalfMma, kInt8, kOther };
  struct Run {
    size_t first, count;
    Path path;
    size_t scratch;  // split-K floats of a half tensor-core run
  };
  std::vector<Run> runs;
  size_t scratch_total = 0, scratch_most = 0;
  for (size_t i = 0; i < list.size();) {
    const DeviceMatrix& w = list[i].w;
    const Path path = HalfMma(w, n) ? Path::kHalfMma : RoundsFor(w, n) ? Path::kInt8 : Path::kOther;
    const size_t most = path == Path::kHalfMma ? cuda::kMatMulHalfMmaMaxGroup
                        : path == Path::kInt8  ? cuda::kMatVecQ8MaxGroup
                                               : 1;
    // One-token integer groups may change type once (Q/K in Q4_K, V in
    // Q6_K): the staged kernel reads both in one launch.
    const bool mixed = path == Path::kInt8 && n == 1;
    size_t count = 1;
    bool changed = false;
    while (i + count < list.size() && count < most && list[i + count].w.cols == w.cols &&
           (path == Path::kHalfMma ? HalfMma(list[i + count].w, n)
                                   : RoundsFor(list[i + count].w, n))) {
      const uint32_t type = list[i + count].w.type;
      if (type != list[i + count - 1].w.type) {
        if (!mixed || changed) break;
        changed = true;
      }
      ++count;
    }
    size_t scratch = 0;
    if (path == Path::kHalfMma) {
      DeviceMatrix group[cuda::kMatMulHalfMmaMaxGroup];
      for (size_t j = 0; j < count; ++j) group[j] = list[i + j].w;
      scratch = cuda::MatMulHalfMmaGroupScratchFloats({group, count}, static_cast<int>(n));
    }
    runs.push_back({i, count, path, scratch});
    scratch_total += scratch;
    scratch_most = std::max(scratch_most, scratch);
    i += count;
  }
  // Deferred partial sums must all stay until their reader runs: each run
  // its own share of the scratch. Sized before any launch (growing it frees
  // the old buffer).
  RETURN_IF_ERROR(Ensure(mma_partials, (defer ? scratch_total : scratch_most) * sizeof(float)));
  size_t scratch_offset = 0;
  for (const Run& run : runs) {
    const DeviceMatrix& w = list[run.first].w;
    DeviceMatrix group[std::max(cuda::kMatVecQ8MaxGroup, cuda::kMatMulHalfMmaMaxGroup)];
    float* outs[std::size(group)];
    for (size_t j = 0; j < run.count; ++j) {
      group[j] = list[run.first + j].w;
      outs[j] = list[run.first + j].out;
      if (defer) results[run.first + j] = {outs[j], 1, 0};
    }
    switch (run.path) {
      case Path::kHalfMma: {
        ASSIGN_OR_RETURN(const uint16_t* halves, HalvesInMmaOrder(in, n, w.cols));
        float* scratch = mma_partials.as<float>() + (defer ? scratch_offset : 0);
        RETURN_IF_ERROR(cuda::CudaStatus(
            cuda::LaunchMatMulHalfMmaGroup(
                {group, run.count}, halves, static_cast<int>(n), {outs, run.count}, scratch,
                run.scratch, s(),
                defer ? results.subspan(run.first, run.count) : std::span<cuda::PartialSums>{},
                options.overlap_launches),
            "LaunchMatMulHalfMmaGroup"));
        scratch_offset += run.scratch;
        break;
      }
      case Path::kInt8: {
        ASSIGN_OR_RETURN(const cuda::Q8Activations q8, RoundInput(in, n, w.cols));
        RETURN_IF_ERROR(
            cuda::CudaStatus(cuda::LaunchMatVecQ8Group({group, run.count}, q8, static_cast<int>(n),
                                                       {outs, run.count}, s(),
                                                       options.overlap_launches, options.exact),
                             "LaunchMatVecQ8Group"));
        break;
      }
      case Path::kOther:
        RETURN_IF_ERROR(MatMul(w, in, n, outs[0], false));
        break;
    }
  }
  return absl::OkStatus();
}

absl::Status CudaStage::Impl::MatMul(const DeviceMatrix& w, const float* in, int64_t n, float* out,
                                     bool accumulate) {
  if (HalfMma(w, n)) {
    ASSIGN_OR_RETURN(const uint16_t* halves, HalvesInMmaOrder(in, n, w.cols));
    const size_t scratch = cuda::MatMulHalfMmaScratchFloats(w, static_cast<int>(n));
    RETURN_IF_ERROR(Ensure(mma_partials, scratch * sizeof(float)));
    if (out == x.as<float>() && accumulate && scratch > 0 && pending_x.count == 0) {
      // A residual sum that K splits: its partial sums stay for the next
      // RMSNorm to add as it reads x (Norm), no separate launch to add them.
      float* outs[1] = {out};
      cuda::PartialSums sums[1];
      RETURN_IF_ERROR(
          cuda::CudaStatus(cuda::LaunchMatMulHalfMmaGroup({&w, 1}, halves, static_cast<int>(n),
                                                          outs, mma_partials.as<float>(), scratch,
                                                          s(), sums, options.overlap_launches),
                           "LaunchMatMulHalfMmaGroup"));
      pending_x = sums[0];
      return absl::OkStatus();
    }
    return cuda::CudaStatus(
        cuda::LaunchMatMulHalfMma(w, halves, static_cast<int>(n), out, accumulate,
                                  mma_partials.as<float>(), scratch, s(), options.overlap_launches),
        "LaunchMatMulHalfMma");
  }
  if (RoundsFor(w, n)) {
    ASSIGN_OR_RETURN(const cuda::Q8Activations q8, RoundInput(in, n, w.cols));
    return cuda::CudaStatus(cuda::LaunchMatVecQ8(w, q8, static_cast<int>(n), out, accumulate, s(),
                                                 options.overlap_launches, options.exact),
                            "LaunchMatVecQ8");
  }
  if (n < options.gemm_min_tokens || options.exact) {
    return cuda::CudaStatus(cuda::LaunchMatVec(w, in, static_cast<int>(n), out, accumulate, s()),
                            "LaunchMatVec");
  }
  RETURN_IF_ERROR(Ensure(half_x, static_cast<size_t>(n * w.cols) * 2));
  RETURN_IF_ERROR(cuda::CudaStatus(
      cuda::LaunchFloatToHalf(in, n * w.cols, half_x.as<uint16_t>(), s()), "LaunchFloatToHalf"));
  if (n <= options.mma_max_tokens && cuda::MatMulMmaSupports(w.type, w.cols) &&
      (cuda::MatMulMmaPreferred(w.type) || options.mma_every_type)) {
    const size_t scratch = cuda::MatMulMmaScratchFloats(w.rows, w.cols, static_cast<int>(n));
    RETURN_IF_ERROR(Ensure(mma_partials, scratch * sizeof(float)));
    return cuda::CudaStatus(
        cuda::LaunchMatMulMma(w, half_x.as<uint16_t>(), static_cast<int>(n), out, accumulate,
                              mma_partials.as<float>(), scratch, s()),
        "LaunchMatMulMma");
  }
  RETURN_IF_ERROR(Ensure(half_w, static_cast<size_t>(w.rows * w.cols) * 2));
  if (blas == nullptr) {
    ASSIGN_OR_RETURN(cuda::BlasHandle handle, cuda::BlasHandle::Create(s()));
    blas = std::make_unique<cuda::BlasHandle>(std::move(handle));
  }
  RETURN_IF_ERROR(cuda::CudaStatus(cuda::LaunchDequantizeToHalf(w, half_w.as<uint16_t>(), s()),
                                   "LaunchDequantizeToHalf"));
  return blas->GemmHalf(half_w.as<uint16_t>(), w.rows, w.cols, half_x.as<uint16_t>(), n, out,
                        accumulate);
}

cuda::KvLayer CudaStage::Impl::KvFor(int64_t layer) const {
  const bool half = options.kv_type == DType::kF16;
  const size_t elem = half ? 2 : 4;
  const size_t layer_bytes =
      static_cast<size_t>(options.n_slots * n_ctx * config.n_embd_kv()) * elem;
  return cuda::KvLayer{kv_keys.as<uint8_t>() + layer * layer_bytes,
                       kv_values.as<uint8_t>() + layer * layer_bytes, n_ctx,
                       static_cast<int>(config.n_embd_kv()), half};
}

absl::Status CudaStage::Impl::UploadBatch(std::span<const BatchToken> batch) {
  host_tokens.resize(batch.size());
  for (size_t t = 0; t < batch.size(); ++t) {
    const BatchToken& token = batch[t];
    if (token.slot < 0 || token.slot >= options.n_slots || token.position < 0 ||
        token.position >= n_ctx) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "batch token (slot %d, position %d) is outside the KV cache (%d slots of %d positions)",
          token.slot, token.position, options.n_slots, n_ctx));
    }
    host_tokens[t] = {static_cast<int32_t>(token.slot), static_cast<int32_t>(token.position)};
  }
  // One token (every decode step at batch 1) needs no bookkeeping.
  one_token_per_slot = true;
  if (host_tokens.size() > 1) {
    std::vector<bool> seen(static_cast<size_t>(options.n_slots), false);
    for (const cuda::TokenSlot& token : host_tokens) {
      one_token_per_slot = one_token_per_slot && !seen[static_cast<size_t>(token.slot)];
      seen[static_cast<size_t>(token.slot)] = true;
    }
  }
  RETURN_IF_ERROR(Reserve(static_cast<int64_t>(batch.size())));
  CHORD_CUDA_RETURN(cudaMemcpyAsync(tokens.data(), host_tokens.data(),
                                    host_tokens.size() * sizeof(cuda::TokenSlot),
                                    cudaMemcpyHostToDevice, s()));
  // Tiles only where they hold several tokens on average (a prompt, a chunk
  // of one): a batch of one token per sequence attends token by token.
  n_attention_tiles = 0;
  if (!options.exact && host_tokens.size() >= kMinRowsPerTile &&
      cuda::TiledAttentionSupports(AttentionParamsFor(), KvFor(0))) {
    host_tiles = cuda::PlanAttentionTiles(host_tokens);
    if (host_tiles.size() * kMinRowsPerTile <= host_tokens.size()) {
      CHORD_CUDA_RETURN(cudaMemcpyAsync(attention_tiles.data(), host_tiles.data(),
                                        host_tiles.size() * sizeof(cuda::AttentionTile),
                                        cudaMemcpyHostToDevice, s()));
      n_attention_tiles = static_cast<int>(host_tiles.size());
    }
  }
  return absl::OkStatus();
}

absl::Status CudaStage::Impl::CheckIds(std::span<const int32_t> token_ids) const {
  for (const int32_t id : token_ids) {
    if (id < 0 || id >= config.n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrFormat("token id %d is outside the vocabulary (%d tokens)", id, config.n_vocab));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaStage::Impl::EmbedKernel(int64_t n) {
  if (const float* first_norm = NormAfterEmbedding(n)) {
    // One token: its row and the first layer's norm rounding in one launch.
    cuda::RmsRounding next;
    next.weight = first_norm;
    next.out = cuda::Q8ActivationsIn(q8_norm.data(), 1, config.n_embd);
    next.sum_squares = rms_sums.as<double>();
    CHORD_CUDA_RETURN(cuda::LaunchDequantizeRowRmsRound(token_embd.view, ids.as<int32_t>(),
                                                        x.as<float>(), next, s()));
    norm_ahead = {first_norm, next.out};
    norm_ahead.q8.rms_sum_squares = next.sum_squares;
    norm_ahead.q8.rms_eps = config.rms_eps;
    return absl::OkStatus();
  }
  return cuda::CudaStatus(cuda::LaunchDequantizeRows(token_embd.view, ids.as<int32_t>(),
                                                     static_cast<int>(n), x.as<float>(), s()),
                          "LaunchDequantizeRows");
}

const float* CudaStage::Impl::NormAfterEmbedding(int64_t n) const {
  if (!DeferredNorms(n) || layers.empty() || range.first != 0 ||
      !cuda::DequantizeRowRmsRoundSupports(token_embd.view)) {
    return nullptr;
  }
  const GpuLayerView first = layers[0].View();
  return QkvRopeFused(first, 0, n) ? first.attn_norm : nullptr;
}

absl::Status CudaStage::Impl::EmbedDevice(std::span<const int32_t> token_ids) {
  RETURN_IF_ERROR(CheckIds(token_ids));
  const auto n = static_cast<int64_t>(token_ids.size());
  RETURN_IF_ERROR(Reserve(n));
  norm_ahead = {};
  CHORD_CUDA_RETURN(cudaMemcpyAsync(ids.data(), token_ids.data(),
                                    token_ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                    s()));
  return EmbedKernel(n);
}

// Replays `step` (capturing what `issue` launches first, when needed); the
// work's inputs (token ids, slots and positions, rows) are already in their
// device buffers. A failed capture turns that graph off and runs the kernels
// directly.
absl::Status CudaStage::Impl::Replay(CapturedStep& step,
                                     const std::function<absl::Status()>& issue) {
  if (step.failed) return issue();
  if (step.epoch != epoch || !step.graph.valid()) {
    RETURN_IF_ERROR(cuda::Graph::BeginCapture(s()));
    const absl::Status issued = issue();
    absl::StatusOr<cuda::Graph> graph = cuda::Graph::EndCapture(s());
    if (!issued.ok() || !graph.ok()) {
      (void)cudaGetLastError();
      step.failed = true;
      return issue();
    }
    step.graph = std::move(*graph);
    step.epoch = epoch;
    step.norm_ahead_after = norm_ahead;
  }
  norm_ahead = step.norm_ahead_after;
  return step.graph.Launch(s());
}

absl::Status CudaStage::Impl::LayersDevice(int64_t n) {
  pending_x = {nullptr, 0, 0};
  for (size_t i = 0; i < layers.size(); ++i) {
    RETURN_IF_ERROR(RunLayer(layers[i].View(), static_cast<int64_t>(i), n, NormAfterLayer(i, n)));
  }
  if (streamed != nullptr) {
    for (int64_t l = streamed->streamed().first; l < range.end; ++l) {
      absl::StatusOr<GpuLayerView> layer = streamed->Begin(l, s());
      absl::Status status = layer.status();
      if (status.ok()) status = RunLayer(*layer, l - range.first, n, nullptr);
      if (status.ok()) status = streamed->End(l, s());
      if (!status.ok()) {
        streamed->Reset(s());
        return status;
      }
    }
  }
  // x leaves the layers whole.
  return FlushPendingX(n);
}

absl::Status CudaStage::Impl::FlushPendingX(int64_t n) {
  if (pending_x.count == 0) return absl::OkStatus();
  const cuda::PartialSums add = pending_x;
  pending_x = {nullptr, 0, 0};
  return cuda::CudaStatus(cuda::LaunchAddPartialSums(add, n * config.n_embd, x.as<float>(), s()),
                          "LaunchAddPartialSums");
}

cuda::RopeParams CudaStage::Impl::RopeParamsFor() const {
  return {static_cast<int>(config.n_head),
          static_cast<int>(config.head_dim),
          static_cast<int>(config.n_rot),
          config.rope_freq_base,
          config.rope_freq_scale,
          config.has_rope_freq_factors ? rope_freq_factors.as<float>() : nullptr};
}

bool CudaStage::Impl::QkvRopeFused(const GpuLayerView& layer, int64_t index, int64_t n) const {
  const DeviceMatrix wqkv[3] = {layer.wq, layer.wk, layer.wv};
  return n == 1 && !options.exact && RoundsFor(layer.wq, n) && RoundsFor(layer.wk, n) &&
         RoundsFor(layer.wv, n) &&
         cuda::MatVecQ8QkvRopeSupports(wqkv, RopeParamsFor(), KvFor(index));
}

bool CudaStage::Impl::SwiGluFused(const GpuLayerView& layer, int64_t n) const {
  return options.fused_swiglu && OneTokenInt8(n) && RoundsFor(layer.gate, n) &&
         RoundsFor(layer.up, n) && RoundsFor(layer.down, n) && layer.gate.cols == config.n_embd &&
         layer.gate.rows == config.n_ff && cuda::MatVecQ8GateUpSwiGluSupports(layer.gate, layer.up);
}

bool CudaStage::Impl::NormFusedAfter(const DeviceMatrix& product, const float* norm_weight,
                                     int64_t n) const {
  return norm_weight != nullptr && DeferredNorms(n) && RoundsFor(product, n) &&
         product.rows == config.n_embd && cuda::MatVecQ8ResidualRmsRoundSupports(product);
}

bool CudaStage::Impl::OutputNormDeferred(int64_t n) const {
  return DeferredNorms(n) && has_output_layer() && RoundsFor(output.view, n) &&
         output.view.cols == config.n_embd && cuda::MatVecQ8ReadsDeferredRms({&output.view, 1});
}

const float* CudaStage::Impl::NormAfterLayer(size_t i, int64_t n) const {
  if (!DeferredNorms(n)) return nullptr;
  if (i + 1 < layers.size()) {
    // The next layer's Q/K/V read it, in their one launch.
    const GpuLayerView next = layers[i + 1].View();
    return QkvRopeFused(next, static_cast<int64_t>(i + 1), n) ? next.attn_norm : nullptr;
  }
  // After the last layer: the output norm (LogitsDevice), where no streamed
  // layer comes between.
  return streamed == nullptr && OutputNormDeferred(n) ? output_norm.as<float>() : nullptr;
}

absl::Status CudaStage::Impl::ResidualProduct(const DeviceMatrix& product, const float* in,
                                              int64_t n, const float* norm_weight) {
  if (!NormFusedAfter(product, norm_weight, n)) {
    return MatMul(product, in, n, x.as<float>(), true);
  }
  ASSIGN_OR_RETURN(cuda::Q8Activations q8, RoundInput(in, n, product.cols));
  cuda::RmsRounding next;
  next.weight = norm_weight;
  next.out = cuda::Q8ActivationsIn(q8_norm.data(), 1, config.n_embd);
  next.sum_squares = rms_sums.as<double>();
  CHORD_CUDA_RETURN(cuda::LaunchMatVecQ8ResidualRmsRound(product, q8, x.as<float>(), next, s(),
                                                         options.overlap_launches));
  norm_ahead = {norm_weight, next.out};
  norm_ahead.q8.rms_sum_squares = next.sum_squares;
  norm_ahead.q8.rms_eps = config.rms_eps;
  return absl::OkStatus();
}

// Layer `index` of the range (its KV cache) over the n rows of x.
// `next_norm`: the weight of the RMSNorm after the layer, when the layer's
// last product may round x for it (NormAfterLayer).
absl::Status CudaStage::Impl::RunLayer(const GpuLayerView& layer, int64_t index, int64_t n,
                                       const float* next_norm) {
  const auto nt = static_cast<int>(n);
  const auto* slots = tokens.as<cuda::TokenSlot>();
  const cuda::RopeParams rope = RopeParamsFor();
  const cuda::AttentionParams attention = AttentionParamsFor();
  const bool qkv_fused = QkvRopeFused(layer, index, n);
  RETURN_IF_ERROR(Norm(x.as<float>(), layer.attn_norm, n, layer.wq, qkv_fused));
  const cuda::KvLayer kv = KvFor(index);
  const DeviceMatrix wqkv[3] = {layer.wq, layer.wk, layer.wv};
  if (qkv_fused) {
    // One token: Q/K/V, RoPE and the KV store in one launch.
    ASSIGN_OR_RETURN(const cuda::Q8Activations q8, RoundInput(norm.as<float>(), n, layer.wq.cols));
    CHORD_CUDA_RETURN(cuda::LaunchMatVecQ8QkvRope(
        wqkv, q8, {q.as<float>(), k.as<float>(), v.as<float>(), slots, rope, kv}, s(),
        options.overlap_launches));
  } else {
    // Q/K/V's split sums are added by RoPE and the KV store as they read them.
    cuda::PartialSums qkv[3];
    RETURN_IF_ERROR(
        MatMuls({{layer.wq, q.as<float>()}, {layer.wk, k.as<float>()}, {layer.wv, v.as<float>()}},
                norm.as<float>(), n, qkv));
    CHORD_CUDA_RETURN(cuda::LaunchRopeStoreKv(qkv[0], qkv[1], qkv[2], q.as<float>(), k.as<float>(),
                                              static_cast<int>(config.n_head_kv), nt, slots, rope,
                                              kv, s(), options.overlap_launches));
  }
  if (n_attention_tiles > 0) {
    CHORD_CUDA_RETURN(cuda::LaunchTiledAttention(attention, kv, q.as<float>(), slots,
                                                 attention_tiles.as<cuda::AttentionTile>(),
                                                 n_attention_tiles, attn.as<float>(), s()));
    ForgetRounded();
  } else if (RoundsFor(layer.wo, n) && config.head_dim % 32 == 0 &&
             layer.wo.cols == config.n_head * config.head_dim) {
    // The attention output and its rounding for the output product, in one launch.
    const cuda::Q8Activations q8 = cuda::Q8ActivationsIn(q8x.data(), n, layer.wo.cols);
    CHORD_CUDA_RETURN(cuda::LaunchAttention(attention, kv, q.as<float>(), nt, slots,
                                            attn.as<float>(), s(), q8, options.overlap_launches));
    rounded = {attn.as<float>(), n, layer.wo.cols, Form::kQ8, q8};
  } else if (HalfMma(layer.wo, n) && layer.wo.cols == config.n_embd && config.head_dim % 4 == 0) {
    // The attention output and its halves for the output product, in one launch.
    RETURN_IF_ERROR(Ensure(mma_x, static_cast<size_t>(n * layer.wo.cols) * 2));
    CHORD_CUDA_RETURN(cuda::LaunchAttention(attention, kv, q.as<float>(), nt, slots,
                                            attn.as<float>(), s(), {}, options.overlap_launches,
                                            mma_x.as<uint16_t>()));
    rounded = {attn.as<float>(), n, layer.wo.cols, Form::kHalfMma};
  } else {
    CHORD_CUDA_RETURN(cuda::LaunchAttention(attention, kv, q.as<float>(), nt, slots,
                                            attn.as<float>(), s(), {}, options.overlap_launches));
    ForgetRounded();
  }
  // The feed-forward norm is deferred where the gate/up launch applies its
  // factor.
  const bool swiglu_fused = SwiGluFused(layer, n);
  const DeviceMatrix gate_up[2] = {layer.gate, layer.up};
  const bool ffn_deferred = DeferredNorms(n) && RoundsFor(layer.gate, n) &&
                            RoundsFor(layer.up, n) && layer.gate.cols == config.n_embd &&
                            cuda::MatVecQ8ReadsDeferredRms(gate_up);
  RETURN_IF_ERROR(
      ResidualProduct(layer.wo, attn.as<float>(), n, ffn_deferred ? layer.ffn_norm : nullptr));
  RETURN_IF_ERROR(Norm(x.as<float>(), layer.ffn_norm, n, layer.gate, ffn_deferred));
  if (swiglu_fused) {
    // Gate/up, SwiGLU and its rounding for the down product, in one launch.
    ASSIGN_OR_RETURN(const cuda::Q8Activations in,
                     RoundInput(norm.as<float>(), n, layer.gate.cols));
    const cuda::Q8Activations out = cuda::Q8ActivationsIn(q8_ff.data(), 1, config.n_ff);
    CHORD_CUDA_RETURN(cuda::LaunchMatVecQ8GateUpSwiGlu(layer.gate, layer.up, in, gate.as<float>(),
                                                       up.as<float>(), out, s(),
                                                       options.overlap_launches));
    rounded = {gate.as<float>(), n, config.n_ff, Form::kQ8, out};
    return ResidualProduct(layer.down, gate.as<float>(), n, next_norm);
  }
  if (HalfMma(layer.gate, n) && HalfMma(layer.up, n) && HalfMma(layer.down, n) &&
      layer.gate.type == layer.up.type && layer.gate.cols == layer.up.cols &&
      config.n_ff % 4 == 0) {
    return FeedForwardHalfMma(layer, n);
  }
  RETURN_IF_ERROR(
      MatMuls({{layer.gate, gate.as<float>()}, {layer.up, up.as<float>()}}, norm.as<float>(), n));
  if (RoundsFor(layer.down, n)) {
    // SwiGLU and the rounding of its result for the down product, in one launch.
    const cuda::Q8Activations q8 = cuda::Q8ActivationsIn(q8x.data(), n, config.n_ff);
    CHORD_CUDA_RETURN(cuda::LaunchSwiGluQuantize(gate.as<float>(), up.as<float>(), nt, config.n_ff,
                                                 q8, s(), options.overlap_launches));
    rounded = {gate.as<float>(), n, config.n_ff, Form::kQ8, q8};
  } else {
    CHORD_CUDA_RETURN(cuda::LaunchSwiGlu(gate.as<float>(), up.as<float>(), n * config.n_ff, s()));
    ForgetRounded();
  }
  return ResidualProduct(layer.down, gate.as<float>(), n, next_norm);
}

// The feed-forward half of a layer on the half tensor-core path: gate and up
// in one launch whose split sums SwiGLU adds as it reads them, writing the
// down product's input halves itself (no float gate, no separate sums or
// conversion).
absl::Status CudaStage::Impl::FeedForwardHalfMma(const GpuLayerView& layer, int64_t n) {
  const DeviceMatrix pair[2] = {layer.gate, layer.up};
  float* outs[2] = {gate.as<float>(), up.as<float>()};
  cuda::PartialSums sums[2];
  ASSIGN_OR_RETURN(const uint16_t* halves, HalvesInMmaOrder(norm.as<float>(), n, layer.gate.cols));
  const size_t scratch = cuda::MatMulHalfMmaGroupScratchFloats(pair, static_cast<int>(n));
  RETURN_IF_ERROR(Ensure(mma_partials, scratch * sizeof(float)));
  RETURN_IF_ERROR(
      cuda::CudaStatus(cuda::LaunchMatMulHalfMmaGroup(pair, halves, static_cast<int>(n), outs,
                                                      mma_partials.as<float>(), scratch, s(), sums,
                                                      options.overlap_launches),
                       "LaunchMatMulHalfMmaGroup"));
  // mma_x now holds the down product's input (the product above has read
  // the normed rows from it before SwiGLU runs: one stream).
  RETURN_IF_ERROR(Ensure(mma_x, static_cast<size_t>(n * config.n_ff) * 2));
  CHORD_CUDA_RETURN(cuda::LaunchSwiGluHalves(sums[0], sums[1], n * config.n_ff,
                                             mma_x.as<uint16_t>(), s(), options.overlap_launches));
  rounded = {gate.as<float>(), n, config.n_ff, Form::kHalfMma};
  return MatMul(layer.down, gate.as<float>(), n, x.as<float>(), true);
}

absl::Status CudaStage::Impl::LogitsDevice(const float* rows, int64_t n_rows) {
  RETURN_IF_ERROR(
      Norm(rows, output_norm.as<float>(), n_rows, output.view, OutputNormDeferred(n_rows)));
  return MatMul(output.view, norm.as<float>(), n_rows, logits.as<float>(), false);
}

absl::Status CudaStage::Impl::CopyLogits(int64_t n_rows, const LogitsRequest& out) {
  const auto rows = static_cast<size_t>(n_rows);
  if ((!out.full.empty() && out.full.size() != rows) ||
      (!out.greedy.empty() && out.greedy.size() != rows)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("a logits request for %d rows has %d row flags and %d greedy entries",
                        n_rows, out.full.size(), out.greedy.size()));
  }
  const int64_t n_vocab = config.n_vocab;
  if (!out.greedy.empty()) {
    CHORD_CUDA_RETURN(cuda::LaunchGreedyTokens(logits.as<float>(), static_cast<int>(n_rows),
                                               n_vocab, greedy.as<int32_t>(), s()));
    CHORD_CUDA_RETURN(cudaMemcpyAsync(out.greedy.data(), greedy.data(), rows * sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, s()));
  }
  // The rows asked for, one copy per run of consecutive ones.
  const auto wanted = [&](size_t r) { return out.full.empty() || out.full[r] != 0; };
  for (size_t r = 0; r < rows;) {
    if (!wanted(r)) {
      ++r;
      continue;
    }
    size_t end = r + 1;
    while (end < rows && wanted(end)) ++end;
    const size_t offset = r * static_cast<size_t>(n_vocab);
    CHORD_CUDA_RETURN(cudaMemcpyAsync(out.logits + offset, logits.as<float>() + offset,
                                      (end - r) * static_cast<size_t>(n_vocab) * sizeof(float),
                                      cudaMemcpyDeviceToHost, s()));
    r = end;
  }
  return Wait();
}

CudaStage::CudaStage(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaStage::~CudaStage() = default;

const ModelConfig& CudaStage::config() const { return impl_->config; }
LayerRange CudaStage::range() const { return impl_->range; }
uint64_t CudaStage::weight_bytes() const { return impl_->weight_bytes; }
uint64_t CudaStage::streamed_bytes() const {
  return impl_->streamed == nullptr ? 0 : impl_->streamed->bytes_copied();
}
uint64_t CudaStage::kv_bytes() const { return impl_->kv_keys.bytes() + impl_->kv_values.bytes(); }

absl::Status CudaStage::Impl::Wait() {
  if (step_timed) RETURN_IF_ERROR(step_end.Record(s()));
  RETURN_IF_ERROR(stream_waiter ? stream_waiter() : stream.Synchronize());
  if (step_timed) {
    step_timed = false;
    ASSIGN_OR_RETURN(const float ms, step_end.MillisecondsSince(step_begin));
    last_step_gpu_seconds = ms / 1e3;
  }
  return absl::OkStatus();
}

absl::Status CudaStage::Synchronize() { return impl_->Wait(); }

double CudaStage::last_step_gpu_seconds() const { return impl_->last_step_gpu_seconds; }

void CudaStage::set_stream_waiter(std::function<absl::Status()> waiter) {
  impl_->stream_waiter = std::move(waiter);
}

absl::Status CudaStage::Embed(std::span<const int32_t> tokens, float* x) {
  CHORD_CUDA_RETURN(cudaSetDevice(impl_->options.device));  // this thread may not have it current
  if (!has_embedding()) return absl::InternalError("this stage does not hold the embeddings");
  RETURN_IF_ERROR(impl_->EmbedDevice(tokens));
  const size_t bytes = tokens.size() * static_cast<size_t>(impl_->config.n_embd) * sizeof(float);
  CHORD_CUDA_RETURN(cudaMemcpyAsync(x, impl_->x.data(), bytes, cudaMemcpyDeviceToHost, impl_->s()));
  return Synchronize();
}

absl::Status CudaStage::EmbedOnDevice(std::span<const int32_t> tokens) {
  CHORD_CUDA_RETURN(cudaSetDevice(impl_->options.device));  // this thread may not have it current
  if (!has_embedding()) return absl::InternalError("this stage does not hold the embeddings");
  return impl_->EmbedDevice(tokens);
}

absl::Status CudaStage::RunLayers(std::span<const BatchToken> batch, float* x) {
  return RunLayers(batch, x, /*input_on_device=*/false, /*output_on_device=*/false);
}

absl::Status CudaStage::RunLayers(std::span<const BatchToken> batch, float* x, bool input_on_device,
                                  bool output_on_device) {
  CHORD_CUDA_RETURN(cudaSetDevice(impl_->options.device));  // this thread may not have it current
  if (batch.empty()) return absl::InvalidArgumentError("RunLayers: empty batch");
  RETURN_IF_ERROR(impl_->UploadBatch(batch));
  const size_t bytes = batch.size() * static_cast<size_t>(impl_->config.n_embd) * sizeof(float);
  if (!input_on_device) {
    CHORD_CUDA_RETURN(
        cudaMemcpyAsync(impl_->x.data(), x, bytes, cudaMemcpyHostToDevice, impl_->s()));
  }
  const auto n = static_cast<int64_t>(batch.size());
  // The rows come from the caller (or another stage): no product's epilogue
  // has rounded them for the first norm (and the layer pass's graph is
  // captured without that).
  impl_->norm_ahead = {};
  if (impl_->GraphFor(n)) {
    RETURN_IF_ERROR(impl_->Replay(impl_->layers_step, [this] { return impl_->LayersDevice(1); }));
  } else {
    RETURN_IF_ERROR(impl_->LayersDevice(n));
  }
  if (output_on_device) return absl::OkStatus();  // queued: the rows' next reader waits
  CHORD_CUDA_RETURN(cudaMemcpyAsync(x, impl_->x.data(), bytes, cudaMemcpyDeviceToHost, impl_->s()));
  return Synchronize();
}

absl::StatusOr<float*> CudaStage::DeviceRows(int64_t n_rows) {
  if (n_rows <= 0) return absl::InvalidArgumentError("DeviceRows: no rows");
  CHORD_CUDA_RETURN(cudaSetDevice(impl_->options.device));  // this thread may not have it current
  RETURN_IF_ERROR(impl_->Reserve(n_rows));
  impl_->norm_ahead = {};  // the caller may write the rows
  return impl_->x.as<float>();
}

void* CudaStage::stream() const { return impl_->s(); }

absl::Status CudaStage::Logits(const float* x, int64_t n_rows, float* logits) {
  return Logits(x, n_rows, LogitsRequest{logits});
}

absl::Status CudaStage::Logits(const float* x, int64_t n_rows, const LogitsRequest& out) {
  CHORD_CUDA_RETURN(cudaSetDevice(impl_->options.device));  // this thread may not have it current
  if (!has_output()) return absl::InternalError("this stage does not hold the output layer");
  if (n_rows <= 0) return absl::InvalidArgumentError("Logits: no rows");
  RETURN_IF_ERROR(impl_->Reserve(n_rows));
  const size_t bytes = static_cast<size_t>(n_rows * impl_->config.n_embd) * sizeof(float);
  CHORD_CUDA_RETURN(cudaMemcpyAsync(impl_->x.data(), x, bytes, cudaMemcpyHostToDevice, impl_->s()));
  impl_->norm_ahead = {};  // x is the caller's now
  RETURN_IF_ERROR(impl_->LogitsDevice(impl_->x.as<float>(), n_rows));
  return impl_->CopyLogits(n_rows, out);
}

absl::Status CudaStage::LogitsOfDeviceRows(int64_t first_row, int64_t n_rows,
                                           const LogitsRequest& out) {
  CHORD_CUDA_RETURN(cudaSetDevice(impl_->options.device));  // this thread may not have it current
  if (!has_output()) return absl::InternalError("this stage does not hold the output layer");
  if (n_rows <= 0 || first_row < 0 || first_row + n_rows > impl_->capacity) {
    return absl::InvalidArgumentError(
        absl::StrFormat("LogitsOfDeviceRows: rows [%d, %d) are not in the stage's %d-row buffer",
                        first_row, first_row + n_rows, impl_->capacity));
  }
  RETURN_IF_ERROR(
      impl_->LogitsDevice(impl_->x.as<float>() + first_row * impl_->config.n_embd, n_rows));
  return impl_->CopyLogits(n_rows, out);
}

absl::Status CudaStage::Forward(std::span<const int32_t> tokens, std::span<const BatchToken> batch,
                                int64_t n_logit_rows, float* logits) {
  return Forward(tokens, batch, n_logit_rows, LogitsRequest{logits});
}

absl::Status CudaStage::Forward(std::span<const int32_t> tokens, std::span<const BatchToken> batch,
                                int64_t n_logit_rows, const LogitsRequest& out) {
  CHORD_CUDA_RETURN(cudaSetDevice(impl_->options.device));  // this thread may not have it current
  if (!has_embedding() || !has_output()) {
    return absl::InternalError("Forward needs a stage holding the whole model");
  }
  if (tokens.size() != batch.size() || batch.empty() || n_logit_rows < 0 ||
      n_logit_rows > static_cast<int64_t>(batch.size())) {
    return absl::InvalidArgumentError("Forward: tokens and batch sizes disagree");
  }
  const auto n = static_cast<int64_t>(batch.size());
  if (impl_->options.time_steps) {
    RETURN_IF_ERROR(impl_->step_begin.Record(impl_->s()));
    impl_->step_timed = true;
  }
  RETURN_IF_ERROR(impl_->UploadBatch(batch));
  if (impl_->GraphFor(n) && n_logit_rows == 1) {
    RETURN_IF_ERROR(impl_->CheckIds(tokens));
    CHORD_CUDA_RETURN(cudaMemcpyAsync(impl_->ids.data(), tokens.data(), sizeof(int32_t),
                                      cudaMemcpyHostToDevice, impl_->s()));
    const auto whole_step = [this]() -> absl::Status {
      RETURN_IF_ERROR(impl_->EmbedKernel(1));
      RETURN_IF_ERROR(impl_->LayersDevice(1));
      return impl_->LogitsDevice(impl_->x.as<float>(), 1);
    };
    RETURN_IF_ERROR(impl_->Replay(impl_->decode_step, whole_step));
    return impl_->CopyLogits(1, out);
  }
  RETURN_IF_ERROR(impl_->EmbedDevice(tokens));
  RETURN_IF_ERROR(impl_->LayersDevice(n));
  if (n_logit_rows == 0) return Synchronize();
  const float* last = impl_->x.as<float>() + (n - n_logit_rows) * impl_->config.n_embd;
  RETURN_IF_ERROR(impl_->LogitsDevice(last, n_logit_rows));
  return impl_->CopyLogits(n_logit_rows, out);
}

absl::StatusOr<std::unique_ptr<CudaStage>> CudaStage::Load(const TensorSource& source,
                                                           const ModelConfig& config,
                                                           LayerRange range,
                                                           const CudaStageOptions& options,
                                                           CudaStreamedLayers streamed) {
  if (range.first < 0 || range.end > config.n_layer || range.first >= range.end) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layer range [%d, %d) is not within the model's %d layers", range.first,
                        range.end, config.n_layer));
  }
  if ((options.kv_type != DType::kF16 && options.kv_type != DType::kF32) || options.n_slots <= 0 ||
      options.n_ctx < 0 || options.gemm_min_tokens < 1 || options.int8_max_tokens < 0 ||
      options.mma_max_tokens < 0 || options.half_mma_min_tokens < 1 ||
      options.half_mma_max_tokens < -1) {
    return absl::InvalidArgumentError("CudaStage: bad KV cache or batching options");
  }
  if (config.head_dim <= 0 || config.head_dim > 256 || config.head_dim % 2 != 0) {
    return absl::UnimplementedError(
        absl::StrFormat("the CUDA backend's attention takes even head dimensions up to 256, not %d",
                        config.head_dim));
  }
  const int64_t resident_end = streamed.source != nullptr ? streamed.first : range.end;
  if (resident_end < range.first || resident_end > range.end) {
    return absl::InvalidArgumentError(
        absl::StrFormat("streamed layers from %d are not within the range [%d, %d)", resident_end,
                        range.first, range.end));
  }
  if (!cuda::HasCudaDevice()) return absl::UnavailableError("no usable CUDA device");
  CHORD_CUDA_RETURN(cudaSetDevice(options.device));
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->range = range;
  impl->options = options;
  if (options.half_mma_max_tokens < 0) {
    impl->options.half_mma_max_tokens = cuda::MatMulHalfMmaBestMaxTokens();
  }
  impl->n_ctx = options.n_ctx > 0 ? options.n_ctx : config.n_ctx_train;
  ASSIGN_OR_RETURN(impl->stream, cuda::Stream::Create());
  if (options.time_steps) {
    ASSIGN_OR_RETURN(impl->step_begin, cuda::Event::CreateTimed());
    ASSIGN_OR_RETURN(impl->step_end, cuda::Event::CreateTimed());
  }
  const int64_t e = config.n_embd, kv = config.n_embd_kv();
  uint64_t* total = &impl->weight_bytes;
  for (int64_t l = range.first; l < resident_end; ++l) {
    GpuLayer layer;
    const auto name = [l](const char* suffix) { return LayerTensorName(l, suffix); };
    ASSIGN_OR_RETURN(std::vector<float> attn_norm, LoadVector(source, name("attn_norm"), e));
    ASSIGN_OR_RETURN(layer.attn_norm, UploadFloats(attn_norm, total));
    ASSIGN_OR_RETURN(std::vector<float> ffn_norm, LoadVector(source, name("ffn_norm"), e));
    ASSIGN_OR_RETURN(layer.ffn_norm, UploadFloats(ffn_norm, total));
    ASSIGN_OR_RETURN(layer.wq, UploadMatrix(source, name("attn_q"), e, e, total));
    ASSIGN_OR_RETURN(layer.wk, UploadMatrix(source, name("attn_k"), e, kv, total));
    ASSIGN_OR_RETURN(layer.wv, UploadMatrix(source, name("attn_v"), e, kv, total));
    ASSIGN_OR_RETURN(layer.wo, UploadMatrix(source, name("attn_output"), e, e, total));
    ASSIGN_OR_RETURN(layer.gate, UploadMatrix(source, name("ffn_gate"), e, config.n_ff, total));
    ASSIGN_OR_RETURN(layer.up, UploadMatrix(source, name("ffn_up"), e, config.n_ff, total));
    ASSIGN_OR_RETURN(layer.down, UploadMatrix(source, name("ffn_down"), config.n_ff, e, total));
    impl->layers.push_back(std::move(layer));
  }
  if (config.has_rope_freq_factors) {
    ASSIGN_OR_RETURN(std::vector<float> factors,
                     LoadVector(source, kRopeFreqsName, config.n_rot / 2));
    ASSIGN_OR_RETURN(impl->rope_freq_factors, UploadFloats(factors, total));
  }
  const bool last = range.end == config.n_layer;
  if (range.first == 0 || (last && config.tied_embeddings)) {
    ASSIGN_OR_RETURN(impl->token_embd,
                     UploadMatrix(source, kTokenEmbdName, e, config.n_vocab, total));
  }
  if (last) {
    ASSIGN_OR_RETURN(std::vector<float> norm, LoadVector(source, kOutputNormName, e));
    ASSIGN_OR_RETURN(impl->output_norm, UploadFloats(norm, total));
    if (config.tied_embeddings) {
      impl->output.view = impl->token_embd.view;
    } else {
      ASSIGN_OR_RETURN(impl->output, UploadMatrix(source, kOutputName, e, config.n_vocab, total));
    }
  }
  const size_t kv_bytes =
      static_cast<size_t>((range.end - range.first) * options.n_slots * impl->n_ctx * kv) *
      (options.kv_type == DType::kF16 ? 2 : 4);
  if (resident_end < range.end) {
    ASSIGN_OR_RETURN(impl->streamed,
                     CudaLayerStream::Create(*streamed.source, config, {resident_end, range.end},
                                             streamed.buffer_bytes));
    *total += 2 * streamed.buffer_bytes;
  }
  ASSIGN_OR_RETURN(impl->kv_keys, DeviceBuffer::Allocate(kv_bytes));
  ASSIGN_OR_RETURN(impl->kv_values, DeviceBuffer::Allocate(kv_bytes));
  return std::unique_ptr<CudaStage>(new CudaStage(std::move(impl)));
}

}  // namespace chord
