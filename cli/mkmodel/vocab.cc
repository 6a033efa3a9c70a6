#include "cli/mkmodel/vocab.h"

#include <string_view>
#include <unordered_set>

#include "common/base/status.h"

namespace chord::mkmodel {
namespace {

constexpr std::string_view kWordStart = "\xE2\x96\x81";  // U+2581 "▁"

// Common English words and fragments the pieces are built from.
constexpr std::string_view kFragments[] = {
    "the",   "and",    "ing",   "ion",    "er",      "ed",    "es",    "re",    "in",    "on",
    "at",    "en",     "an",    "or",     "to",      "of",    "it",    "is",    "was",   "he",
    "she",   "they",   "we",    "you",    "for",     "with",  "that",  "this",  "have",  "had",
    "not",   "but",    "be",    "are",    "his",     "her",   "from",  "one",   "all",   "there",
    "what",  "so",     "up",    "out",    "if",      "about", "who",   "get",   "which", "go",
    "me",    "when",   "make",  "can",    "like",    "time",  "no",    "just",  "him",   "know",
    "take",  "people", "into",  "year",   "your",    "good",  "some",  "could", "them",  "see",
    "other", "than",   "then",  "now",    "look",    "only",  "come",  "its",   "over",  "think",
    "also",  "back",   "after", "use",    "two",     "how",   "our",   "work",  "first", "well",
    "way",   "even",   "new",   "want",   "because", "any",   "these", "give",  "day",   "most",
    "us",    "little", "big",   "red",    "ball",    "dog",   "cat",   "park",  "play",  "happy",
    "said",  "once",   "upon",  "friend", "tree",    "sun",   "girl",  "boy",   "mom",   "dad",
    "ness",  "ment",   "able",  "tion",   "ly",      "est",   "ful",   "less",  "pre",   "un",
    "dis",   "ch",     "sh",    "th",     "qu",      "st",    "tr",    "pl",    "gr",    "br",
    "cl",    "fl",     "sp",    "wh",     "ou",      "ea",    "oo",    "ee",    "ai",    "ay",
    "ow",    "al",     "ar",    "ic",     "le",      "se",    "ve",    "ce",    "de",    "ge",
};

constexpr std::string_view kPunctuation = ".,!?'\"-:;()";

// Collects distinct pieces in order until `limit` are known.
class PieceList {
 public:
  explicit PieceList(size_t limit) : limit_(limit) {}
  bool full() const { return pieces_.size() >= limit_; }
  void Add(std::string piece) {
    if (full() || !seen_.insert(piece).second) return;
    pieces_.push_back(std::move(piece));
  }
  std::vector<std::string>& pieces() { return pieces_; }

