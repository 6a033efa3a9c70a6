// A request's token journal: its prompt and every token generated so far, in
// order. Whatever must be fed to the model next (a prompt chunk, the last
// sampled token, or everything again after a preemption or a lost stage) is a
// range of it. Not thread-safe: owned by the scheduler thread.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "common/tokenizer/tokenizer.h"

namespace chord::coordinator {

class Journal {
 public:
  explicit Journal(std::vector<TokenId> prompt)
      : tokens_(std::move(prompt)), prompt_size_(tokens_.size()) {}

  void Append(TokenId token) { tokens_.push_back(token); }
  size_t size() const { return tokens_.size(); }
  size_t prompt_size() const { return prompt_size_; }
  size_t generated() const { return tokens_.size() - prompt_size_; }
  // Tokens [begin, begin + count), clamped to the journal.
  std::span<const TokenId> Range(size_t begin, size_t count) const;

 private:
  std::vector<TokenId> tokens_;
  size_t prompt_size_;
};

}  // namespace chord::coordinator
