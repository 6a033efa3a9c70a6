#include "cli/mkmodel/model_spec.h"

#include <array>
#include <cctype>

#include "common/base/status.h"
#include "common/quant/quant.h"

namespace chord::mkmodel {
namespace {

struct Preset {
  std::string_view name;
  ModelShape shape;
};

ModelShape MakeShape(std::string name, int64_t n_embd, int64_t n_layer, int64_t n_head,
                     int64_t n_head_kv, int64_t n_ff, int64_t n_vocab, int64_t n_ctx, bool tied) {
  ModelShape shape;
  shape.name = std::move(name);
  shape.n_embd = n_embd;
  shape.n_layer = n_layer;
  shape.n_head = n_head;
  shape.n_head_kv = n_head_kv;
  shape.n_ff = n_ff;
  shape.n_vocab = n_vocab;
  shape.n_ctx = n_ctx;
  shape.tied = tied;
  return shape;
}

const std::vector<Preset>& Presets() {
  // Rows are multiples of 256 so every K-quant applies without fallbacks.
  static const std::vector<Preset>* presets = new std::vector<Preset>{
      {"tiny", MakeShape("tiny", 256, 2, 4, 2, 512, 1000, 512, false)},
      {"tinyllama-1.1b", MakeShape("tinyllama-1.1b", 2048, 22, 32, 4, 5632, 32000, 2048, false)},
      {"llama2-7b", MakeShape("llama2-7b", 4096, 32, 32, 32, 11008, 32000, 4096, false)},
  };
  return *presets;
}

struct FileTypeInfo {
  FileType type;
  std::string_view name;
  uint32_t llama_ftype;  // LLAMA_FTYPE_ALL_F32 = 0, MOSTLY_F16 = 1, ...
  DType base;
};

constexpr std::array<FileTypeInfo, 7> kFileTypes = {{
    {FileType::kF32, "F32", 0, DType::kF32},
    {FileType::kF16, "F16", 1, DType::kF16},
    {FileType::kQ4_0, "Q4_0", 2, DType::kQ4_0},
    {FileType::kQ8_0, "Q8_0", 7, DType::kQ8_0},
    {FileType::kQ4_K_M, "Q4_K_M", 15, DType::kQ4_K},
    {FileType::kQ5_K_M, "Q5_K_M", 17, DType::kQ5_K},
    {FileType::kQ6_K, "Q6_K", 18, DType::kQ6_K},
}};

const FileTypeInfo& Info(FileType type) {
  for (const FileTypeInfo& info : kFileTypes) {
    if (info.type == type) return info;
  }
  CHORD_CHECK(false);
  return kFileTypes[0];
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::toupper(static_cast<unsigned char>(a[i])) !=
        std::toupper(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

int64_t BlockSize(DType type) { return GetDTypeInfo(type).block_size; }

// llama.cpp's replacement when a row is not a whole number of blocks of `type`.
absl::StatusOr<DType> FallbackType(DType type, int64_t ne0) {
  DType fallback;
  switch (type) {
    case DType::kQ4_K:
      fallback = DType::kQ5_0;
      break;
    case DType::kQ5_K:
      fallback = DType::kQ5_1;
      break;
    case DType::kQ6_K:
      fallback = DType::kQ8_0;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("a row of %d elements is not a multiple of %s's block of %d", ne0,
                          DTypeName(type), BlockSize(type)));
  }
  if (ne0 % BlockSize(fallback) != 0) fallback = DType::kF16;
  if (!quant::CanQuantize(fallback)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a row of %d elements is not a multiple of 256: llama.cpp would store this %s tensor "
        "as %s, which chord cannot encode; use dimensions that are multiples of 256",
        ne0, DTypeName(type), DTypeName(fallback)));
  }
  return fallback;
}

}  // namespace

std::optional<ModelShape> FindPreset(std::string_view name) {
  for (const Preset& preset : Presets()) {
    if (preset.name == name) return preset.shape;
  }
  return std::nullopt;
}

std::vector<std::string_view> PresetNames() {
  std::vector<std::string_view> names;
  for (const Preset& preset : Presets()) names.push_back(preset.name);
  return names;
}

absl::Status ValidateShape(const ModelShape& s) {
  auto positive = [](std::string_view field, int64_t v) -> absl::Status {
    if (v > 0 && v <= (int64_t{1} << 31)) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrFormat("%s must be in 1..2^31, got %d", field, v));
  };
  RETURN_IF_ERROR(positive("n_embd", s.n_embd));
  RETURN_IF_ERROR(positive("n_layer", s.n_layer));
  RETURN_IF_ERROR(positive("n_head", s.n_head));
  RETURN_IF_ERROR(positive("n_head_kv", s.n_head_kv));
  RETURN_IF_ERROR(positive("n_ff", s.n_ff));
  RETURN_IF_ERROR(positive("n_vocab", s.n_vocab));
  RETURN_IF_ERROR(positive("n_ctx", s.n_ctx));
  if (s.n_embd % s.n_head != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("n_embd (%d) is not divisible by n_head (%d)", s.n_embd, s.n_head));
  }
  if (s.n_head % s.n_head_kv != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("n_head (%d) is not divisible by n_head_kv (%d)", s.n_head, s.n_head_kv));
  }
  if (s.head_dim() % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("head size n_embd/n_head = %d must be even for RoPE", s.head_dim()));
  }
  if (!(s.rope_base > 0.0f)) {
    return absl::InvalidArgumentError("rope base must be positive");
  }
  if (!(s.rms_eps > 0.0f)) return absl::InvalidArgumentError("rms epsilon must be positive");
  if (s.name.empty()) return absl::InvalidArgumentError("model name must not be empty");
  return absl::OkStatus();
}

