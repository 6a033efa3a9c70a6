// Where a stage's weights come from: the tensors of a GGUF file mapped in this
// process, or tensors fetched from a loader into the worker's own memory. The
// returned TensorInfo's `data` must stay valid as long as the source lives.
#pragma once

#include <string_view>

#include "common/gguf/gguf_file.h"

namespace chord {

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  // nullptr when the source has no tensor of that name.
  virtual const gguf::TensorInfo* Find(std::string_view name) const = 0;
};

// The tensors of an opened GGUF file (not owned; must outlive this).
class GgufTensorSource final : public TensorSource {
 public:
  explicit GgufTensorSource(const gguf::GgufFile& file) : file_(file) {}
  const gguf::TensorInfo* Find(std::string_view name) const override { return file_.FindTensor(name); }

 private:
  const gguf::GgufFile& file_;
};

}  // namespace chord
