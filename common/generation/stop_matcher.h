// Finds stop strings in streamed text and holds back text that could still
// become one, so that a client never receives any part of a matched stop string.
//
// Feed() takes the next piece of decoded text and returns what may be sent
// now; once a stop string is found, stopped() is true and nothing after the
// match (nor the match) is ever returned. Finish() returns what is held back
// when the stream ends for another reason. Not thread-safe (one per sequence).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace chord {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  std::string Feed(std::string_view text);
  std::string Finish();
  bool stopped() const { return stopped_; }
  const std::string& matched() const { return matched_; }

 private:
  // Length of the longest suffix of pending_ that is a proper prefix of a stop string.
  size_t HeldBackLength() const;

  std::vector<std::string> stops_;
  std::string pending_;
  std::string matched_;
  bool stopped_ = false;
};

}  // namespace chord
