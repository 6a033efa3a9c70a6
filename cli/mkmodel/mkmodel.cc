#include "cli/mkmodel/mkmodel.h"

#include <cmath>
#include <numbers>

#include "cli/mkmodel/vocab.h"
#include "common/base/status.h"
#include "common/gguf/gguf_file.h"
#include "common/quant/quant.h"

namespace chord::mkmodel {
namespace {

constexpr double kTokenEmbdStd = 0.3;
constexpr double kNormStd = 0.1;
// Rows per QuantizeRows call are bounded so the float staging buffer stays small.
constexpr int64_t kStagingFloats = int64_t{1} << 16;

uint64_t SplitMix64(uint64_t& state) {
  state += 0x9E3779B97F4A7C15ull;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Standard normals from one row's private stream (Box-Muller on splitmix64).
class RowRng {
 public:
  RowRng(uint64_t seed, size_t tensor_index, int64_t row) {
    uint64_t s = seed;
    state_ = SplitMix64(s) ^ (0xD1B54A32D192ED03ull * (tensor_index + 1));
    state_ = SplitMix64(state_) ^ (0x8CB92BA72F3D8DD7ull * static_cast<uint64_t>(row + 1));
  }
  double Normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = Uniform();
    const double u2 = Uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double theta = 2.0 * std::numbers::pi * u2;
    spare_ = r * std::sin(theta);
    has_spare_ = true;
    return r * std::cos(theta);
  }
  bool Bit() { return (SplitMix64(state_) >> 63) != 0; }

 private:
  double Uniform() {  // in (0, 1], so log() is finite
    return static_cast<double>((SplitMix64(state_) >> 11) + 1) * 0x1.0p-53;
  }
  uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

absl::Status AddModelMetadata(const ModelShape& s, const MkmodelOptions& options,
                              gguf::GgufWriter& w) {
  RETURN_IF_ERROR(w.AddString("general.architecture", "llama"));
  RETURN_IF_ERROR(w.AddString("general.name", s.name));
  RETURN_IF_ERROR(w.AddUint32("llama.context_length", static_cast<uint32_t>(s.n_ctx)));
  RETURN_IF_ERROR(w.AddUint32("llama.embedding_length", static_cast<uint32_t>(s.n_embd)));
  RETURN_IF_ERROR(w.AddUint32("llama.block_count", static_cast<uint32_t>(s.n_layer)));
  RETURN_IF_ERROR(w.AddUint32("llama.feed_forward_length", static_cast<uint32_t>(s.n_ff)));
  RETURN_IF_ERROR(w.AddUint32("llama.attention.head_count", static_cast<uint32_t>(s.n_head)));
  RETURN_IF_ERROR(w.AddUint32("llama.attention.head_count_kv", static_cast<uint32_t>(s.n_head_kv)));
  RETURN_IF_ERROR(w.AddUint32("llama.rope.dimension_count", static_cast<uint32_t>(s.head_dim())));
  RETURN_IF_ERROR(w.AddFloat32("llama.attention.layer_norm_rms_epsilon", s.rms_eps));
  RETURN_IF_ERROR(w.AddFloat32("llama.rope.freq_base", s.rope_base));
  RETURN_IF_ERROR(w.AddUint32("llama.vocab_size", static_cast<uint32_t>(s.n_vocab)));
  RETURN_IF_ERROR(w.AddUint32("general.file_type", LlamaFtype(options.file_type)));
  if (options.file_type != FileType::kF32 && options.file_type != FileType::kF16) {
    RETURN_IF_ERROR(w.AddUint32("general.quantization_version", 2));
  }
  if (options.alignment != gguf::kDefaultAlignment) {
    RETURN_IF_ERROR(w.AddUint32("general.alignment", options.alignment));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PreparedModel> PrepareModel(const MkmodelOptions& options) {
  PreparedModel model;
  model.shape = options.shape;
  std::unique_ptr<gguf::GgufFile> vocab_source;
  if (!options.vocab_from.empty()) {
    absl::StatusOr<std::unique_ptr<gguf::GgufFile>> opened =
        gguf::GgufFile::Open(options.vocab_from);
    if (!opened.ok()) {
      return absl::Status(opened.status().code(),
                          absl::StrCat("--vocab-from: ", opened.status().message()));
    }
    vocab_source = std::move(*opened);
    ASSIGN_OR_RETURN(model.shape.n_vocab, SourceVocabSize(*vocab_source));
  }
  ASSIGN_OR_RETURN(model.plan, PlanTensors(model.shape, options.file_type));
  RETURN_IF_ERROR(AddModelMetadata(model.shape, options, model.writer));
  if (vocab_source != nullptr) {
    RETURN_IF_ERROR(CopyTokenizerMetadata(*vocab_source, model.writer).status());
  } else {
    ASSIGN_OR_RETURN(const Vocab vocab, MakeSyntheticVocab(model.shape.n_vocab));
    RETURN_IF_ERROR(AddVocabMetadata(vocab, model.writer));
  }
  for (const TensorPlan& tensor : model.plan) {
    RETURN_IF_ERROR(model.writer.AddTensor(tensor.name, tensor.type, tensor.dims).status());
  }
  return model;
}

void GenerateRows(const TensorPlan& tensor, size_t tensor_index, uint64_t seed, int64_t row_begin,
                  int64_t n_rows, float* out) {
  const int64_t n = tensor.dims[0];
  double stddev = 1.0 / std::sqrt(static_cast<double>(n));
  if (tensor.role == TensorRole::kTokenEmbd) stddev = kTokenEmbdStd;
  for (int64_t r = 0; r < n_rows; ++r) {
    RowRng rng(seed, tensor_index, row_begin + r);
    float* row = out + r * n;
    if (IsNorm(tensor.role)) {
      const bool signs = tensor.role == TensorRole::kOutputNorm;
      for (int64_t i = 0; i < n; ++i) {
        const double v = 1.0 + kNormStd * rng.Normal();
        row[i] = static_cast<float>(signs && rng.Bit() ? -v : v);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) row[i] = static_cast<float>(stddev * rng.Normal());
    }
  }
}

absl::Status ProduceTensor(const TensorPlan& tensor, size_t tensor_index, uint64_t seed,
                           std::span<uint8_t> out) {
  const int64_t n = tensor.dims[0];
  int64_t rows = 1;
  for (size_t i = 1; i < tensor.dims.size(); ++i) rows *= tensor.dims[i];
  ASSIGN_OR_RETURN(const uint64_t row_bytes, RowBytes(tensor.type, n));
  if (out.size() != row_bytes * static_cast<uint64_t>(rows)) {
    return absl::InternalError(absl::StrFormat("%s: buffer of %d bytes, expected %d", tensor.name,
                                               out.size(), row_bytes * rows));
  }
  const int64_t chunk = std::max<int64_t>(1, kStagingFloats / n);
  std::vector<float> staging(static_cast<size_t>(std::min(chunk, rows) * n));
  for (int64_t r = 0; r < rows; r += chunk) {
    const int64_t count = std::min(chunk, rows - r);
    GenerateRows(tensor, tensor_index, seed, r, count, staging.data());
    RETURN_IF_ERROR(quant::QuantizeRows(tensor.type, staging.data(), count, n,
                                        out.data() + static_cast<uint64_t>(r) * row_bytes));
  }
  return absl::OkStatus();
}

absl::Status WriteModel(const MkmodelOptions& options, const std::string& path,
                        const gguf::WriteProgress& progress) {
  ASSIGN_OR_RETURN(PreparedModel model, PrepareModel(options));
  const std::vector<TensorPlan>& plan = model.plan;
  const uint64_t seed = options.seed;
  return model.writer.Write(
      path,
      [&plan, seed](size_t index, std::span<uint8_t> out) {
        return ProduceTensor(plan[index], index, seed, out);
      },
      std::max(1, options.threads), progress);
}

}  // namespace chord::mkmodel
