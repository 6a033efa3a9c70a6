// K-quant encoders (Q4_K, Q5_K, Q6_K) following ggml's quantize_row_*_K_ref
// without an importance matrix: each sub-block gets a least-squares scale (and
// min) found by trying a few candidate scales, then the sub-block scales are
// themselves quantized to 6 or 8 bits against one half-precision super-scale.
// Float operations keep ggml's order so the output normally matches it bit for bit.

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/quant/quant.h"
#include "common/quant/quant_internal.h"

namespace chord::quant::internal {
namespace {

// Sub-blocks whose largest magnitude is below this are stored as zeros.
constexpr float kGroupMaxEps = 1e-15f;

struct ScaleSearch {
  int nmax;      // levels are 0..nmax
  float rmin;    // first candidate: (nmax + rmin) / range
  float rdelta;  // candidate step
  int nstep;     // candidates after the first: rmin + rdelta * [0, nstep]
};

// Fits x ~ scale * L + min over levels L in [0, nmax] with min <= 0, minimising
// the weighted squared error (ggml's make_qkx2_quants). Returns the scale and
// stores -min in *neg_min. `laux` is scratch of n bytes.
float FitScaleMin(int n, const float* x, const float* w, const ScaleSearch& s, uint8_t* levels,
                  float* neg_min, uint8_t* laux) {
  float min = x[0];
  float max = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::memset(levels, 0, static_cast<size_t>(n));
    *neg_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(s.nmax) / (max - min);
  float scale = 1.0f / iscale;
  float best_error = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(NearestInt(iscale * (x[i] - min)), 0, s.nmax);
    levels[i] = static_cast<uint8_t>(l);
    const float diff = scale * static_cast<float>(l) + min - x[i];
    best_error += w[i] * (diff * diff);
  }
  for (int step = 0; step <= s.nstep; ++step) {
    iscale =
        (s.rmin + s.rdelta * static_cast<float>(step) + static_cast<float>(s.nmax)) / (max - min);
    float sum_l = 0.0f;
    float sum_l2 = 0.0f;
    float sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(NearestInt(iscale * (x[i] - min)), 0, s.nmax);
      laux[i] = static_cast<uint8_t>(l);
      const float wl = w[i] * static_cast<float>(l);
      sum_l += wl;
      sum_l2 += wl * static_cast<float>(l);
      sum_xl += wl * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0.0f)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0.0f) {
      this_min = 0.0f;
      this_scale = sum_xl / sum_l2;
    }
    float error = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float diff = this_scale * static_cast<float>(laux[i]) + this_min - x[i];
      error += w[i] * (diff * diff);
    }
    if (error < best_error) {
      std::memcpy(levels, laux, static_cast<size_t>(n));
      best_error = error;
      scale = this_scale;
      min = this_min;
    }
  }
  *neg_min = -min;
  return scale;
}

// Stores the 6-bit scale and min of sub-block j; the inverse of GetScaleMinK4.
// Sub-blocks 0..3 must be stored before 4..7, whose top bits are OR-ed in.
void PackScaleMinK4(int j, int ls, int lm, uint8_t* q) {
  if (j < 4) {
    q[j] = static_cast<uint8_t>(ls);
    q[j + 4] = static_cast<uint8_t>(lm);
  } else {
    q[j + 4] = static_cast<uint8_t>((ls & 0x0f) | ((lm & 0x0f) << 4));
    q[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
    q[j] |= static_cast<uint8_t>((lm >> 4) << 6);
  }
}

// Encodes the scales of one Q4_K/Q5_K super-block (8 sub-blocks of 32) and
// returns its levels in [0, s.nmax] through `levels` (256 entries).
void QuantizeSuperBlockK4(const float* x, const ScaleSearch& s, uint8_t* scales, uint16_t* d_half,
                          uint16_t* dmin_half, uint8_t* levels) {
  float weights[32];
  uint8_t laux[32];
  float sub_scales[8];
  float sub_mins[8];
  float max_scale = 0.0f;
  float max_min = 0.0f;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0.0f;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    // Weighting by magnitude plus the sub-block's RMS favours large elements
    // without ignoring small ones.
    const float av_x = std::sqrt(sum_x2 / 32.0f);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
    sub_scales[j] = FitScaleMin(32, xs, weights, s, levels + 32 * j, &sub_mins[j], laux);
    max_scale = std::max(max_scale, sub_scales[j]);
    max_min = std::max(max_min, sub_mins[j]);
  }
  const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  for (int j = 0; j < 8; ++j) {
    const int ls = std::clamp(NearestInt(inv_scale * sub_scales[j]), 0, 63);
    const int lm = std::clamp(NearestInt(inv_min * sub_mins[j]), 0, 63);
    PackScaleMinK4(j, ls, lm, scales);
  }
  *d_half = FloatToHalf(max_scale / 63.0f);
  *dmin_half = FloatToHalf(max_min / 63.0f);
  // Re-derive the levels against the scales as stored, not as fitted.
  const float d = HalfToFloat(*d_half);
  const float dmin = HalfToFloat(*dmin_half);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc;
    uint8_t m;
    GetScaleMinK4(j, scales, &sc, &m);
    const float ds = d * sc;
    if (ds == 0.0f) continue;
    const float dm = dmin * m;
    for (int l = 0; l < 32; ++l) {
      const int q = NearestInt((x[32 * j + l] + dm) / ds);
      levels[32 * j + l] = static_cast<uint8_t>(std::clamp(q, 0, s.nmax));
    }
  }
}

