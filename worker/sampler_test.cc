#include "worker/sampler.h"

#include <cmath>
#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace chord {
namespace {

std::vector<float> RandomLogits(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(static_cast<size_t>(n));
  for (float& v : logits) v = normal(rng);
  return logits;
}

SamplingParams Plain(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  return p;
}

int Argmax(const std::vector<float>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

TEST(SamplerTest, GreedyPicksArgmaxAndLowestIdOnTies) {
  Sampler sampler;
  const std::vector<float> logits = RandomLogits(100, 1);
  EXPECT_EQ(sampler.Sample(logits, Plain(0.0f), {}, 0), Argmax(logits));
  const std::vector<float> tied = {1.0f, 3.0f, 0.5f, 3.0f};
  EXPECT_EQ(sampler.Sample(tied, Plain(0.0f), {}, 0), 1);
}

// GreedyToken is the sequential scan `if (x[id] > x[best]) best = id` from 0,
// and is what Sample chooses whenever PicksGreedyToken holds.
TEST(SamplerTest, GreedyTokenIsTheScanAndSamplesAgreeWhenPicksGreedyToken) {
  const float nan = std::nanf("");
  EXPECT_EQ(Sampler::GreedyToken(std::vector<float>{1.0f, 3.0f, 0.5f, 3.0f}), 1);
  EXPECT_EQ(Sampler::GreedyToken(std::vector<float>{nan, 3.0f, 7.0f}), 0);
  EXPECT_EQ(Sampler::GreedyToken(std::vector<float>{1.0f, nan, 7.0f, nan}), 2);
  EXPECT_EQ(Sampler::GreedyToken(std::vector<float>{-0.0f, 0.0f}), 0);
  EXPECT_EQ(Sampler::GreedyToken(std::vector<float>{-INFINITY, -INFINITY}), 0);
  EXPECT_EQ(Sampler::GreedyToken(std::vector<float>{nan, nan}), 0);
  const std::vector<float> logits = RandomLogits(1000, 9);
  EXPECT_EQ(Sampler::GreedyToken(logits), Argmax(logits));

  Sampler sampler;
  SamplingParams greedy = Plain(0.0f);
  greedy.penalty_last_n = 0;
  greedy.repetition_penalty = 1.3f;  // no window: no penalty
  ASSERT_TRUE(Sampler::PicksGreedyToken(greedy));
  ASSERT_TRUE(Sampler::PicksGreedyToken(Plain(0.0f)));
  const std::vector<int32_t> history = {static_cast<int32_t>(Argmax(logits)), 3, 3};
  EXPECT_EQ(sampler.Sample(logits, greedy, history, 5), Sampler::GreedyToken(logits));
  EXPECT_EQ(sampler.Sample(logits, Plain(0.0f), history, 5), Sampler::GreedyToken(logits));

  SamplingParams penalized = Plain(0.0f);
  penalized.repetition_penalty = 1.3f;
  SamplingParams biased = Plain(0.0f);
  biased.logit_bias = {{7, 2.0f}};
  SamplingParams present = Plain(0.0f);
  present.presence_penalty = 0.5f;
  for (const SamplingParams& p : {penalized, biased, present, Plain(0.7f)}) {
    EXPECT_FALSE(Sampler::PicksGreedyToken(p));
  }
}

TEST(SamplerTest, SameSeedAndPositionSameToken_DifferentPositionsVary) {
  Sampler a, b;
  const std::vector<float> logits = RandomLogits(50, 2);
  SamplingParams p = Plain(1.0f);
  p.seed = 42;
  std::map<int, int> seen;
  for (int64_t pos = 0; pos < 200; ++pos) {
    const int32_t x = a.Sample(logits, p, {}, pos);
    EXPECT_EQ(x, b.Sample(logits, p, {}, pos));
    ++seen[x];
  }
  EXPECT_GT(seen.size(), 5u);  // a flat-ish distribution gives many different tokens
}

TEST(SamplerTest, DrawsFollowTheSoftmaxDistribution) {
  Sampler sampler;
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f};
  SamplingParams p = Plain(1.0f);
  std::vector<int> counts(3);
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    p.seed = static_cast<uint64_t>(i);
    ++counts[static_cast<size_t>(sampler.Sample(logits, p, {}, 7))];
  }
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  EXPECT_NEAR(counts[0] / double(n), 1 / z, 0.015);
  EXPECT_NEAR(counts[1] / double(n), std::exp(1.0) / z, 0.015);
  EXPECT_NEAR(counts[2] / double(n), std::exp(2.0) / z, 0.015);
}

