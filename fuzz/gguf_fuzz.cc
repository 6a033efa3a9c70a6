// Fuzz target: the GGUF reader (common/gguf) and what chord reads from a parsed
// file. The input is the bytes of a file, read the two ways chord reads one:
//   - GgufFile::Parse, as the loader and a local worker map a whole model file;
//   - GgufFile::ParseHeader, as the coordinator reads the loader's metadata_gguf,
//     followed by MakeModelContext (hyperparameters, tokenizer, layer sizes).
// Whatever parses is walked: every metadata value through every typed getter,
// every tensor checked to lie inside the file, the tokenizer run on a sample.
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "common/gguf/gguf_file.h"
#include "common/model/model_config.h"
#include "common/tensor/dtype.h"
#include "common/tokenizer/tokenizer.h"
#include "coordinator/model_context.h"
#include "fuzz/fuzz_target.h"

namespace chord::fuzz {
namespace {

// Calls every getter on every key: each must answer (a value or a Status)
// whatever type the file declared.
void WalkMetadata(const gguf::GgufFile& file) {
  for (const auto& [key, value] : file.metadata()) {
    FUZZ_CHECK(file.Find(key) == &value);  // keys are unique
    (void)file.GetString(key);
    (void)file.GetInt(key);
    (void)file.GetUint(key);
    (void)file.GetFloat(key);
    (void)file.GetBool(key);
    (void)file.GetStringArray(key);
    (void)file.GetIntArray(key);
    (void)file.GetFloatArray(key);
  }
}

// What the parser promises about tensors: unique names, a size that matches
// type and dims, and (with data) bytes inside the file at an aligned offset.
void WalkTensors(const gguf::GgufFile& file, bool with_data) {
  const std::span<const uint8_t> bytes = file.bytes();
  for (const gguf::TensorInfo& tensor : file.tensors()) {
    FUZZ_CHECK(file.FindTensor(tensor.name) == &tensor);
    FUZZ_CHECK(!tensor.dims.empty() && tensor.dims.size() <= 4);
    const absl::StatusOr<uint64_t> row = RowBytes(tensor.type, tensor.cols());
    FUZZ_CHECK(row.ok());
    FUZZ_CHECK(tensor.rows() > 0);
    FUZZ_CHECK(*row * static_cast<uint64_t>(tensor.rows()) == tensor.n_bytes);
    if (!with_data) {
      FUZZ_CHECK(tensor.data == nullptr);
      continue;
    }
    FUZZ_CHECK(tensor.offset % file.alignment() == 0);
    FUZZ_CHECK(tensor.data >= bytes.data());
    const uint64_t start = static_cast<uint64_t>(tensor.data - bytes.data());
    FUZZ_CHECK(start == file.data_offset() + tensor.offset);
    FUZZ_CHECK(start <= bytes.size() && tensor.n_bytes <= bytes.size() - start);
    // Touch the first and last byte so that ASan sees any read outside the input.
    if (tensor.n_bytes > 0) {
      volatile uint8_t first = tensor.data[0];
      volatile uint8_t last = tensor.data[tensor.n_bytes - 1];
      (void)first;
      (void)last;
    }
  }
}

// The coordinator's reading of the loader's metadata: config, tokenizer and
// per-layer sizes; a tokenizer that builds must then tokenize and detokenize.
void ReadAsCoordinator(std::unique_ptr<gguf::GgufFile> header) {
  const uint64_t metadata_bytes = header->file_size();
  (void)ReadModelConfig(*header);
  absl::StatusOr<std::unique_ptr<coordinator::ModelContext>> context =
      coordinator::MakeModelContext("sha256", "fuzz.gguf", std::move(header));
  if (!context.ok()) return;
  const ModelConfig& config = (*context)->config;
  FUZZ_CHECK((*context)->layer_bytes.size() == static_cast<size_t>(config.n_layer));
  // What the coordinator allocates per layer must be paid for by bytes the
  // loader sent: a block_count of 2^28 in a few bytes must not cost gigabytes.
  FUZZ_CHECK(static_cast<uint64_t>(config.n_layer) <= metadata_bytes);
  const Tokenizer& tokenizer = *(*context)->tokenizer;
  const std::vector<TokenId> ids = tokenizer.Encode("Hello world! 123 <s>\n\xe2\x96\x81", true, true);
  for (TokenId id : ids) FUZZ_CHECK(tokenizer.IsValid(id));
  (void)Detokenize(tokenizer, ids);
}

int Run(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  const absl::StatusOr<std::unique_ptr<gguf::GgufFile>> file = gguf::GgufFile::Parse(bytes);
  if (file.ok()) {
    WalkMetadata(**file);
    WalkTensors(**file, /*with_data=*/true);
    // The local worker's path: config and tokenizer straight from the file.
    (void)ReadModelConfig(**file);
    (void)Tokenizer::FromGguf(**file);
  }
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> header =
      gguf::GgufFile::ParseHeader(std::string(reinterpret_cast<const char*>(data), size));
  // A whole file holds its own header, so what Parse accepts ParseHeader accepts.
  if (file.ok()) FUZZ_CHECK(header.ok());
  if (!header.ok()) return 0;
  if (file.ok()) {
    FUZZ_CHECK((*header)->metadata().size() == (*file)->metadata().size());
    FUZZ_CHECK((*header)->tensors().size() == (*file)->tensors().size());
    FUZZ_CHECK((*header)->data_offset() == (*file)->data_offset());
  }
  WalkMetadata(**header);
  WalkTensors(**header, /*with_data=*/false);
  ReadAsCoordinator(*std::move(header));
  return 0;
}

}  // namespace

int FuzzGguf(const uint8_t* data, size_t size) { return Run(data, size); }

}  // namespace chord::fuzz

CHORD_FUZZ_ENTRY(chord::fuzz::FuzzGguf)