// Symmetric fit x ~ scale * (L - nmax), L in [0, 2 nmax - 1], weighted by x^2
// (ggml's make_qx_quants with rmse_type 1): tries 19 scales around nmax / max.
float FitScaleSymmetric(int n, int nmax, const float* x, int8_t* levels) {
  float max = 0.0f;
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::memset(levels, 0, static_cast<size_t>(n));
    return 0.0f;
  }
  const auto fit = [&](float iscale, float* sum_lx, float* sum_l2) {
    *sum_lx = 0.0f;
    *sum_l2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      *sum_lx += w * x[i] * static_cast<float>(l);
      *sum_l2 += w * static_cast<float>(l) * static_cast<float>(l);
    }
  };
  const auto store = [&](float iscale) {
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
      levels[i] = static_cast<int8_t>(l + nmax);
    }
  };
  float iscale = static_cast<float>(-nmax) / max;
  float sum_lx;
  float sum_l2;
  fit(iscale, &sum_lx, &sum_l2);
  store(iscale);
  float scale = sum_l2 != 0.0f ? sum_lx / sum_l2 : 0.0f;
  float best = scale * sum_lx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / max;
    fit(iscale, &sum_lx, &sum_l2);
    if (sum_l2 > 0.0f && sum_lx * sum_lx > best * sum_l2) {
      store(iscale);
      scale = sum_lx / sum_l2;
      best = scale * sum_lx;
    }
  }
  return scale;
}

}  // namespace

void QuantizeQ4_K(const float* x, BlockQ4_K* y, int64_t nb) {
  constexpr ScaleSearch kSearch = {15, -1.0f, 0.1f, 20};
  uint8_t levels[kQKK];
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    QuantizeSuperBlockK4(x, kSearch, y[i].scales, &y[i].d, &y[i].dmin, levels);
    // Sub-blocks 2k and 2k+1 share 32 bytes: low and high nibbles.
    uint8_t* q = y[i].qs;
    for (int j = 0; j < kQKK; j += 64, q += 32) {
      for (int l = 0; l < 32; ++l) {
        q[l] = static_cast<uint8_t>(levels[j + l] | (levels[j + l + 32] << 4));
      }
    }
  }
}

void QuantizeQ5_K(const float* x, BlockQ5_K* y, int64_t nb) {
  constexpr ScaleSearch kSearch = {31, -0.5f, 0.1f, 15};
  uint8_t levels[kQKK];
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    QuantizeSuperBlockK4(x, kSearch, y[i].scales, &y[i].d, &y[i].dmin, levels);
    std::memset(y[i].qh, 0, sizeof(y[i].qh));
    uint8_t* ql = y[i].qs;
    uint8_t bit_lo = 1;
    for (int j = 0; j < kQKK; j += 64, ql += 32, bit_lo <<= 2) {
      const auto bit_hi = static_cast<uint8_t>(bit_lo << 1);
      for (int l = 0; l < 32; ++l) {
        int lo = levels[j + l];
        int hi = levels[j + l + 32];
        if (lo > 15) {
          lo -= 16;
          y[i].qh[l] |= bit_lo;
        }
        if (hi > 15) {
          hi -= 16;
          y[i].qh[l] |= bit_hi;
        }
        ql[l] = static_cast<uint8_t>(lo | (hi << 4));
      }
    }
  }
}

namespace {

// Packs 256 six-bit levels into Q6_K's ql/qh layout (see DequantizeQ6_K).
void PackQ6K(const int8_t* levels, BlockQ6_K* y) {
  uint8_t* ql = y->ql;
  uint8_t* qh = y->qh;
  for (int j = 0; j < kQKK; j += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; ++l) {
      const int q1 = levels[j + l];
      const int q2 = levels[j + l + 32];
      const int q3 = levels[j + l + 64];
      const int q4 = levels[j + l + 96];
      ql[l] = static_cast<uint8_t>((q1 & 0x0f) | ((q3 & 0x0f) << 4));
      ql[l + 32] = static_cast<uint8_t>((q2 & 0x0f) | ((q4 & 0x0f) << 4));
      qh[l] =
          static_cast<uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

}  // namespace

void QuantizeQ6_K(const float* x, BlockQ6_K* y, int64_t nb) {
  int8_t levels[kQKK];
  float scales[kQKK / 16];
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float max_scale = 0.0f;
    float max_abs_scale = 0.0f;
    for (int ib = 0; ib < kQKK / 16; ++ib) {
      scales[ib] = FitScaleSymmetric(16, 32, x + 16 * ib, levels + 16 * ib);
      if (std::fabs(scales[ib]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[ib]);
        max_scale = scales[ib];
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&y[i], 0, sizeof(y[i]));
      continue;
    }
    // The largest sub-block scale maps to -128, as the levels' own fit does.
    const float iscale = -128.0f / max_scale;
    y[i].d = FloatToHalf(1.0f / iscale);
    for (int ib = 0; ib < kQKK / 16; ++ib) {
      y[i].scales[ib] = static_cast<int8_t>(std::clamp(NearestInt(iscale * scales[ib]), -128, 127));
    }
    const float d_super = HalfToFloat(y[i].d);
    for (int j = 0; j < kQKK / 16; ++j) {
      const float d = d_super * static_cast<float>(y[i].scales[j]);
      if (d == 0.0f) continue;
      for (int l = 0; l < 16; ++l) {
        const int q = std::clamp(NearestInt(x[16 * j + l] / d), -32, 31);
        levels[16 * j + l] = static_cast<int8_t>(q + 32);
      }
    }
    PackQ6K(levels, &y[i]);
  }
}

}  // namespace chord::quant::internal
