#include "worker/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <optional>
#include <unordered_map>

namespace chord {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Higher logit first; among equal logits the lower id first, so every order is total.
bool Before(float logit_a, int32_t id_a, float logit_b, int32_t id_b) {
  return logit_a > logit_b || (logit_a == logit_b && id_a < id_b);
}

}  // namespace

float Sampler::ExpNonPositive(float x) {
  // e^x = 2^n * e^r with n = round(x / ln 2) and |r| <= ln(2) / 2; ln 2 in two
  // parts so that r is exact; e^r by its Taylor series to r^6 / 720 (the
  // first term left out is below 1.3e-7 relative).
  const bool underflows = x < -87.0f;
  x = underflows ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // + 1.5 * 2^23 rounds
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float two_to_n = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return underflows ? 0.0f : p * two_to_n;
}

// Built for AVX-512 and AVX2 too where the compiler can (x86-64 with GCC or
// clang), the loader choosing by the CPU: the same operations in wider
// registers, so the same bits (no contraction into FMA: -ffp-contract=off).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
void Sampler::ExpOf(std::span<const float> logits, float max_logit, float scale,
                    std::span<float> out) {
  for (size_t i = 0; i < logits.size(); ++i)
    out[i] = ExpNonPositive((logits[i] - max_logit) * scale);
}

double Sampler::UniformDraw(uint64_t seed, int64_t position) {
  const uint64_t bits = SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(position));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

bool Sampler::HasPenalties(const SamplingParams& params) {
  return params.penalty_last_n != 0 &&
         (params.repetition_penalty != 1.0f || params.presence_penalty != 0.0f ||
          params.frequency_penalty != 0.0f);
}

void Sampler::ApplyPenalties(const SamplingParams& params, std::span<const int32_t> history) {
  if (!HasPenalties(params)) return;
  size_t window = history.size();
  if (params.penalty_last_n > 0)
    window = std::min(window, static_cast<size_t>(params.penalty_last_n));
  std::unordered_map<int32_t, int> counts;
  for (int32_t id : history.subspan(history.size() - window)) ++counts[id];
  for (const auto& [id, count] : counts) {
    if (id < 0 || id >= static_cast<int32_t>(logits_.size())) continue;
    float& logit = logits_[static_cast<size_t>(id)];
    if (params.repetition_penalty != 1.0f) {
      logit = logit > 0.0f ? logit / params.repetition_penalty : logit * params.repetition_penalty;
    }
    logit -= static_cast<float>(count) * params.frequency_penalty + params.presence_penalty;
  }
}

bool Sampler::Ranked(const Candidate& a, const Candidate& b) {
  return Before(a.logit, a.id, b.logit, b.id);
}

// A weighted quickselect: partition around a pivot, keep the side that holds
// the answer. Expected linear time; `candidates` is reordered.
Sampler::Candidate Sampler::TopPLast(std::vector<Candidate>& candidates, double need) {
  auto begin = candidates.begin(), end = candidates.end();
  while (end - begin > 1) {
    const Candidate pivot = *(begin + (end - begin) / 2);
    const auto split =
        std::partition(begin, end, [&](const Candidate& c) { return Ranked(c, pivot); });
    double above = 0.0;
    for (auto it = begin; it != split; ++it) above += it->mass;
    if (above >= need) {  // within the tokens ranked above the pivot (there is one: need > 0)
      end = split;
      continue;
    }
    need -= above;
    if (pivot.mass >= need || end - split == 1) return pivot;
    need -= pivot.mass;
    // The rest: what ranks below the pivot.
    std::iter_swap(split,
                   std::find_if(split, end, [&](const Candidate& c) { return c.id == pivot.id; }));
    begin = split + 1;
  }
  return *begin;
}

