// Byte-level BPE pre-tokenization: the text is cut into words by a list of
// regular expressions, applied in sequence, each one splitting the pieces the
// previous one left (llama.cpp's unicode_regex_split). Text between matches
// stays a piece of its own. Each regex sees only its piece, so lookaheads and
// anchors stop at the piece's ends.
//
// Regexes run on ICU's engine; `\s` is taken as Unicode White_Space, which is
// what llama.cpp's std::regex emulation matches.
//
// Thread-safety: immutable after Create(); Split() may run concurrently.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace chord::tokenizer_internal {

// The regexes llama.cpp uses for a `tokenizer.ggml.pre` name (aliases included).
// UNIMPLEMENTED naming the value for a name it does not know.
absl::StatusOr<std::vector<std::string>> PreTokenizerRegexes(std::string_view pre);

class PreTokenizer {
 public:
  // INVALID_ARGUMENT when a regex does not compile.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(std::vector<std::string> regexes);
  ~PreTokenizer();

  // Splits UTF-8 `text` into words (as UTF-8). Invalid UTF-8 bytes become U+FFFD
  // first, as llama.cpp does.
  std::vector<std::string> Split(std::string_view text) const;

 private:
  struct Patterns;  // compiled ICU patterns, kept out of this header
  PreTokenizer();
  std::unique_ptr<Patterns> patterns_;
};

}  // namespace chord::tokenizer_internal
