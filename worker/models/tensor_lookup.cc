#include "worker/models/tensor_lookup.h"

#include "common/base/status.h"
#include "common/gguf/gguf_file.h"
#include "worker/models/tensor_source.h"
#include "common/quant/quant.h"
#include "kernels/cpu/vec_dot.h"

namespace chord {
namespace {

absl::StatusOr<const gguf::TensorInfo*> Find(const TensorSource& source, const std::string& name) {
  const gguf::TensorInfo* info = source.Find(name);
  if (info == nullptr || info->data == nullptr) return absl::NotFoundError(absl::StrCat("model tensor ", name, " is missing"));
  return info;
}

}  // namespace

absl::StatusOr<kernels::WeightMatrix> LookupMatrix(const TensorSource& source,
                                                   const std::string& name, int64_t cols,
                                                   int64_t rows) {
  ASSIGN_OR_RETURN(const gguf::TensorInfo* info, Find(source, name));
  if (info->dims.size() != 2 || info->dims[0] != cols || info->dims[1] != rows) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model tensor %s has shape %s, expected {%d, %d}", name,
        info->dims.size() == 2 ? absl::StrFormat("{%d, %d}", info->dims[0], info->dims[1])
                               : absl::StrCat(info->dims.size(), " dims"),
        cols, rows));
  }
  if (kernels::GetVecDot(info->type) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("model tensor ", name, " has type ",
                                                   std::string(DTypeName(info->type)),
                                                   ", which chord cannot compute with"));
  }
  ASSIGN_OR_RETURN(uint64_t row_bytes, RowBytes(info->type, cols));
  return kernels::WeightMatrix{info->type, rows, cols, row_bytes, info->data};
}

absl::StatusOr<std::vector<float>> LoadVector(const TensorSource& source, const std::string& name,
                                              int64_t n) {
  ASSIGN_OR_RETURN(const gguf::TensorInfo* info, Find(source, name));
  if (info->dims.size() != 1 || info->dims[0] != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model tensor %s should be a vector of %d elements", name, n));
  }
  std::vector<float> values(static_cast<size_t>(n));
  absl::Status status = quant::DequantizeRow(info->type, info->data, values.data(), n);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model tensor ", name, ": ", status.message()));
  }
  return values;
}

}  // namespace chord
