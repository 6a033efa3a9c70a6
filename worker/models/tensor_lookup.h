// Typed, shape-checked access to a model's tensors (the one lookup every
// architecture uses). Errors name the tensor and what was expected, as
// INVALID_ARGUMENT (wrong shape or type) or NOT_FOUND (missing).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/weight_matrix.h"

namespace chord {

class TensorSource;

// A matrix with dims {cols, rows} whose type has a matrix product.
absl::StatusOr<kernels::WeightMatrix> LookupMatrix(const TensorSource& source,
                                                   const std::string& name, int64_t cols,
                                                   int64_t rows);
// A vector of n elements, converted to float (norm weights are small).
absl::StatusOr<std::vector<float>> LoadVector(const TensorSource& source, const std::string& name,
                                              int64_t n);

}  // namespace chord
