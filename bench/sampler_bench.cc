// sampler_bench: microseconds per sampled token against the vocabulary size
// and the truncation settings, beside a baseline that ranks the whole
// vocabulary with a sort (what a sampler without selection does). The last
// stage samples every sequence of a step, so this cost is paid once per
// sequence per step.
//
//   sampler_bench [--runs 5] [--draws 200]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_timing.h"
#include "worker/sampler.h"

namespace chord {
namespace {

using bench::Clock;
using bench::Median;
using bench::Seconds;

// Ranks all tokens by a sort, then draws from the softmax at `temperature`
// over the top-p prefix: the baseline.
int32_t SortingSample(const std::vector<float>& logits, const SamplingParams& p, int64_t position,
                      std::vector<int32_t>& ranking) {
  ranking.resize(logits.size());
  std::iota(ranking.begin(), ranking.end(), 0);
  std::sort(ranking.begin(), ranking.end(), [&](int32_t a, int32_t b) {
    const float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  });
  const float max_logit = logits[static_cast<size_t>(ranking[0])];
  size_t keep = ranking.size();
  if (p.top_k > 0) keep = std::min(keep, static_cast<size_t>(p.top_k));
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    total += std::exp(static_cast<double>(logits[static_cast<size_t>(ranking[i])] - max_logit) / p.temperature);
  }
  const double target = Sampler::UniformDraw(p.seed, position) * total;
  double cumulative = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cumulative += std::exp(static_cast<double>(logits[static_cast<size_t>(ranking[i])] - max_logit) / p.temperature);
    if (target < cumulative) return ranking[i];
  }
  return ranking[keep - 1];
}

struct Setting {
  const char* name;
  int top_k;
  float top_p;
  float min_p;
};

}  // namespace
}  // namespace chord

int main(int argc, char** argv) {
  using namespace chord;
  int runs = 5, draws = 200;
  CLI::App app{"sampler_bench: microseconds per sampled token"};
  app.add_option("--runs", runs, "runs per measurement (the median is printed)")->capture_default_str();
  app.add_option("--draws", draws, "tokens sampled per run")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const Setting settings[] = {{"temperature 0.8 only", 0, 1.0f, 0.0f},
                              {"top-k 40, top-p 0.95, min-p 0.05", 40, 0.95f, 0.05f},
                              {"top-p 0.95", 0, 0.95f, 0.0f}};
  std::printf("| vocabulary | setting | chord sampler, us/token | sort baseline, us/token | speed-up |\n"
              "|---|---|---|---|---|\n");
  for (const int n_vocab : {32000, 128256}) {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::vector<float> logits(static_cast<size_t>(n_vocab));
    for (float& v : logits) v = normal(rng);
    for (const Setting& setting : settings) {
      SamplingParams p;
      p.temperature = 0.8f;
      p.top_k = setting.top_k;
      p.top_p = setting.top_p;
      p.min_p = setting.min_p;
      p.seed = 11;
      Sampler sampler;
      std::vector<int32_t> ranking;
      std::vector<double> ours, baseline;
      int64_t sink = 0;
      for (int r = 0; r < runs; ++r) {
        Clock::time_point start = Clock::now();
        for (int i = 0; i < draws; ++i) sink += sampler.Sample(logits, p, {}, i);
        ours.push_back(Seconds(start) * 1e6 / draws);
        start = Clock::now();
        // The baseline has no top-p or min-p cut; it is timed only where they are off.
        if (setting.top_p == 1.0f && setting.min_p == 0.0f) {
          for (int i = 0; i < draws; ++i) sink += SortingSample(logits, p, i, ranking);
          baseline.push_back(Seconds(start) * 1e6 / draws);
        }
      }
      const double us = Median(ours);
      if (baseline.empty()) {
        std::printf("| %d | %s | %.1f | | |\n", n_vocab, setting.name, us);
      } else {
        std::printf("| %d | %s | %.1f | %.1f | %.1fx |\n", n_vocab, setting.name, us, Median(baseline),
                    Median(baseline) / us);
      }
    }
  }
  return 0;
}
