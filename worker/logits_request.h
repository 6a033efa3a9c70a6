// What the last stage hands back of a step's logits. Sampling runs on the
// host, but a sequence sampled greedily from its raw logits needs only their
// largest entry: a stage on a GPU picks those tokens there and copies just
// them, instead of n_vocab floats a row (16 MB a step at 128 sequences of a
// 32,000-token vocabulary).
#pragma once

#include <cstdint>
#include <span>

namespace chord {

struct LogitsRequest {
  // n_rows x n_vocab floats, host memory: row r's logits where `full` is
  // empty or full[r] != 0; other rows may be left as they were.
  float* logits = nullptr;
  std::span<const uint8_t> full;
  // Empty, or n_rows entries: greedy[r] = Sampler::GreedyToken of row r for
  // every row not marked in `full` (those the caller samples itself; their
  // entries may be left as they were).
  std::span<int32_t> greedy;
};

}  // namespace chord
