#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>

namespace chord::kernels {

void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* y) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i] * x[i]);
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] * scale) * weight[i];
}

void RopeNormal(float* x, int n_heads, int head_dim, int n_rot, int64_t position,
                float freq_base, float freq_scale, const float* freq_factors) {
  const float theta_scale = std::pow(freq_base, -2.0f / static_cast<float>(n_rot));
  for (int h = 0; h < n_heads; ++h) {
    float* head = x + static_cast<int64_t>(h) * head_dim;
    float theta = static_cast<float>(position);
    for (int i = 0; i < n_rot; i += 2) {
      const float factor = freq_factors != nullptr ? freq_factors[i / 2] : 1.0f;
      const float angle = freq_scale * (theta / factor);
      const float cos_theta = std::cos(angle);
      const float sin_theta = std::sin(angle);
      const float x0 = head[i];
      const float x1 = head[i + 1];
      head[i] = x0 * cos_theta - x1 * sin_theta;
      head[i + 1] = x0 * sin_theta + x1 * cos_theta;
      theta *= theta_scale;
    }
  }
}

void Softmax(float* x, int64_t n) {
  float max = -INFINITY;
  for (int64_t i = 0; i < n; ++i) max = std::max(max, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = std::exp(x[i] - max);
    x[i] = e;
    sum += static_cast<double>(e);
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void SwiGlu(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = (g / (1.0f + std::exp(-g))) * up[i];
  }
}

void AddInPlace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace chord::kernels