 private:
  size_t limit_;
  std::unordered_set<std::string> seen_;
  std::vector<std::string> pieces_;
};

// Each piece added is an earlier piece plus one character (or a single character).
void AddPrefixes(PieceList& list, std::string_view base, std::string_view word) {
  for (size_t k = 1; k <= word.size() && !list.full(); ++k) {
    const std::string tail(word.substr(0, k));
    list.Add(std::string(base) + tail);
    list.Add(std::string(kWordStart) + std::string(base) + tail);
  }
}

std::vector<std::string> MakePieces(size_t count) {
  PieceList list(count);
  list.Add(std::string(kWordStart));
  for (char c = 'a'; c <= 'z'; ++c) list.Add(std::string(1, c));
  for (char c = 'a'; c <= 'z'; ++c) list.Add(std::string(kWordStart) + c);
  for (char c = 'A'; c <= 'Z'; ++c) list.Add(std::string(1, c));
  for (char c = '0'; c <= '9'; ++c) list.Add(std::string(1, c));
  for (char c : kPunctuation) list.Add(std::string(1, c));
  for (char c = 'A'; c <= 'Z'; ++c) list.Add(std::string(kWordStart) + c);
  for (std::string_view word : kFragments) AddPrefixes(list, "", word);
  for (std::string_view first : kFragments) {
    for (std::string_view second : kFragments) {
      if (list.full()) break;
      AddPrefixes(list, first, second);
    }
  }
  return std::move(list.pieces());
}

}  // namespace

absl::StatusOr<Vocab> MakeSyntheticVocab(int64_t n_vocab) {
  if (n_vocab < kMinSyntheticVocab) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a synthetic vocabulary needs at least %d tokens (3 specials, 256 bytes, pieces), got %d",
        kMinSyntheticVocab, n_vocab));
  }
  Vocab vocab;
  vocab.tokens = {"<unk>", "<s>", "</s>"};
  vocab.types = {kTokenUnknown, kTokenControl, kTokenControl};
  for (int b = 0; b < 256; ++b) {
    vocab.tokens.push_back(absl::StrFormat("<0x%02X>", b));
    vocab.types.push_back(kTokenByte);
  }
  vocab.scores.assign(vocab.tokens.size(), 0.0f);
  const size_t n_pieces = static_cast<size_t>(n_vocab) - vocab.tokens.size();
  std::vector<std::string> pieces = MakePieces(n_pieces);
  if (pieces.size() < n_pieces) {
    return absl::InvalidArgumentError(
        absl::StrFormat("a synthetic vocabulary can have at most %d tokens, asked for %d",
                        vocab.tokens.size() + pieces.size(), n_vocab));
  }
  for (size_t i = 0; i < pieces.size(); ++i) {
    vocab.tokens.push_back(std::move(pieces[i]));
    // SPM merges the highest-scoring pair first: earlier (shorter) pieces win.
    vocab.scores.push_back(-static_cast<float>(i));
    vocab.types.push_back(kTokenNormal);
  }
  return vocab;
}

absl::Status AddVocabMetadata(const Vocab& vocab, gguf::GgufWriter& writer) {
  RETURN_IF_ERROR(writer.AddString("tokenizer.ggml.model", "llama"));
  RETURN_IF_ERROR(writer.AddStringArray("tokenizer.ggml.tokens", vocab.tokens));
  RETURN_IF_ERROR(writer.AddFloat32Array("tokenizer.ggml.scores", vocab.scores));
  RETURN_IF_ERROR(writer.AddInt32Array("tokenizer.ggml.token_type", vocab.types));
  RETURN_IF_ERROR(writer.AddUint32("tokenizer.ggml.bos_token_id", kBosId));
  RETURN_IF_ERROR(writer.AddUint32("tokenizer.ggml.eos_token_id", kEosId));
  RETURN_IF_ERROR(writer.AddUint32("tokenizer.ggml.unknown_token_id", kUnkId));
  RETURN_IF_ERROR(writer.AddBool("tokenizer.ggml.add_bos_token", true));
  RETURN_IF_ERROR(writer.AddBool("tokenizer.ggml.add_eos_token", false));
  return absl::OkStatus();
}

absl::StatusOr<int64_t> SourceVocabSize(const gguf::GgufFile& source) {
  const gguf::Value* tokens = source.Find("tokenizer.ggml.tokens");
  const auto* array = tokens == nullptr ? nullptr : std::get_if<gguf::Array>(&tokens->data);
  if (array == nullptr || array->element_type != gguf::ValueType::kString ||
      array->elements.empty()) {
    return absl::InvalidArgumentError(
        "the vocabulary source has no tokenizer.ggml.tokens string array");
  }
  return static_cast<int64_t>(array->elements.size());
}

absl::StatusOr<int64_t> CopyTokenizerMetadata(const gguf::GgufFile& source,
                                              gguf::GgufWriter& writer) {
  ASSIGN_OR_RETURN(const int64_t n_vocab, SourceVocabSize(source));
  for (const auto& [key, value] : source.metadata()) {
    if (key.starts_with("tokenizer.")) RETURN_IF_ERROR(writer.AddValue(key, value));
  }
  return n_vocab;
}

}  // namespace chord::mkmodel
