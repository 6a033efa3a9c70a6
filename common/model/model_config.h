// Hyperparameters of a model, read once from GGUF metadata. The one place that
// knows the `<arch>.*` key names; architecture differences are data here, so a
// new architecture (Qwen2, ...) adds a row rather than a code path.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace chord::gguf {
class GgufFile;
}

namespace chord {

struct ModelConfig {
  std::string architecture;  // general.architecture, e.g. "llama"
  std::string name;          // general.name, may be empty
  int64_t n_vocab = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t n_ff = 0;
  int64_t head_dim = 0;       // n_embd / n_head
  int64_t n_rot = 0;          // rope.dimension_count, default head_dim
  int64_t n_ctx_train = 0;    // context_length
  float rms_eps = 1e-5f;
  float rope_freq_base = 10000.0f;
  float rope_freq_scale = 1.0f;  // 1 / rope.scaling.factor for linear scaling
  bool tied_embeddings = false;  // no output.weight: the output reuses token_embd
  bool has_rope_freq_factors = false;  // rope_freqs.weight present (Llama 3.1)

  int64_t n_embd_kv() const { return n_head_kv * head_dim; }
};

// Reads and validates the hyperparameters (positive sizes, n_head dividing
// n_embd, n_head_kv dividing n_head, an even n_rot <= head_dim, ...).
// UNIMPLEMENTED for an architecture chord does not run; INVALID_ARGUMENT naming
// the key for a missing or inconsistent value.
absl::StatusOr<ModelConfig> ReadModelConfig(const gguf::GgufFile& file);

// GGUF tensor names, as llama.cpp writes them.
std::string LayerTensorName(int64_t layer, const char* suffix);  // "blk.<layer>.<suffix>.weight"
inline constexpr const char* kTokenEmbdName = "token_embd.weight";
inline constexpr const char* kOutputNormName = "output_norm.weight";
inline constexpr const char* kOutputName = "output.weight";
inline constexpr const char* kRopeFreqsName = "rope_freqs.weight";

}  // namespace chord
