// What `chord mkmodel` builds: a Llama-architecture shape, the file type, and
// the per-tensor plan (names, shapes and storage types exactly as llama.cpp's
// llama architecture and llama-quantize lay them out).
//
// Thread-safety: plain values and pure functions. Errors: INVALID_ARGUMENT
// with a message that names the offending field.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tensor/dtype.h"

namespace chord::mkmodel {

struct ModelShape {
  std::string name = "tiny";  // general.name
  int64_t n_embd = 256;
  int64_t n_layer = 2;
  int64_t n_head = 4;
  int64_t n_head_kv = 2;
  int64_t n_ff = 512;
  int64_t n_vocab = 1000;
  int64_t n_ctx = 512;
  float rope_base = 10000.0f;
  float rms_eps = 1e-5f;
  bool tied = false;  // no output.weight: the token embedding doubles as the output matrix

  int64_t head_dim() const { return n_embd / n_head; }
  int64_t kv_dim() const { return n_head_kv * head_dim(); }
};

// Presets: "tiny", "tinyllama-1.1b", "llama2-7b".
std::optional<ModelShape> FindPreset(std::string_view name);
std::vector<std::string_view> PresetNames();

// Rejects shapes llama.cpp cannot load or chord cannot run (n_embd not divisible
// by n_head, n_head not divisible by n_head_kv, odd head size, ...).
absl::Status ValidateShape(const ModelShape& shape);

// The --type choices, which are llama.cpp's file types of the same names.
enum class FileType { kF32, kF16, kQ4_0, kQ8_0, kQ4_K_M, kQ5_K_M, kQ6_K };

std::optional<FileType> ParseFileType(std::string_view name);  // case-insensitive
std::string_view FileTypeName(FileType type);
std::vector<std::string_view> FileTypeNames();
// llama.cpp's LLAMA_FTYPE number, stored as general.file_type.
uint32_t LlamaFtype(FileType type);

enum class TensorRole {
  kTokenEmbd,
  kOutputNorm,
  kOutput,
  kAttnNorm,
  kAttnQ,
  kAttnK,
  kAttnV,
  kAttnOutput,
  kFfnNorm,
  kFfnGate,
  kFfnUp,
  kFfnDown,
};

bool IsNorm(TensorRole role);

struct TensorPlan {
  std::string name;
  TensorRole role = TensorRole::kTokenEmbd;
  int layer = -1;             // -1 outside the blocks
  std::vector<int64_t> dims;  // ne[0] first
  DType type = DType::kF32;
};

// llama.cpp's layer choice for the extra bits of Q4_K_M/Q5_K_M (use_more_bits
// in src/llama-quant.cpp): the first and last eighth of the layers and every
// third layer in between.
bool UseMoreBits(int layer, int n_layer);

// The storage type llama-quantize (without importance matrix) gives a tensor:
// llama_tensor_get_type as of llama.cpp c392e50 (Feb 2025). A row length that is
// not a whole number of blocks falls back as llama.cpp does (Q6_K -> Q8_0,
// Q4_K -> Q5_0, Q5_K -> Q5_1); fallbacks chord cannot encode (Q5_0, Q5_1) are
// INVALID_ARGUMENT.
absl::StatusOr<DType> ChooseTensorType(FileType file_type, TensorRole role, int layer, int n_layer,
                                       int64_t ne0, bool has_output);

// Every tensor of the model, in llama.cpp's converter order.
absl::StatusOr<std::vector<TensorPlan>> PlanTensors(const ModelShape& shape, FileType file_type);

}  // namespace chord::mkmodel