// Over a large vocabulary, first a histogram: a token's distance below the
// best logit, scaled so that the logits' spread fills kBuckets buckets, is its
// bucket (monotone in the logit, so a bucket holds a stretch of the ranking,
// ties together); the buckets' masses, nearest the best first, find the one
// where the prefix mass reaches `need`, and the weighted quickselect runs over
// that bucket's tokens alone. A few linear passes, most of them vectorized,
// instead of partitions of the whole vocabulary (BENCHMARKS.md, "Sampling").
Sampler::Candidate Sampler::TopPLastOfAll(std::span<const float> x, float max_logit, float top_p) {
  constexpr int kBuckets = 2048;
  constexpr size_t kBucketedFrom = 4096;  // smaller vocabularies: the quickselect alone
  const size_t n = x.size();
  weights_.resize(n);
  ExpOf(x, max_logit, 1.0f, weights_);  // probabilities at temperature 1, unnormalized
  // The total over kLanes interleaved sums (a chain of dependent additions
  // would wait on the adder's latency at every token); the order is fixed by
  // n alone.
  constexpr size_t kLanes = 8;
  double lanes[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) lanes[l] += weights_[i + l];
  }
  for (size_t l = 0; i < n; ++i, ++l) lanes[l] += weights_[i];
  double total = 0.0;
  for (const double lane : lanes) total += lane;
  double need = static_cast<double>(top_p) * total;
  candidates_.clear();
  if (n < kBucketedFrom) {
    for (size_t id = 0; id < n; ++id) {
      candidates_.push_back({static_cast<int32_t>(id), x[id], weights_[id]});
    }
    return TopPLast(candidates_, need);
  }
  // The lowest logit, over kLanes interleaved minima (NaNs never compare).
  float lowest[kLanes];
  for (float& lane : lowest) lane = max_logit;
  for (i = 0; i + kLanes <= n; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) lowest[l] = x[i + l] < lowest[l] ? x[i + l] : lowest[l];
  }
  float worst = max_logit;
  for (; i < n; ++i) worst = x[i] < worst ? x[i] : worst;
  for (const float lane : lowest) worst = lane < worst ? lane : worst;
  const float spread = max_logit - worst;
  const float scale = spread > 0.0f && std::isfinite(spread) ? kBuckets / spread : 0.0f;
  // NaN distances (NaN logits, infinite ones) go to the last bucket, as the
  // ranking puts them last.
  const auto bucket = [&](float logit) {
    const float distance = (max_logit - logit) * scale;
    return distance < static_cast<float>(kBuckets) ? static_cast<int>(distance) : kBuckets - 1;
  };
  bucket_mass_.assign(kBuckets, 0.0);
  std::vector<uint32_t>& counts = bucket_counts_;
  counts.assign(kBuckets, 0);
  buckets_.resize(n);
  for (size_t id = 0; id < n; ++id) buckets_[id] = static_cast<uint16_t>(bucket(x[id]));
  for (size_t id = 0; id < n; ++id) {
    bucket_mass_[buckets_[id]] += weights_[id];
    ++counts[buckets_[id]];
  }
  // The bucket where the prefix mass reaches `need`; past the total (its
  // rounding), the last one holding tokens, whose lowest-ranked token ends
  // the ranking.
  int boundary = 0;
  for (int b = 0; b < kBuckets; ++b) {
    if (counts[static_cast<size_t>(b)] == 0) continue;
    boundary = b;
    if (need <= bucket_mass_[static_cast<size_t>(b)]) break;
    need -= bucket_mass_[static_cast<size_t>(b)];
  }
  for (size_t id = 0; id < n; ++id) {
    if (buckets_[id] == boundary) {
      candidates_.push_back({static_cast<int32_t>(id), x[id], weights_[id]});
    }
  }
  return TopPLast(candidates_, need);
}

int32_t Sampler::GreedyToken(std::span<const float> logits) {
  // The scan's answer in two passes that vectorize: the largest value (a NaN
  // never replaces one, as in the scan, whose first entry is never replaced
  // when it is a NaN), then its first id.
  const size_t n = logits.size();
  if (n == 0 || std::isnan(logits[0])) return 0;
  constexpr size_t kLanes = 8;
  float lanes[kLanes];
  for (float& lane : lanes) lane = logits[0];
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l)
      lanes[l] = logits[i + l] > lanes[l] ? logits[i + l] : lanes[l];
  }
  float max = lanes[0];
  for (; i < n; ++i) max = logits[i] > max ? logits[i] : max;
  for (const float lane : lanes) max = lane > max ? lane : max;
  size_t id = 0;
  while (!(logits[id] == max)) ++id;
  return static_cast<int32_t>(id);
}

bool Sampler::PicksGreedyToken(const SamplingParams& params) {
  return params.temperature <= 0.0f && params.logit_bias.empty() && !HasPenalties(params);
}

