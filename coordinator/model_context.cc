#include "coordinator/model_context.h"

#include <charconv>
#include <string_view>
#include <utility>

#include "common/base/status.h"

namespace chord::coordinator {
namespace {

// The layer index of a "blk.N.*" tensor name, or -1.
int64_t LayerOf(std::string_view name) {
  constexpr std::string_view kPrefix = "blk.";
  if (name.substr(0, kPrefix.size()) != kPrefix) return -1;
  name.remove_prefix(kPrefix.size());
  int64_t layer = -1;
  const auto [end, error] = std::from_chars(name.data(), name.data() + name.size(), layer);
  if (error != std::errc() || end == name.data() || *end != '.') return -1;
  return layer;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelContext>> MakeModelContext(
    std::string sha256, std::string file_name, std::unique_ptr<gguf::GgufFile> header) {
  if (header == nullptr) return absl::InvalidArgumentError("no model metadata");
  auto context = std::make_unique<ModelContext>();
  ASSIGN_OR_RETURN(context->config, ReadModelConfig(*header));
  ASSIGN_OR_RETURN(context->tokenizer, Tokenizer::FromGguf(*header));
  context->layer_bytes.assign(static_cast<size_t>(context->config.n_layer), 0);
  for (const gguf::TensorInfo& tensor : header->tensors()) {
    const int64_t layer = LayerOf(tensor.name);
    if (layer >= 0 && layer < context->config.n_layer) {
      context->layer_bytes[static_cast<size_t>(layer)] += tensor.n_bytes;
    } else if (tensor.name == kOutputName || tensor.name == kOutputNormName ||
               (context->config.tied_embeddings && tensor.name == kTokenEmbdName)) {
      context->head_bytes += tensor.n_bytes;
    }
  }
  context->sha256 = std::move(sha256);
  context->file_name = std::move(file_name);
  context->header = std::move(header);
  return context;
}

}  // namespace chord::coordinator
