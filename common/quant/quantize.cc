// QuantizeRows(): argument checks, the plain float types, and the simple
// 32-element quants (Q8_0, Q4_0) following ggml's quantize_row_*_ref.

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/base/status.h"
#include "common/quant/quant.h"
#include "common/quant/quant_internal.h"

namespace chord::quant {
namespace {

// Casts a rounded float to int8 within [-127, 127]. The clamp only matters when
// a subnormal block maximum makes the inverse scale overflow (the stored half
// scale is then zero anyway); NaN becomes 0 instead of undefined behaviour.
int8_t SaturateToInt8(float v) {
  if (v >= 127.0f) return 127;
  if (v <= -127.0f) return -127;
  if (std::isnan(v)) return 0;
  return static_cast<int8_t>(v);
}

}  // namespace

namespace internal {

void QuantizeQ8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = FloatToHalf(d);
    // roundf (ties away from zero), as ggml.
    for (int j = 0; j < kQK; ++j) y[i].qs[j] = SaturateToInt8(std::round(x[j] * id));
  }
}

void QuantizeQ4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    // The scale maps the element of largest magnitude to -8 exactly, so the
    // asymmetric range [-8, 7] is used in full on the side that needs it.
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = FloatToHalf(d);
    for (int j = 0; j < kQK / 2; ++j) {
      // ggml truncates x * id + 8.5 toward zero and caps at 15; written out
      // so that a non-finite product cannot reach a float-to-int cast.
      const float t0 = x[j] * id + 8.5f;
      const float t1 = x[j + kQK / 2] * id + 8.5f;
      const int q0 = t0 >= 15.0f ? 15 : (t0 > 0.0f ? static_cast<int>(t0) : 0);
      const int q1 = t1 >= 15.0f ? 15 : (t1 > 0.0f ? static_cast<int>(t1) : 0);
      y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

}  // namespace internal

namespace {

absl::Status QuantizeRow(DType type, const float* x, int64_t n, uint8_t* y) {
  switch (type) {
    case DType::kF32:
      std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalf(x[i]);
        std::memcpy(y + 2 * i, &h, sizeof(h));
      }
      return absl::OkStatus();
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t b = FloatToBf16(x[i]);
        std::memcpy(y + 2 * i, &b, sizeof(b));
      }
      return absl::OkStatus();
    default:
      break;
  }
  // Quantized types: a non-finite input would silently poison a whole block's
  // scales, so it is refused instead.
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("QuantizeRows: non-finite value ", x[i], " at element ", i));
    }
  }
  switch (type) {
    case DType::kQ8_0:
      internal::QuantizeQ8_0(x, reinterpret_cast<BlockQ8_0*>(y), n / kQK);
      break;
    case DType::kQ4_0:
      internal::QuantizeQ4_0(x, reinterpret_cast<BlockQ4_0*>(y), n / kQK);
      break;
    case DType::kQ4_K:
      internal::QuantizeQ4_K(x, reinterpret_cast<BlockQ4_K*>(y), n / kQKK);
      break;
    case DType::kQ5_K:
      internal::QuantizeQ5_K(x, reinterpret_cast<BlockQ5_K*>(y), n / kQKK);
      break;
    case DType::kQ6_K:
      internal::QuantizeQ6_K(x, reinterpret_cast<BlockQ6_K*>(y), n / kQKK);
      break;
    default:
      return absl::InternalError("QuantizeRow: type passed CanQuantize but has no encoder");
  }
  return absl::OkStatus();
}

}  // namespace

bool CanQuantize(DType type) {
  switch (type) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return true;
    default:
      return false;
  }
}

absl::Status QuantizeRows(DType type, const float* src, int64_t n_rows, int64_t n_per_row,
                          void* dst) {
  if (!CanQuantize(type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("QuantizeRows: cannot encode type ", static_cast<uint32_t>(type)));
  }
  if (n_rows < 0 || n_per_row < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("QuantizeRows: negative shape ", n_rows, " x ", n_per_row));
  }
  ASSIGN_OR_RETURN(const uint64_t row_bytes, RowBytes(type, n_per_row));
  if (n_rows == 0 || n_per_row == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) {
    return absl::InvalidArgumentError("QuantizeRows: null buffer");
  }
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t r = 0; r < n_rows; ++r) {
    RETURN_IF_ERROR(QuantizeRow(type, src + r * n_per_row, n_per_row, out + r * row_bytes));
  }
  return absl::OkStatus();
}

}  // namespace chord::quant
