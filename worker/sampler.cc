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

void Sampler::ExpOf(std::span<const float> logits, float max_logit, float scale, std::span<float> out) {
  for (size_t i = 0; i < logits.size(); ++i) out[i] = ExpNonPositive((logits[i] - max_logit) * scale);
}

double Sampler::UniformDraw(uint64_t seed, int64_t position) {
  const uint64_t bits = SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(position));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

void Sampler::ApplyPenalties(const SamplingParams& params, std::span<const int32_t> history) {
  const bool any = params.repetition_penalty != 1.0f || params.presence_penalty != 0.0f ||
                   params.frequency_penalty != 0.0f;
  if (!any || params.penalty_last_n == 0) return;
  size_t window = history.size();
  if (params.penalty_last_n > 0) window = std::min(window, static_cast<size_t>(params.penalty_last_n));
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
    const auto split = std::partition(begin, end, [&](const Candidate& c) { return Ranked(c, pivot); });
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
    std::iter_swap(split, std::find_if(split, end, [&](const Candidate& c) { return c.id == pivot.id; }));
    begin = split + 1;
  }
  return *begin;
}

int32_t Sampler::GreedyToken(std::span<const float> logits) {
  int32_t best = 0;
  const auto n = static_cast<int32_t>(logits.size());
  for (int32_t id = 1; id < n; ++id) {
    if (logits[static_cast<size_t>(id)] > logits[static_cast<size_t>(best)]) best = id;
  }
  return best;
}

bool Sampler::PicksGreedyToken(const SamplingParams& params) {
  const bool penalties = params.penalty_last_n != 0 &&
                         (params.repetition_penalty != 1.0f || params.presence_penalty != 0.0f ||
                          params.frequency_penalty != 0.0f);
  return params.temperature <= 0.0f && params.logit_bias.empty() && !penalties;
}

int32_t Sampler::Sample(std::span<const float> logits, const SamplingParams& params,
                        std::span<const int32_t> history, int64_t position) {
  logits_.assign(logits.begin(), logits.end());
  const auto n_vocab = static_cast<int32_t>(logits_.size());
  for (const auto& [id, bias] : params.logit_bias) {
    if (id >= 0 && id < n_vocab) logits_[static_cast<size_t>(id)] += bias;
  }
  ApplyPenalties(params, history);

  const int32_t best = GreedyToken(logits_);
  if (params.temperature <= 0.0f) return best;
  const float max_logit = logits_[static_cast<size_t>(best)];

  // The truncations keep a prefix of the ranking (higher logit first, ties by
  // lower id); `last` is the lowest-ranked token kept. Nothing is sorted: a
  // vocabulary of 32k-150k tokens sorted per token per sequence would cost
  // more than the step that produced the logits.
  std::optional<Candidate> last;
  const bool top_k = params.top_k > 0 && params.top_k < n_vocab;
  const bool top_p = params.top_p < 1.0f;
  if (top_k || top_p) {
    candidates_.resize(static_cast<size_t>(n_vocab));
    for (int32_t id = 0; id < n_vocab; ++id) {
      candidates_[static_cast<size_t>(id)] = {id, logits_[static_cast<size_t>(id)], 0.0f};
    }
  }
  if (top_k) {
    const auto kth = candidates_.begin() + (params.top_k - 1);
    std::nth_element(candidates_.begin(), kth, candidates_.end(), Ranked);
    last = *kth;
    candidates_.resize(static_cast<size_t>(params.top_k));  // the k best, in no order
  }
  if (top_p) {
    // top-p weighs tokens by their probability at temperature 1.
    double total = 0.0;
    for (Candidate& c : candidates_) {
      c.mass = ExpNonPositive(c.logit - max_logit);
      total += c.mass;
    }
    last = TopPLast(candidates_, static_cast<double>(params.top_p) * total);
  }
  // min-p: p >= min_p * p_max  <=>  logit >= max_logit + log(min_p); the best always stays.
  const float min_logit = params.min_p > 0.0f ? max_logit + std::log(params.min_p)
                                              : -std::numeric_limits<float>::infinity();
  const auto kept = [&](int32_t id, float logit) {
    if (id == best) return true;
    if (logit < min_logit) return false;
    return !last.has_value() || !Ranked(*last, Candidate{id, logit, 0.0f});
  };

  // Draw over the kept tokens in id order, weighted at the temperature.
  weights_.resize(static_cast<size_t>(n_vocab));
  ExpOf(logits_, max_logit, 1.0f / params.temperature, weights_);
  double total = 0.0;
  for (int32_t id = 0; id < n_vocab; ++id) {
    float& weight = weights_[static_cast<size_t>(id)];
    if (!kept(id, logits_[static_cast<size_t>(id)])) weight = 0.0f;
    total += weight;
  }
  const double target = UniformDraw(params.seed, position) * total;
  double cumulative = 0.0;
  int32_t drawn = best;
  for (int32_t id = 0; id < n_vocab; ++id) {
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
    all[i] = {static_cast<int32_t>(i), static_cast<float>(static_cast<double>(logits[i]) - log_sum)};
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