TEST(SamplerTest, LowTemperatureConcentratesOnArgmax) {
  Sampler sampler;
  const std::vector<float> logits = RandomLogits(30, 3);
  SamplingParams p = Plain(0.01f);
  for (int64_t pos = 0; pos < 50; ++pos) EXPECT_EQ(sampler.Sample(logits, p, {}, pos), Argmax(logits));
}

TEST(SamplerTest, TopKKeepsOnlyTheKMostLikely) {
  Sampler sampler;
  const std::vector<float> logits = {5.0f, 4.0f, 3.0f, 2.9f, 1.0f};
  SamplingParams p = Plain(100.0f);  // nearly uniform over what survives
  p.top_k = 2;
  for (int64_t pos = 0; pos < 300; ++pos) EXPECT_LT(sampler.Sample(logits, p, {}, pos), 2);
}

TEST(SamplerTest, TopPKeepsTheSmallestSetAboveP) {
  Sampler sampler;
  // probabilities ~ 0.64, 0.24, 0.09, 0.03
  const std::vector<float> logits = {3.0f, 2.0f, 1.0f, 0.0f};
  SamplingParams p = Plain(1.0f);
  p.top_p = 0.8f;
  std::map<int, int> seen;
  for (int64_t pos = 0; pos < 2000; ++pos) ++seen[sampler.Sample(logits, p, {}, pos)];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen.count(0) && seen.count(1));
}

TEST(SamplerTest, MinPDropsTokensFarBelowTheTop) {
  Sampler sampler;
  const std::vector<float> logits = {3.0f, 2.5f, 0.0f, -1.0f};
  SamplingParams p = Plain(1.0f);
  p.min_p = 0.2f;  // keeps p >= 0.2 * p_max: exp(-0.5) = 0.61 survives, exp(-3) = 0.05 does not
  std::map<int, int> seen;
  for (int64_t pos = 0; pos < 2000; ++pos) ++seen[sampler.Sample(logits, p, {}, pos)];
  EXPECT_EQ(seen.size(), 2u);
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  Sampler sampler;
  SamplingParams p = Plain(0.0f);
  p.repetition_penalty = 2.0f;
  // Token 0 (4.0) seen: 4/2 = 2 < 3 so token 1 wins.
  EXPECT_EQ(sampler.Sample(std::vector<float>{4.0f, 3.0f}, p, std::vector<int32_t>{0}, 1), 1);
  // Negative logit seen: -1 * 2 = -2 < -1.5.
  EXPECT_EQ(sampler.Sample(std::vector<float>{-1.0f, -1.5f}, p, std::vector<int32_t>{0}, 1), 1);
  // Outside the window: no penalty.
  p.penalty_last_n = 1;
  EXPECT_EQ(sampler.Sample(std::vector<float>{4.0f, 3.0f}, p, std::vector<int32_t>{0, 1}, 2), 0);
}

TEST(SamplerTest, PresenceAndFrequencyPenaltiesSubtract) {
  Sampler sampler;
  SamplingParams p = Plain(0.0f);
  p.presence_penalty = 0.5f;
  const std::vector<float> logits = {2.0f, 1.6f};
  EXPECT_EQ(sampler.Sample(logits, p, std::vector<int32_t>{0}, 1), 1);  // 1.5 < 1.6
  p.presence_penalty = 0.0f;
  p.frequency_penalty = 0.15f;
  EXPECT_EQ(sampler.Sample(logits, p, std::vector<int32_t>{0, 0}, 2), 0);     // 1.7 > 1.6
  EXPECT_EQ(sampler.Sample(logits, p, std::vector<int32_t>{0, 0, 0}, 3), 1);  // 1.55 < 1.6
}

