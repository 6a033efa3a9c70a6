// AVX2 + FMA + F16C body of AttendTokens for one query head (see
// attention_head.h). Built with those target flags and -ffp-contract=off; only
// reached after a CPUID check.
//
// Every key's score goes through the same instructions wherever it falls in a
// group of four (a short last group repeats a real key and drops its copies),
// and positions are reduced in order, so a token's result depends only on its
// query and the cache, never on the batch.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/attention_head.h"
#include "kernels/cpu/x86/simd_common.h"

namespace chord::kernels {
namespace {

template <bool kHalf>
inline __m256 Load8(const uint8_t* row, int i) {
  if constexpr (kHalf) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
  } else {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + i);
  }
}

// e^x for x <= 0 (softmax arguments): x = n ln2 + r with |r| <= ln2 / 2, e^r
// by a degree-6 polynomial (relative error ~2e-7), 2^n through the exponent
// bits; arguments below -87 give ~2^-126 instead of 0.
inline __m256 ExpNonPositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2, high part
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);      // ln2, low part
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// Query i's scores[p] = scale * dot(q_i, key p) for p < n_kv + i, four keys at
// a time; each group of four keys serves every query of the run.
template <bool kHalf>
void Scores(const HeadAttention& job) {
  const int dim = job.head_dim;
  const __m128 scale = _mm_set1_ps(job.scale);
  const int64_t n_last = job.n_kv + job.n_queries - 1;  // the last query's keys
  for (int64_t p = 0; p < n_last; p += 4) {
    const uint8_t* k[4];
    for (int j = 0; j < 4; ++j) k[j] = job.keys->Row(std::min(p + j, n_last - 1)) + job.key_offset;
    for (int i = 0; i < job.n_queries; ++i) {
      const int64_t n_kv = job.n_kv + i;
      if (p >= n_kv) continue;
      const float* q = job.q + i * job.q_stride;
      float* scores = job.scores + i * job.scores_stride;
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                       _mm256_setzero_ps()};
      for (int d = 0; d < dim; d += 8) {
        const __m256 qd = _mm256_loadu_ps(q + d);
        for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_ps(qd, Load8<kHalf>(k[j], d), acc[j]);
      }
      // Lane j of the result sums acc[j] alone: a key's score takes the same
      // steps whichever keys share its group.
      const __m256 h =
          _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
      const __m128 sums =
          _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)), scale);
      if (p + 4 <= n_kv) {
        _mm_storeu_ps(scores + p, sums);
      } else {
        alignas(16) float last[4];
        _mm_store_ps(last, sums);
        for (int64_t j = 0; p + j < n_kv; ++j) scores[p + j] = last[j];
      }
    }
  }
}

// scores[0..n) = softmax(scores), in place. A short last run of 8 goes through
// the same vector code from a padded copy.
void SoftmaxInPlace(float* scores, int64_t n) {
  __m256 max8 = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) max8 = _mm256_max_ps(max8, _mm256_loadu_ps(scores + i));
  float max = Hmax(max8);
  for (int64_t j = i; j < n; ++j) max = std::max(max, scores[j]);
  const __m256 vmax = _mm256_set1_ps(max);
  __m256 sum8 = _mm256_setzero_ps();
  alignas(32) float tail[8];
  for (int64_t j = 0; j < 8; ++j) tail[j] = i + j < n ? scores[i + j] : -INFINITY;
  for (int64_t k = 0; k <= i; k += 8) {
    float* at = k < i ? scores + k : tail;
    const __m256 e = ExpNonPositive(_mm256_sub_ps(_mm256_loadu_ps(at), vmax));
    // The padding's -inf - max clamps to e^-87, not 0: keep it out of the sum.
    const __m256 kept =
        k < i ? e
              : _mm256_and_ps(
                    e, _mm256_cmp_ps(_mm256_load_ps(tail), _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ));
    _mm256_storeu_ps(at, kept);
    sum8 = _mm256_add_ps(sum8, kept);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / Hsum(sum8));
  for (int64_t k = 0; k < i; k += 8)
    _mm256_storeu_ps(scores + k, _mm256_mul_ps(_mm256_loadu_ps(scores + k), inv));
  const __m256 last = _mm256_mul_ps(_mm256_load_ps(tail), inv);
  _mm256_store_ps(tail, last);
  for (int64_t j = 0; i + j < n; ++j) scores[i + j] = tail[j];
}

// Query i's out = sum_p scores[p] * value p over its positions, 32 dimensions
// at a time in registers, two queries at a time sharing each value row. Every
// output lane adds its terms in position order, as for a query alone.
template <bool kHalf>
void WeightedValues(const HeadAttention& job) {
  constexpr int kQueries = 2;
  for (int i0 = 0; i0 < job.n_queries; i0 += kQueries) {
    const int count = std::min(kQueries, job.n_queries - i0);
    const int64_t n_last = job.n_kv + i0 + count - 1;
    for (int d0 = 0; d0 < job.head_dim; d0 += 32) {
      const int width = std::min(32, job.head_dim - d0);  // a multiple of 8
      __m256 acc[kQueries][4];
      for (auto& query : acc)
        for (__m256& a : query) a = _mm256_setzero_ps();
      for (int64_t p = 0; p < n_last; ++p) {
        const uint8_t* v = job.values->Row(p) + job.value_offset;
        // Query i0 + i reaches position n_kv - 1 + i0 + i: the first ones stop first.
        const int first = static_cast<int>(std::max<int64_t>(0, p - (job.n_kv - 1 + i0)));
        __m256 w[kQueries];
        for (int i = first; i < count; ++i)
          w[i] = _mm256_broadcast_ss(job.scores + (i0 + i) * job.scores_stride + p);
        for (int j = 0; j < width / 8; ++j) {
          const __m256 vj = Load8<kHalf>(v, d0 + 8 * j);
          for (int i = first; i < count; ++i) acc[i][j] = _mm256_fmadd_ps(w[i], vj, acc[i][j]);
        }
      }
      for (int i = 0; i < count; ++i) {
        float* out = job.out + (i0 + i) * job.out_stride;
        for (int j = 0; j < width / 8; ++j) _mm256_storeu_ps(out + d0 + 8 * j, acc[i][j]);
      }
    }
  }
}

template <bool kHalf>
void AttendHead(const HeadAttention& job) {
  Scores<kHalf>(job);
  for (int i = 0; i < job.n_queries; ++i)
    SoftmaxInPlace(job.scores + i * job.scores_stride, job.n_kv + i);
  WeightedValues<kHalf>(job);
}

}  // namespace

void AttendHeadAvx2(const HeadAttention& job) {
  if (job.keys->type == DType::kF16) {
    AttendHead<true>(job);
  } else {
    AttendHead<false>(job);
  }
}

}  // namespace chord::kernels
