// Chooses a sequence's next token from its logits.
//
// Sampling is a pure function of (logits, parameters, seed, position, token
// history): the random number is drawn from a counter-based generator keyed by
// (seed, position), so replaying a sequence after a failure, or running it in
// another batch or process, draws exactly the same numbers and tokens.
//
// Order, as llama.cpp's default chain: logit bias -> repetition/presence/frequency
// penalties -> (greedy argmax if temperature is 0) -> top-k -> top-p -> min-p ->
// temperature -> softmax -> draw. Each truncation keeps a prefix of the ranking
// (higher logit first, lower id first among equal logits); the draw walks the
// kept tokens in id order. Linear in the vocabulary: no sort (selection
// instead), so sampling many sequences per step stays cheap.
//
// Thread-safety: a Sampler holds scratch buffers; use one per thread.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/generation/sampling_params.h"

namespace chord {

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
};

class Sampler {
 public:
  // `history` is the sequence's tokens so far (prompt and generated); the
  // penalties look at its last penalty_last_n entries. `position` is the
  // position of the token being chosen.
  int32_t Sample(std::span<const float> logits, const SamplingParams& params,
                 std::span<const int32_t> history, int64_t position);

  // The id of the largest logit, the lowest id among equal ones: the scan
  // `best = 0; for id: if logits[id] > logits[best] then best = id`, so a NaN
  // is never chosen unless it is entry 0 (then 0 is). Sample's greedy choice.
  static int32_t GreedyToken(std::span<const float> logits);
  // Whether Sample(logits, params, ...) is GreedyToken(logits) for any logits
  // and history: temperature 0, no logit bias, no penalties.
  static bool PicksGreedyToken(const SamplingParams& params);

  // The n most likely tokens under the raw log-softmax of `logits`, most likely
  // first (ties: lower id first).
  static std::vector<TokenLogprob> TopLogprobs(std::span<const float> logits, int n);

  // Uniform double in [0, 1) for (seed, position): SplitMix64 over a mix of both.
  static double UniformDraw(uint64_t seed, int64_t position);

  // e^x for x <= 0 in plain float arithmetic (within 3e-7 relative; 0 below
  // -87): the same value on every machine, unlike a C library's exp, and a
  // loop of it vectorizes. The weights of the draw and of top-p.
  static float ExpNonPositive(float x);
  // out[i] = ExpNonPositive((logits[i] - max_logit) * scale).
  static void ExpOf(std::span<const float> logits, float max_logit, float scale,
                    std::span<float> out);

 private:
  struct Candidate {
    int32_t id;
    float logit;
    float mass;  // top-p's weight: exp(logit - max logit)
  };
  struct Weighted {
    int32_t id;
    float weight;  // the draw's weight: exp((logit - max logit) / temperature)
  };
  // a ranks before b: higher logit, or the same logit and a lower id.
  static bool Ranked(const Candidate& a, const Candidate& b);
  // top-p: the lowest-ranked token of the shortest ranking prefix of
  // `candidates` whose mass reaches `need`.
  static Candidate TopPLast(std::vector<Candidate>& candidates, double need);
  // The same over the whole vocabulary `x` (best logit max_logit), need =
  // top_p times its total mass at temperature 1.
  Candidate TopPLastOfAll(std::span<const float> x, float max_logit, float top_p);
  // candidates_ = the k best tokens (0 < k < logits.size()), best first: one
  // pass with a heap of k, a few hundred updates for random logits.
  void SelectTopK(std::span<const float> logits, int32_t k);
  static bool HasPenalties(const SamplingParams& params);
  // The draw over the whole vocabulary (no top-k): each token weighted at
  // the temperature (`scale` = 1 / temperature), or 0 where `truncated` and
  // not kept(id, logit).
  template <typename Kept>
  int32_t DrawFromAll(std::span<const float> x, int32_t best, bool truncated, const Kept& kept,
                      float scale, uint64_t seed, int64_t position);
  void ApplyPenalties(const SamplingParams& params, std::span<const int32_t> history);

  std::vector<Candidate> candidates_;
  std::vector<Weighted> kept_;  // the draw's tokens in id order (after top-k)
  std::vector<double> block_sums_;
  std::vector<double> bucket_mass_;  // TopPLastOfAll's histogram
  std::vector<uint32_t> bucket_counts_;
  std::vector<uint16_t> buckets_;  // each token's bucket
  std::vector<float> logits_;
  std::vector<float> weights_;
};

}  // namespace chord