TEST(SamplerTest, LogitBiasIsAddedFirst) {
  Sampler sampler;
  SamplingParams p = Plain(0.0f);
  p.logit_bias = {{2, 10.0f}, {99, 5.0f}};  // out-of-range ids are ignored
  EXPECT_EQ(sampler.Sample(std::vector<float>{1.0f, 2.0f, 0.0f}, p, {}, 0), 2);
}

// The sampler's contract spelled out the slow way: rank every token (sort),
// cut the ranking at top-k, then at top-p (probabilities at temperature 1),
// drop what min-p drops, then draw over what is left in id order.
int32_t ReferenceSample(const std::vector<float>& logits, const SamplingParams& p, int64_t position) {
  const int n = static_cast<int>(logits.size());
  std::vector<int32_t> ranking(static_cast<size_t>(n));
  std::iota(ranking.begin(), ranking.end(), 0);
  std::stable_sort(ranking.begin(), ranking.end(), [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)];
  });
  const float max_logit = logits[static_cast<size_t>(ranking[0])];
  size_t keep = ranking.size();
  if (p.top_k > 0) keep = std::min(keep, static_cast<size_t>(p.top_k));
  if (p.top_p < 1.0f) {
    double total = 0.0;
    for (size_t i = 0; i < keep; ++i) total += std::exp(logits[static_cast<size_t>(ranking[i])] - max_logit);
    double cumulative = 0.0;
    size_t n_top_p = 0;
    while (n_top_p < keep) {
      cumulative += std::exp(logits[static_cast<size_t>(ranking[n_top_p++])] - max_logit);
      if (cumulative >= static_cast<double>(p.top_p) * total) break;
    }
    keep = n_top_p;
  }
  std::vector<bool> kept(static_cast<size_t>(n), false);
  for (size_t i = 0; i < keep; ++i) {
    const float logit = logits[static_cast<size_t>(ranking[i])];
    if (i == 0 || p.min_p <= 0.0f || logit >= max_logit + std::log(p.min_p)) kept[static_cast<size_t>(ranking[i])] = true;
  }
  std::vector<float> weights(static_cast<size_t>(n), 0.0f);
  double total = 0.0;
  for (int id = 0; id < n; ++id) {
    if (!kept[static_cast<size_t>(id)]) continue;
    weights[static_cast<size_t>(id)] =
        Sampler::ExpNonPositive((logits[static_cast<size_t>(id)] - max_logit) * (1.0f / p.temperature));
    total += weights[static_cast<size_t>(id)];
  }
  const double target = Sampler::UniformDraw(p.seed, position) * total;
  double cumulative = 0.0;
  int32_t drawn = ranking[0];
  for (int id = 0; id < n; ++id) {
    if (weights[static_cast<size_t>(id)] == 0.0f) continue;
    cumulative += weights[static_cast<size_t>(id)];
    drawn = id;
    if (target < cumulative) break;
  }
  return drawn;
}

TEST(SamplerTest, ExpNonPositiveMatchesTheLibraryWithin3e7) {
  double worst = 0.0;
  for (float x = 0.0f; x > -87.0f; x -= 0.00731f) {
    const double exact = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(Sampler::ExpNonPositive(x) - exact) / exact);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(Sampler::ExpNonPositive(0.0f), 1.0f);
  EXPECT_EQ(Sampler::ExpNonPositive(-88.0f), 0.0f);
  EXPECT_EQ(Sampler::ExpNonPositive(-1e30f), 0.0f);
  // The vectorized loop gives what the function gives.
  const std::vector<float> logits = RandomLogits(1003, 4);
  std::vector<float> out(logits.size());
  Sampler::ExpOf(logits, 9.0f, 1.25f, out);
  for (size_t i = 0; i < logits.size(); ++i) ASSERT_EQ(out[i], Sampler::ExpNonPositive((logits[i] - 9.0f) * 1.25f));
}

