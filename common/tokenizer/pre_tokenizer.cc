#include "common/tokenizer/pre_tokenizer.h"

#include <unicode/regex.h>
#include <unicode/unistr.h>

#include "common/base/status.h"
#include "common/tokenizer/unicode.h"

namespace chord::tokenizer_internal {
namespace {

// GPT-2's word split (llama.cpp drops the final `|\s+` of the original; text left
// between matches becomes a piece anyway).
constexpr char kGpt2[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
// Llama 3 / Qwen 2: the case-insensitive contractions spelled out.
constexpr char kLlama3[] =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kQwen2[] =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// llama.cpp's \s is exactly Unicode White_Space; spell the property out so the
// split does not depend on how an ICU version defines \s.
std::string ToIcuSyntax(std::string_view regex) {
  std::string out;
  out.reserve(regex.size() + 32);
  for (size_t i = 0; i < regex.size(); ++i) {
    if (regex[i] == '\\' && i + 1 < regex.size()) {
      const char c = regex[i + 1];
      if (c == 's' || c == 'S') {
        out += c == 's' ? "\\p{White_Space}" : "\\P{White_Space}";
      } else {
        out += regex.substr(i, 2);
      }
      ++i;
      continue;
    }
    out += regex[i];
  }
  return out;
}

}  // namespace

struct PreTokenizer::Patterns {
  std::vector<std::unique_ptr<icu::RegexPattern>> list;
};

PreTokenizer::PreTokenizer() : patterns_(std::make_unique<Patterns>()) {}

absl::StatusOr<std::vector<std::string>> PreTokenizerRegexes(std::string_view pre) {
  if (pre == "default") {
    return std::vector<std::string>{
        R"([\p{P}\$\+<=>\^~\|]+)",
        kGpt2,
        R"(\p{N}+)",
        "[0-9][0-9][0-9]",
    };
  }
  if (pre == "gpt-2" || pre == "phi-2" || pre == "mpt" || pre == "olmo" || pre == "jais" ||
      pre == "jina-es" || pre == "jina-de" || pre == "gigachat" || pre == "jina-v1-en" ||
      pre == "jina-v2-es" || pre == "jina-v2-de" || pre == "jina-v2-code" || pre == "roberta-bpe") {
    return std::vector<std::string>{kGpt2};
  }
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3" ||
      pre == "dbrx" || pre == "smaug-bpe") {
    return std::vector<std::string>{kLlama3};
  }
  if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "megrez" || pre == "stablelm2") {
    return std::vector<std::string>{kQwen2};
  }
  if (pre == "falcon") {
    return std::vector<std::string>{R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"};
  }
  if (pre == "starcoder" || pre == "refact" || pre == "command-r" || pre == "smollm" ||
      pre == "codeshell" || pre == "exaone" || pre == "minerva-7b") {
    return std::vector<std::string>{R"(\p{N})", kGpt2};
  }
  if (pre == "deepseek-coder") {
    return std::vector<std::string>{
        "[\r\n]",
        R"(\s?\p{L}+)",
        R"(\s?\p{P}+)",
        "[\xE4\xB8\x80-\xE9\xBE\xA5\xE0\xA0\x80-\xE4\xB8\x80\xEA\xB0\x80-\xED\x9F\xBF]+",  // [一-龥ࠀ-一가-퟿]+
        R"(\p{N})",
    };
  }
  return absl::UnimplementedError("tokenizer.ggml.pre: unsupported pre-tokenizer '" +
                                  std::string(pre) + "'");
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(
    std::vector<std::string> regexes) {
  std::unique_ptr<PreTokenizer> pre(new PreTokenizer());
  for (const std::string& regex : regexes) {
    UErrorCode status = U_ZERO_ERROR;
    UParseError parse_error;
    const icu::UnicodeString pattern = icu::UnicodeString::fromUTF8(ToIcuSyntax(regex));
    std::unique_ptr<icu::RegexPattern> compiled(
        icu::RegexPattern::compile(pattern, 0, parse_error, status));
    if (U_FAILURE(status) || compiled == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer regex '", regex,
                                                     "' does not compile: ", u_errorName(status)));
    }
    pre->patterns_->list.push_back(std::move(compiled));
  }
  return pre;
}

PreTokenizer::~PreTokenizer() = default;

std::vector<std::string> PreTokenizer::Split(std::string_view text) const {
  if (text.empty()) return {};
  const std::vector<uint32_t> cpts = DecodeUtf8(text);
  const icu::UnicodeString utext = icu::UnicodeString::fromUTF32(
      reinterpret_cast<const UChar32*>(cpts.data()), static_cast<int32_t>(cpts.size()));
  // Piece boundaries as UTF-16 offsets into `utext`.
  std::vector<int32_t> bounds = {0, utext.length()};
  std::vector<int32_t> next;
  for (const auto& pattern : patterns_->list) {
    UErrorCode status = U_ZERO_ERROR;
    std::unique_ptr<icu::RegexMatcher> matcher(pattern->matcher(utext, status));
    if (U_FAILURE(status)) continue;
    next.clear();
    next.push_back(0);
    for (size_t p = 0; p + 1 < bounds.size(); ++p) {
      const int32_t start = bounds[p];
      const int32_t limit = bounds[p + 1];
      matcher->region(start, limit, status);
      while (U_SUCCESS(status) && matcher->find(status)) {
        const int32_t ms = matcher->start(status);
        const int32_t me = matcher->end(status);
        if (me <= ms) continue;
        if (ms > next.back()) next.push_back(ms);
        next.push_back(me);
      }
      if (limit > next.back()) next.push_back(limit);
      status = U_ZERO_ERROR;
    }
    bounds.swap(next);
  }
  std::vector<std::string> words;
  words.reserve(bounds.size());
  for (size_t p = 0; p + 1 < bounds.size(); ++p) {
    std::string word;
    utext.tempSubStringBetween(bounds[p], bounds[p + 1]).toUTF8String(word);
    words.push_back(std::move(word));
  }
  return words;
}

}  // namespace chord::tokenizer_internal