void Sampler::SelectTopK(std::span<const float> logits, int32_t k) {
  // A heap of the k best so far whose front ranks last: ids come in rising
  // order, so a token displaces it exactly when its logit is greater.
  candidates_.clear();
  const auto n_vocab = static_cast<int32_t>(logits.size());
  int32_t id = 0;
  for (; id < n_vocab && static_cast<int32_t>(candidates_.size()) < k; ++id) {
    candidates_.push_back({id, logits[static_cast<size_t>(id)], 0.0f});
  }
  std::make_heap(candidates_.begin(), candidates_.end(), Ranked);
  // Blocks of kBlock tokens: once the heap holds good tokens few displace
  // one, so a block none of whose logits beats the front is skipped after one
  // comparison of all of them (which vectorizes); the others go token by
  // token, the front read again after every displacement.
  constexpr int32_t kBlock = 16;
  while (id < n_vocab) {
    const int32_t end = std::min(n_vocab, id + kBlock);
    const float front = candidates_.front().logit;
    int32_t passing = 0;
    for (int32_t i = id; i < end; ++i) passing += logits[static_cast<size_t>(i)] > front ? 1 : 0;
    for (; passing > 0 && id < end; ++id) {
      const float logit = logits[static_cast<size_t>(id)];
      if (!(logit > candidates_.front().logit)) continue;
      std::pop_heap(candidates_.begin(), candidates_.end(), Ranked);
      candidates_.back() = {id, logit, 0.0f};
      std::push_heap(candidates_.begin(), candidates_.end(), Ranked);
    }
    id = end;
  }
  std::sort_heap(candidates_.begin(), candidates_.end(), Ranked);  // best first
}

int32_t Sampler::Sample(std::span<const float> logits, const SamplingParams& params,
                        std::span<const int32_t> history, int64_t position) {
  // The raw logits as they are, or a copy with the bias and penalties applied.
  std::span<const float> x = logits;
  if (!params.logit_bias.empty() || HasPenalties(params)) {
    logits_.assign(logits.begin(), logits.end());
    for (const auto& [id, bias] : params.logit_bias) {
      if (id >= 0 && id < static_cast<int32_t>(logits_.size()))
        logits_[static_cast<size_t>(id)] += bias;
    }
    ApplyPenalties(params, history);
    x = logits_;
  }
  const auto n_vocab = static_cast<int32_t>(x.size());

  const int32_t best = GreedyToken(x);
  if (params.temperature <= 0.0f) return best;
  const float max_logit = x[static_cast<size_t>(best)];

  // The truncations keep a prefix of the ranking (higher logit first, ties by
  // lower id); `last` is the lowest-ranked token kept. Nothing is sorted: a
  // vocabulary of 32k-150k tokens sorted per token per sequence would cost
  // more than the step that produced the logits. After top-k or top-p,
  // candidates_ holds every token they keep.
  std::optional<Candidate> last;
  const bool top_k = params.top_k > 0 && params.top_k < n_vocab;
  const bool top_p = params.top_p < 1.0f;
  if (top_k) {
    SelectTopK(x, params.top_k);  // the k best, best first
    last = candidates_.back();
  }
  if (top_p && top_k) {
    // top-p weighs tokens by their probability at temperature 1.
    double total = 0.0;
    for (Candidate& c : candidates_) {
      c.mass = ExpNonPositive(c.logit - max_logit);
      total += c.mass;
    }
    last = TopPLast(candidates_, static_cast<double>(params.top_p) * total);
  } else if (top_p) {
    last = TopPLastOfAll(x, max_logit, params.top_p);
  }
  // min-p: p >= min_p * p_max  <=>  logit >= max_logit + log(min_p); the best always stays.
  const float min_logit = params.min_p > 0.0f ? max_logit + std::log(params.min_p)
                                              : -std::numeric_limits<float>::infinity();
  // Kept: the best token, or one that min-p keeps and that does not rank
  // after `last` (!Ranked(*last, token)). Bitwise, without branches: the draw
  // asks it of every token of the vocabulary, whose answers a branch would
  // mispredict half the time.
  const bool has_last = last.has_value();
  const float last_logit = has_last ? last->logit : 0.0f;
  const int32_t last_id = has_last ? last->id : 0;
  const auto kept = [=](int32_t id, float logit) {
    const bool in_prefix =
        (!has_last) | (!(last_logit > logit) & !((last_logit == logit) & (last_id < id)));
    return (id == best) | (!(logit < min_logit) & in_prefix);
  };

  // Draw over the kept tokens in id order, weighted at the temperature. A
  // token not kept weighs 0 and changes neither sum, so after top-k only its
  // k candidates (and the best token) need weighing.
  const float scale = 1.0f / params.temperature;
  if (!top_k) {
    const bool truncated = last.has_value() || params.min_p > 0.0f;
    return DrawFromAll(x, best, truncated, kept, scale, params.seed, position);
  }
  kept_.clear();
  bool has_best = false;
  for (const Candidate& c : candidates_) {
    if (!kept(c.id, c.logit)) continue;
    kept_.push_back({c.id, ExpNonPositive((c.logit - max_logit) * scale)});
    has_best = has_best || c.id == best;
  }
  if (!has_best) kept_.push_back({best, ExpNonPositive((max_logit - max_logit) * scale)});
  std::sort(kept_.begin(), kept_.end(),
            [](const Weighted& a, const Weighted& b) { return a.id < b.id; });
  double total = 0.0;
  for (const Weighted& w : kept_) total += w.weight;
  const double target = UniformDraw(params.seed, position) * total;
  double cumulative = 0.0;
  int32_t drawn = best;
  for (const Weighted& w : kept_) {
    if (w.weight == 0.0f) continue;
    cumulative += w.weight;
    drawn = w.id;
    if (target < cumulative) break;
  }
  return drawn;
}