TEST(SamplerTest, MatchesTheSortingReferenceOverTruncationSettings) {
  Sampler sampler;
  for (const int n_vocab : {1, 2, 7, 100, 5003}) {
    std::vector<float> logits = RandomLogits(n_vocab, static_cast<uint32_t>(n_vocab));
    // Some exact ties, which the ranking breaks by id.
    for (size_t i = 3; i < logits.size(); i += 17) logits[i] = logits[i - 3];
    for (const int top_k : {0, 1, 5, 40, n_vocab}) {
      for (const float top_p : {1.0f, 0.95f, 0.5f, 0.01f}) {
        for (const float min_p : {0.0f, 0.05f, 0.5f}) {
          SamplingParams p = Plain(0.8f);
          p.top_k = top_k;
          p.top_p = top_p;
          p.min_p = min_p;
          p.seed = static_cast<uint64_t>(top_k * 1000 + n_vocab);
          for (int64_t pos = 0; pos < 20; ++pos) {
            ASSERT_EQ(sampler.Sample(logits, p, {}, pos), ReferenceSample(logits, p, pos))
                << "vocab " << n_vocab << " top_k " << top_k << " top_p " << top_p << " min_p " << min_p
                << " position " << pos;
          }
        }
      }
    }
  }
}

// Over a vocabulary large enough for top-p's histogram of buckets (and many
// of top-k's skipped blocks): logits spread normally, with many exact ties
// (rounded to quarters), and with a few far below the rest (one bucket then
// holds nearly everything).
TEST(SamplerTest, LargeVocabularyMatchesTheSortingReference) {
  Sampler sampler;
  const int n_vocab = 40000;
  for (int shape = 0; shape < 3; ++shape) {
    std::vector<float> logits = RandomLogits(n_vocab, static_cast<uint32_t>(77 + shape));
    if (shape == 1) {
      for (float& v : logits) v = std::round(v * 4.0f) / 4.0f;
    }
    if (shape == 2) {
      for (size_t i = 0; i < logits.size(); i += 5000) logits[i] = -1e4f;
    }
    for (const int top_k : {0, 40}) {
      for (const float top_p : {0.001f, 0.5f, 0.95f, 0.9999f}) {
        SamplingParams p = Plain(0.8f);
        p.top_k = top_k;
        p.top_p = top_p;
        p.seed = static_cast<uint64_t>(shape * 10 + 1);
        for (int64_t pos = 0; pos < 8; ++pos) {
          ASSERT_EQ(sampler.Sample(logits, p, {}, pos), ReferenceSample(logits, p, pos))
              << "shape " << shape << " top_k " << top_k << " top_p " << top_p << " position "
              << pos;
        }
      }
    }
  }
}

TEST(SamplerTest, TopLogprobsAreSortedLogSoftmax) {
  const std::vector<float> logits = RandomLogits(64, 9);
  const std::vector<TokenLogprob> top = Sampler::TopLogprobs(logits, 5);
  ASSERT_EQ(top.size(), 5u);
  double z = 0;
  for (float v : logits) z += std::exp(double(v));
  EXPECT_EQ(top[0].id, Argmax(logits));
  for (size_t i = 0; i < top.size(); ++i) {
    EXPECT_NEAR(top[i].logprob, logits[static_cast<size_t>(top[i].id)] - std::log(z), 1e-5);
    if (i > 0) {
      EXPECT_GE(top[i - 1].logprob, top[i].logprob);
    }
  }
  EXPECT_TRUE(Sampler::TopLogprobs(logits, 0).empty());
}

TEST(SamplerTest, UniformDrawIsInUnitIntervalAndKeyedByBoth) {
  EXPECT_EQ(Sampler::UniformDraw(1, 2), Sampler::UniformDraw(1, 2));
  EXPECT_NE(Sampler::UniformDraw(1, 2), Sampler::UniformDraw(2, 1));
  EXPECT_NE(Sampler::UniformDraw(1, 2), Sampler::UniformDraw(1, 3));
  double sum = 0;
  for (int i = 0; i < 10000; ++i) {
    const double u = Sampler::UniformDraw(5, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
}

}  // namespace
}  // namespace chord