std::optional<FileType> ParseFileType(std::string_view name) {
  for (const FileTypeInfo& info : kFileTypes) {
    if (EqualsIgnoreCase(info.name, name)) return info.type;
  }
  return std::nullopt;
}

std::string_view FileTypeName(FileType type) { return Info(type).name; }

std::vector<std::string_view> FileTypeNames() {
  std::vector<std::string_view> names;
  for (const FileTypeInfo& info : kFileTypes) names.push_back(info.name);
  return names;
}

uint32_t LlamaFtype(FileType type) { return Info(type).llama_ftype; }

bool IsNorm(TensorRole role) {
  return role == TensorRole::kOutputNorm || role == TensorRole::kAttnNorm ||
         role == TensorRole::kFfnNorm;
}

bool UseMoreBits(int layer, int n_layer) {
  return layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
}

absl::StatusOr<DType> ChooseTensorType(FileType file_type, TensorRole role, int layer, int n_layer,
                                       int64_t ne0, bool has_output) {
  if (IsNorm(role)) return DType::kF32;  // llama-quantize leaves 1-D tensors alone
  DType type = Info(file_type).base;
  // F32/F16 files are not quantized, so llama_tensor_get_type never runs.
  if (file_type == FileType::kF32 || file_type == FileType::kF16) return type;
  const bool more_bits_mix = file_type == FileType::kQ4_K_M || file_type == FileType::kQ5_K_M;
  if (role == TensorRole::kOutput || (role == TensorRole::kTokenEmbd && !has_output)) {
    if (ne0 % BlockSize(type) != 0) {
      type = DType::kQ8_0;
    } else if (type != DType::kQ8_0) {
      type = DType::kQ6_K;
    }
  } else if ((role == TensorRole::kAttnV || role == TensorRole::kFfnDown) && more_bits_mix &&
             UseMoreBits(layer, n_layer)) {
    type = DType::kQ6_K;
  }
  if (ne0 % BlockSize(type) != 0) return FallbackType(type, ne0);
  return type;
}

absl::StatusOr<std::vector<TensorPlan>> PlanTensors(const ModelShape& s, FileType file_type) {
  RETURN_IF_ERROR(ValidateShape(s));
  const int n_layer = static_cast<int>(s.n_layer);
  std::vector<TensorPlan> plan;
  auto add = [&](std::string name, TensorRole role, int layer,
                 std::vector<int64_t> dims) -> absl::Status {
    absl::StatusOr<DType> type =
        ChooseTensorType(file_type, role, layer, n_layer, dims[0], !s.tied);
    if (!type.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": ", type.status().message()));
    }
    plan.push_back(TensorPlan{std::move(name), role, layer, std::move(dims), *type});
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(add("token_embd.weight", TensorRole::kTokenEmbd, -1, {s.n_embd, s.n_vocab}));
  RETURN_IF_ERROR(add("output_norm.weight", TensorRole::kOutputNorm, -1, {s.n_embd}));
  if (!s.tied) {
    RETURN_IF_ERROR(add("output.weight", TensorRole::kOutput, -1, {s.n_embd, s.n_vocab}));
  }
  for (int i = 0; i < n_layer; ++i) {
    const std::string p = absl::StrCat("blk.", i, ".");
    RETURN_IF_ERROR(add(p + "attn_norm.weight", TensorRole::kAttnNorm, i, {s.n_embd}));
    RETURN_IF_ERROR(add(p + "attn_q.weight", TensorRole::kAttnQ, i, {s.n_embd, s.n_embd}));
    RETURN_IF_ERROR(add(p + "attn_k.weight", TensorRole::kAttnK, i, {s.n_embd, s.kv_dim()}));
    RETURN_IF_ERROR(add(p + "attn_v.weight", TensorRole::kAttnV, i, {s.n_embd, s.kv_dim()}));
    RETURN_IF_ERROR(
        add(p + "attn_output.weight", TensorRole::kAttnOutput, i, {s.n_embd, s.n_embd}));
    RETURN_IF_ERROR(add(p + "ffn_norm.weight", TensorRole::kFfnNorm, i, {s.n_embd}));
    RETURN_IF_ERROR(add(p + "ffn_gate.weight", TensorRole::kFfnGate, i, {s.n_embd, s.n_ff}));
    RETURN_IF_ERROR(add(p + "ffn_up.weight", TensorRole::kFfnUp, i, {s.n_embd, s.n_ff}));
    RETURN_IF_ERROR(add(p + "ffn_down.weight", TensorRole::kFfnDown, i, {s.n_ff, s.n_embd}));
  }
  return plan;
}

}  // namespace chord::mkmodel
