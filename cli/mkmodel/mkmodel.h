// Builds a Llama-architecture GGUF with seeded random weights: the library
// behind `chord mkmodel`, callable from tests without spawning the binary.
//
// Weights: matrices ~ N(0, 1/fan_in) (fan_in = ne[0]), token_embd ~ N(0, 0.3^2),
// norm weights 1 + N(0, 0.1^2) (output_norm with random signs, so a tied model
// does not just echo its input). Never all zeros. Each row's values come from a
// generator seeded by (seed, tensor index, row), so the file is byte-identical
// for a given seed whatever the thread count.
//
// Thread-safety: pure functions over their arguments. Errors: INVALID_ARGUMENT
// for a bad shape or type mix, the writer's errors for I/O.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cli/mkmodel/model_spec.h"
#include "common/gguf/gguf_writer.h"

namespace chord::mkmodel {

struct MkmodelOptions {
  ModelShape shape;
  FileType file_type = FileType::kQ4_K_M;
  uint64_t seed = 0;
  int threads = 1;          // producer threads for Write (at least 1)
  uint32_t alignment = 32;  // written as general.alignment only when not 32
  std::string vocab_from;   // GGUF whose tokenizer.* keys are copied; empty: synthetic
};

// The declared file (metadata and tensor list) and the plan behind it.
struct PreparedModel {
  ModelShape shape;  // n_vocab resolved (from --vocab-from when given)
  std::vector<TensorPlan> plan;
  gguf::GgufWriter writer;
};

absl::StatusOr<PreparedModel> PrepareModel(const MkmodelOptions& options);

// The float values of rows [row_begin, row_begin + n_rows) of tensor
// `tensor_index` (rows of dims[0] elements), written to `out`.
void GenerateRows(const TensorPlan& tensor, size_t tensor_index, uint64_t seed, int64_t row_begin,
                  int64_t n_rows, float* out);

// Fills `out` with the stored bytes of a tensor: GenerateRows then QuantizeRows.
absl::Status ProduceTensor(const TensorPlan& tensor, size_t tensor_index, uint64_t seed,
                           std::span<uint8_t> out);

// Prepares and writes the model at `path`.
absl::Status WriteModel(const MkmodelOptions& options, const std::string& path,
                        const gguf::WriteProgress& progress = {});

}  // namespace chord::mkmodel
