// Decoders, one per stored type. Each repeats ggml's dequantize_row_* float
// operations in the same order (e.g. Q4_K: d * sc, then (d * sc) * q - dmin * m)
// so that results are bit-identical to llama.cpp's reference path.

#include <cstring>

#include "common/base/status.h"
#include "common/quant/blocks.h"
#include "common/quant/quant.h"
#include "common/quant/quant_internal.h"

namespace chord::quant {
namespace {

void DequantizeF16(const void* src, float* y, int64_t n) {
  const auto* bytes = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, bytes + 2 * i, sizeof(h));
    y[i] = internal::HalfToFloatInline(h);
  }
}

void DequantizeBf16(const void* src, float* y, int64_t n) {
  const auto* bytes = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t b;
    std::memcpy(&b, bytes + 2 * i, sizeof(b));
    y[i] = Bf16ToFloat(b);
  }
}

void DequantizeQ4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = internal::HalfToFloatInline(x[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (x[i].qs[j] & 0x0f) - 8;
      const int hi = (x[i].qs[j] >> 4) - 8;
      y[j] = static_cast<float>(lo) * d;
      y[j + kQK / 2] = static_cast<float>(hi) * d;
    }
  }
}

void DequantizeQ4_1(const BlockQ4_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = internal::HalfToFloatInline(x[i].d);
    const float m = internal::HalfToFloatInline(x[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = x[i].qs[j] & 0x0f;
      const int hi = x[i].qs[j] >> 4;
      y[j] = static_cast<float>(lo) * d + m;
      y[j + kQK / 2] = static_cast<float>(hi) * d + m;
    }
  }
}

// Fifth bits of a Q5_0/Q5_1 block: bit j belongs to element j.
uint32_t LoadQh(const uint8_t qh[4]) {
  uint32_t v;
  std::memcpy(&v, qh, sizeof(v));
  return v;
}

void DequantizeQ5_0(const BlockQ5_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = internal::HalfToFloatInline(x[i].d);
    const uint32_t qh = LoadQh(x[i].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int hb0 = static_cast<int>((qh >> j) << 4) & 0x10;
      const int hb1 = static_cast<int>(qh >> (j + 12)) & 0x10;
      const int lo = ((x[i].qs[j] & 0x0f) | hb0) - 16;
      const int hi = ((x[i].qs[j] >> 4) | hb1) - 16;
      y[j] = static_cast<float>(lo) * d;
      y[j + kQK / 2] = static_cast<float>(hi) * d;
    }
  }
}

void DequantizeQ5_1(const BlockQ5_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = internal::HalfToFloatInline(x[i].d);
    const float m = internal::HalfToFloatInline(x[i].m);
    const uint32_t qh = LoadQh(x[i].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int hb0 = static_cast<int>((qh >> j) << 4) & 0x10;
      const int hb1 = static_cast<int>(qh >> (j + 12)) & 0x10;
      const int lo = (x[i].qs[j] & 0x0f) | hb0;
      const int hi = (x[i].qs[j] >> 4) | hb1;
      y[j] = static_cast<float>(lo) * d + m;
      y[j + kQK / 2] = static_cast<float>(hi) * d + m;
    }
  }
}

void DequantizeQ8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = internal::HalfToFloatInline(x[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(x[i].qs[j]) * d;
  }
}

void DequantizeQ4_K(const BlockQ4_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = internal::HalfToFloatInline(x[i].d);
    const float dmin = internal::HalfToFloatInline(x[i].dmin);
    const uint8_t* q = x[i].qs;
    for (int sub = 0; sub < 8; sub += 2, q += 32) {
      uint8_t sc;
      uint8_t m;
      GetScaleMinK4(sub, x[i].scales, &sc, &m);
      const float d1 = d * sc;
      const float m1 = dmin * m;
      GetScaleMinK4(sub + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc;
      const float m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0f) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void DequantizeQ5_K(const BlockQ5_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = internal::HalfToFloatInline(x[i].d);
    const float dmin = internal::HalfToFloatInline(x[i].dmin);
    const uint8_t* ql = x[i].qs;
    const uint8_t* qh = x[i].qh;
    uint8_t bit_lo = 1;  // qh bit of sub-block `sub`; the next bit is sub + 1's
    for (int sub = 0; sub < 8; sub += 2, ql += 32, bit_lo <<= 2) {
      const auto bit_hi = static_cast<uint8_t>(bit_lo << 1);
      uint8_t sc;
      uint8_t m;
      GetScaleMinK4(sub, x[i].scales, &sc, &m);
      const float d1 = d * sc;
      const float m1 = dmin * m;
      GetScaleMinK4(sub + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc;
      const float m2 = dmin * m;
      for (int l = 0; l < 32; ++l) {
        const int q = (ql[l] & 0x0f) + ((qh[l] & bit_lo) != 0 ? 16 : 0);
        *y++ = d1 * static_cast<float>(q) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        const int q = (ql[l] >> 4) + ((qh[l] & bit_hi) != 0 ? 16 : 0);
        *y++ = d2 * static_cast<float>(q) - m2;
      }
    }
  }
}

void DequantizeQ6_K(const BlockQ6_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = internal::HalfToFloatInline(x[i].d);
    const uint8_t* ql = x[i].ql;
    const uint8_t* qh = x[i].qh;
    const int8_t* sc = x[i].scales;
    // Each half of 128 elements: ql[0..63] and qh[0..31] hold four runs of 32.
    for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

}  // namespace

absl::Status DequantizeRow(DType type, const void* src, float* dst, int64_t n) {
  const DTypeInfo* info = FindDTypeInfo(static_cast<uint32_t>(type));
  if (info == nullptr || !info->computable) {
    return absl::InvalidArgumentError(
        absl::StrCat("DequantizeRow: unsupported type ", static_cast<uint32_t>(type)));
  }
  if (n < 0 || n % info->block_size != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "DequantizeRow: %d elements of %s is not a whole number of blocks", n, info->name));
  }
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) {
    return absl::InvalidArgumentError("DequantizeRow: null buffer");
  }
  const int64_t nb = n / info->block_size;
  switch (type) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case DType::kF16:
      DequantizeF16(src, dst, n);
      break;
    case DType::kBF16:
      DequantizeBf16(src, dst, n);
      break;
    case DType::kQ4_0:
      DequantizeQ4_0(static_cast<const BlockQ4_0*>(src), dst, nb);
      break;
    case DType::kQ4_1:
      DequantizeQ4_1(static_cast<const BlockQ4_1*>(src), dst, nb);
      break;
    case DType::kQ5_0:
      DequantizeQ5_0(static_cast<const BlockQ5_0*>(src), dst, nb);
      break;
    case DType::kQ5_1:
      DequantizeQ5_1(static_cast<const BlockQ5_1*>(src), dst, nb);
      break;
    case DType::kQ8_0:
      DequantizeQ8_0(static_cast<const BlockQ8_0*>(src), dst, nb);
      break;
    case DType::kQ4_K:
      DequantizeQ4_K(static_cast<const BlockQ4_K*>(src), dst, nb);
      break;
    case DType::kQ5_K:
      DequantizeQ5_K(static_cast<const BlockQ5_K*>(src), dst, nb);
      break;
    case DType::kQ6_K:
      DequantizeQ6_K(static_cast<const BlockQ6_K*>(src), dst, nb);
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("DequantizeRow: no decoder for %s", info->name));
  }
  return absl::OkStatus();
}

}  // namespace chord::quant
