// What the coordinator knows about the served model: identity, metadata
// (tensor table without data), hyperparameters, tokenizer and the bytes each
// layer reads per token (for the planner). Built once from the loader's reply.
//
// Thread-safety: immutable after construction; shared read-only by the gRPC
// handlers and the scheduler thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/gguf/gguf_file.h"
#include "common/model/model_config.h"
#include "common/tokenizer/tokenizer.h"

namespace chord::coordinator {

struct ModelContext {
  std::string sha256;
  std::string file_name;
  std::unique_ptr<gguf::GgufFile> header;
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<uint64_t> layer_bytes;  // sum of blk.N.* tensors, per layer
  uint64_t head_bytes = 0;            // output_norm + output matrix (token_embd when tied)
};

// INVALID_ARGUMENT / UNIMPLEMENTED when the metadata does not describe a model
// chord serves (as ReadModelConfig and Tokenizer::FromGguf report).
absl::StatusOr<std::unique_ptr<ModelContext>> MakeModelContext(
    std::string sha256, std::string file_name, std::unique_ptr<gguf::GgufFile> header);

}  // namespace chord::coordinator
