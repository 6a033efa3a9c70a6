#include "common/model/model_config.h"

#include <array>
#include <string_view>

#include "common/base/status.h"
#include "common/gguf/gguf_file.h"

namespace chord {
namespace {

// Architectures whose layer structure chord implements (worker/models/).
constexpr std::array<std::string_view, 1> kSupportedArchitectures = {"llama"};

absl::StatusOr<int64_t> RequirePositive(const gguf::GgufFile& file, const std::string& key) {
  absl::StatusOr<int64_t> value = file.GetInt(key);
  if (!value.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model metadata: ", value.status().message()));
  }
  if (*value <= 0 || *value > (int64_t{1} << 32)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model metadata: ", key, " = ", *value, " is out of range"));
  }
  return *value;
}

absl::StatusOr<int64_t> OptionalPositive(const gguf::GgufFile& file, const std::string& key,
                                         int64_t fallback) {
  if (file.Find(key) == nullptr) return fallback;
  return RequirePositive(file, key);
}

absl::StatusOr<float> OptionalFloat(const gguf::GgufFile& file, const std::string& key,
                                    float fallback) {
  if (file.Find(key) == nullptr) return fallback;
  absl::StatusOr<double> value = file.GetFloat(key);
  if (!value.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model metadata: ", value.status().message()));
  }
  if (!(*value > 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat("model metadata: ", key, " must be positive"));
  }
  return static_cast<float>(*value);
}

absl::Status ReadRopeScaling(const gguf::GgufFile& file, const std::string& arch,
                             ModelConfig* config) {
  const std::string type_key = arch + ".rope.scaling.type";
  std::string type = "none";
  if (file.Find(type_key) != nullptr) {
    ASSIGN_OR_RETURN(type, file.GetString(type_key));
  }
  ASSIGN_OR_RETURN(float factor, OptionalFloat(file, arch + ".rope.scaling.factor", 1.0f));
  // Older files give the scale directly.
  ASSIGN_OR_RETURN(float legacy_scale, OptionalFloat(file, arch + ".rope.scale_linear", 1.0f));
  if (type == "none" && factor == 1.0f) {
    config->rope_freq_scale = 1.0f / legacy_scale;
  } else if (type == "linear" || (type == "none" && factor != 1.0f)) {
    config->rope_freq_scale = 1.0f / factor;
  } else {
    return absl::UnimplementedError(
        absl::StrCat("rope scaling type '", type, "' (", type_key, ") is not supported"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string LayerTensorName(int64_t layer, const char* suffix) {
  return absl::StrCat("blk.", layer, ".", suffix, ".weight");
}

absl::StatusOr<ModelConfig> ReadModelConfig(const gguf::GgufFile& file) {
  ModelConfig config;
  absl::StatusOr<std::string> arch = file.GetString("general.architecture");
  if (!arch.ok()) {
    return absl::InvalidArgumentError("model metadata: general.architecture is missing");
  }
  config.architecture = *arch;
  bool supported = false;
  for (std::string_view name : kSupportedArchitectures) supported |= (name == config.architecture);
  if (!supported) {
    return absl::UnimplementedError(
        absl::StrCat("architecture '", config.architecture, "' is not supported (chord runs: llama)"));
  }
  if (absl::StatusOr<std::string> name = file.GetString("general.name"); name.ok()) {
    config.name = *name;
  }
  const std::string& a = config.architecture;
  ASSIGN_OR_RETURN(config.n_embd, RequirePositive(file, a + ".embedding_length"));
  ASSIGN_OR_RETURN(config.n_layer, RequirePositive(file, a + ".block_count"));
  ASSIGN_OR_RETURN(config.n_head, RequirePositive(file, a + ".attention.head_count"));
  ASSIGN_OR_RETURN(config.n_head_kv,
                   OptionalPositive(file, a + ".attention.head_count_kv", config.n_head));
  ASSIGN_OR_RETURN(config.n_ff, RequirePositive(file, a + ".feed_forward_length"));
  ASSIGN_OR_RETURN(config.n_ctx_train, OptionalPositive(file, a + ".context_length", 2048));
  ASSIGN_OR_RETURN(config.rms_eps,
                   OptionalFloat(file, a + ".attention.layer_norm_rms_epsilon", 1e-5f));
  ASSIGN_OR_RETURN(config.rope_freq_base, OptionalFloat(file, a + ".rope.freq_base", 10000.0f));
  RETURN_IF_ERROR(ReadRopeScaling(file, a, &config));

  if (config.n_embd % config.n_head != 0) {
    return absl::InvalidArgumentError("model metadata: embedding_length is not a multiple of head_count");
  }
  if (config.n_head % config.n_head_kv != 0) {
    return absl::InvalidArgumentError("model metadata: head_count is not a multiple of head_count_kv");
  }
  config.head_dim = config.n_embd / config.n_head;
  ASSIGN_OR_RETURN(config.n_rot, OptionalPositive(file, a + ".rope.dimension_count", config.head_dim));
  if (config.n_rot > config.head_dim || config.n_rot % 2 != 0) {
    return absl::InvalidArgumentError(
        "model metadata: rope.dimension_count must be even and at most the head size");
  }

  const gguf::TensorInfo* embd = file.FindTensor(kTokenEmbdName);
  if (embd == nullptr || embd->dims.size() != 2 || embd->dims[0] != config.n_embd) {
    return absl::InvalidArgumentError(
        absl::StrCat("model tensors: ", kTokenEmbdName, " is missing or not {n_embd, n_vocab}"));
  }
  config.n_vocab = embd->dims[1];
  // Every layer holds tensors of its own, so a file with fewer tensors than
  // block_count lies about it. Checked because callers size per-layer tables
  // by n_layer: block_count = 2^32 in a few bytes of metadata would make the
  // coordinator allocate 32 GiB.
  if (static_cast<uint64_t>(config.n_layer) > file.tensors().size()) {
    return absl::InvalidArgumentError(absl::StrCat("model metadata: ", a, ".block_count = ",
                                                   config.n_layer, ", but the file holds only ",
                                                   file.tensors().size(), " tensors"));
  }
  config.tied_embeddings = file.FindTensor(kOutputName) == nullptr;
  config.has_rope_freq_factors = file.FindTensor(kRopeFreqsName) != nullptr;
  return config;
}

}  // namespace chord