template <typename Kept>
int32_t Sampler::DrawFromAll(std::span<const float> x, int32_t best, bool truncated,
                             const Kept& kept, float scale, uint64_t seed, int64_t position) {
  const auto n_vocab = static_cast<int32_t>(x.size());
  const float max_logit = x[static_cast<size_t>(best)];
  weights_.resize(static_cast<size_t>(n_vocab));
  ExpOf(x, max_logit, scale, weights_);
  for (int32_t id = 0; truncated && id < n_vocab; ++id) {
    float& weight = weights_[static_cast<size_t>(id)];
    weight = kept(id, x[static_cast<size_t>(id)]) ? weight : 0.0f;
  }
  // Sums of blocks of kDrawBlock weights, each over kLanes interleaved
  // accumulators (independent additions, so the loop runs at the adder's
  // throughput, not its latency); the draw finds its block from them and
  // walks only that block. The order of every sum is fixed by n_vocab alone.
  constexpr int32_t kDrawBlock = 1024;
  constexpr int kLanes = 8;
  const int32_t n_blocks = (n_vocab + kDrawBlock - 1) / kDrawBlock;
  block_sums_.resize(static_cast<size_t>(n_blocks));
  double total = 0.0;
  for (int32_t b = 0; b < n_blocks; ++b) {
    const int32_t begin = b * kDrawBlock, end = std::min(n_vocab, begin + kDrawBlock);
    double lanes[kLanes] = {};
    int32_t id = begin;
    for (; id + kLanes <= end; id += kLanes) {
      for (int l = 0; l < kLanes; ++l) lanes[l] += weights_[static_cast<size_t>(id + l)];
    }
    for (int l = 0; id < end; ++id, ++l) lanes[l] += weights_[static_cast<size_t>(id)];
    double sum = 0.0;
    for (const double lane : lanes) sum += lane;
    block_sums_[static_cast<size_t>(b)] = sum;
    total += sum;
  }
  const double target = UniformDraw(seed, position) * total;
  double cumulative = 0.0;
  int32_t b = 0;
  while (b + 1 < n_blocks && cumulative + block_sums_[static_cast<size_t>(b)] <= target) {
    cumulative += block_sums_[static_cast<size_t>(b++)];
  }
  int32_t drawn = best;
  for (int32_t id = b * kDrawBlock, end = std::min(n_vocab, id + kDrawBlock); id < end; ++id) {
    const float weight = weights_[static_cast<size_t>(id)];
    if (weight == 0.0f) continue;
    cumulative += weight;
    drawn = id;
    if (target < cumulative) break;
  }
  return drawn;
}

std::vector<TokenLogprob> Sampler::TopLogprobs(std::span<const float> logits, int n) {
  if (n <= 0 || logits.empty()) return {};
  float max = logits[0];
  for (float v : logits) max = std::max(max, v);
  double sum = 0.0;
  for (float v : logits) sum += std::exp(static_cast<double>(v - max));
  const double log_sum = static_cast<double>(max) + std::log(sum);
  std::vector<TokenLogprob> all(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    all[i] = {static_cast<int32_t>(i),
              static_cast<float>(static_cast<double>(logits[i]) - log_sum)};
  }
  const size_t k = std::min(static_cast<size_t>(n), all.size());
  std::partial_sort(all.begin(), all.begin() + static_cast<ptrdiff_t>(k), all.end(),
                    [](const TokenLogprob& a, const TokenLogprob& b) {
                      return Before(a.logprob, a.id, b.logprob, b.id);
                    });
  all.resize(k);
  return all;
}

}  // namespace chord
