#include "worker/sampler.h"

#include <algorithm>
#include <cmath>
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

int32_t Sampler::Sample(std::span<const float> logits, const SamplingParams& params,
                        std::span<const int32_t> history, int64_t position) {
  logits_.assign(logits.begin(), logits.end());
  const auto n_vocab = static_cast<int32_t>(logits_.size());
  for (const auto& [id, bias] : params.logit_bias) {
    if (id >= 0 && id < n_vocab) logits_[static_cast<size_t>(id)] += bias;
  }
  ApplyPenalties(params, history);

  if (params.temperature <= 0.0f) {
    int32_t best = 0;
    for (int32_t id = 1; id < n_vocab; ++id) {
      if (logits_[static_cast<size_t>(id)] > logits_[static_cast<size_t>(best)]) best = id;
    }
    return best;
  }

  candidates_.resize(static_cast<size_t>(n_vocab));
  for (int32_t id = 0; id < n_vocab; ++id) candidates_[static_cast<size_t>(id)] = {id, logits_[static_cast<size_t>(id)]};
  const auto by_logit = [](const Candidate& a, const Candidate& b) {
    return Before(a.logit, a.id, b.logit, b.id);
  };
  size_t keep = candidates_.size();
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < keep) {
    keep = static_cast<size_t>(params.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<ptrdiff_t>(keep),
                      candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  candidates_.resize(keep);

  const float max_logit = candidates_.front().logit;
  if (params.top_p < 1.0f) {
    double total = 0.0;
    for (const Candidate& c : candidates_) total += std::exp(static_cast<double>(c.logit - max_logit));
    double cumulative = 0.0;
    size_t n = 0;
    while (n < candidates_.size()) {
      cumulative += std::exp(static_cast<double>(candidates_[n].logit - max_logit)) / total;
      ++n;
      if (cumulative >= params.top_p) break;
    }
    candidates_.resize(std::max<size_t>(n, 1));
  }
  if (params.min_p > 0.0f) {
    // p >= min_p * p_max  <=>  logit >= max_logit + log(min_p)
    const float threshold = max_logit + std::log(params.min_p);
    size_t n = 1;
    while (n < candidates_.size() && candidates_[n].logit >= threshold) ++n;
    candidates_.resize(n);
  }

  double total = 0.0;
  std::vector<double>& weights = weights_;
  weights.resize(candidates_.size());
  for (size_t i = 0; i < candidates_.size(); ++i) {
    weights[i] = std::exp(static_cast<double>((candidates_[i].logit - max_logit) / params.temperature));
    total += weights[i];
  }
  const double target = UniformDraw(params.seed, position) * total;
  double cumulative = 0.0;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    cumulative += weights[i];
    if (target < cumulative) return candidates_[i].id;
  }
  return candidates_.back().id;
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
