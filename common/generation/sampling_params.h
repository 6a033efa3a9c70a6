// A sequence's sampling parameters, as clients set them. The coordinator keeps
// them in the journal and sends them to the last stage with every step.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace chord {

struct SamplingParams {
  float temperature = 0.8f;         // 0 = greedy (argmax, lowest id wins a tie)
  int32_t top_k = 40;               // <= 0: whole vocabulary
  float top_p = 0.95f;              // 1: off
  float min_p = 0.05f;              // 0: off
  float repetition_penalty = 1.0f;  // 1: off; divides positive logits, multiplies negative ones
  float presence_penalty = 0.0f;    // subtracted once from every token seen in the window
  float frequency_penalty = 0.0f;   // subtracted per occurrence in the window
  int32_t penalty_last_n = 64;      // window of the token history the penalties look at; -1 all
  uint64_t seed = 0;
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the raw logits
};

}  // namespace chord
