#include "common/tokenizer/tokenizer.h"

#include <algorithm>
#include <limits>

#include "common/base/log.h"
#include "common/base/status.h"
#include "common/gguf/gguf_file.h"
#include "common/tokenizer/bpe_tokenizer.h"
#include "common/tokenizer/spm_tokenizer.h"
#include "common/tokenizer/unicode.h"
#include "common/tokenizer/vocab.h"

namespace chord {
namespace {

using tokenizer_internal::SpecialTokens;

constexpr char kModelKey[] = "tokenizer.ggml.model";
constexpr char kTokensKey[] = "tokenizer.ggml.tokens";

// Reads an optional token id. An absent key, or the all-ones value converters
// write for "none", keeps the default; any other id outside the vocabulary is
// rejected. A default outside the vocabulary becomes -1.
absl::Status ReadTokenId(const gguf::GgufFile& file, std::string_view key, int32_t n_vocab,
                         TokenId* id) {
  if (file.Find(key) != nullptr) {
    ASSIGN_OR_RETURN(const int64_t value, file.GetInt(key));
    if (value != -1 && value != std::numeric_limits<uint32_t>::max()) {
      if (value < 0 || value >= n_vocab) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: token id %d outside the vocabulary of %d", key, value, n_vocab));
      }
      *id = static_cast<TokenId>(value);
    }
  }
  if (*id >= n_vocab) *id = -1;
  return absl::OkStatus();
}

absl::Status ReadBool(const gguf::GgufFile& file, std::string_view key, bool* value) {
  if (file.Find(key) == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(*value, file.GetBool(key));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> ReadTokenTypes(const gguf::GgufFile& file) {
  constexpr char kKey[] = "tokenizer.ggml.token_type";
  std::vector<int32_t> types;
  if (file.Find(kKey) == nullptr) return types;
  ASSIGN_OR_RETURN(const std::vector<int64_t> raw, file.GetIntArray(kKey));
  types.reserve(raw.size());
  for (int64_t t : raw) {
    if (t < std::numeric_limits<int32_t>::min() || t > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: value %d out of range", kKey, t));
    }
    types.push_back(static_cast<int32_t>(t));
  }
  return types;
}

// Special ids and flags from metadata over llama.cpp's per-family defaults.
absl::Status ReadSpecial(const gguf::GgufFile& file, int32_t n_vocab, SpecialTokens* special) {
  RETURN_IF_ERROR(ReadTokenId(file, "tokenizer.ggml.bos_token_id", n_vocab, &special->bos));
  RETURN_IF_ERROR(ReadTokenId(file, "tokenizer.ggml.eos_token_id", n_vocab, &special->eos));
  RETURN_IF_ERROR(ReadTokenId(file, "tokenizer.ggml.unknown_token_id", n_vocab, &special->unk));
  RETURN_IF_ERROR(ReadTokenId(file, "tokenizer.ggml.eot_token_id", n_vocab, &special->eot));
  RETURN_IF_ERROR(ReadTokenId(file, "tokenizer.ggml.eom_token_id", n_vocab, &special->eom));
  RETURN_IF_ERROR(ReadBool(file, "tokenizer.ggml.add_bos_token", &special->add_bos));
  RETURN_IF_ERROR(ReadBool(file, "tokenizer.ggml.add_eos_token", &special->add_eos));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> SpmFromGguf(const gguf::GgufFile& file,
                                                       std::vector<std::string> tokens,
                                                       std::vector<int32_t> types) {
  constexpr char kScoresKey[] = "tokenizer.ggml.scores";
  std::vector<float> scores;
  if (file.Find(kScoresKey) != nullptr) {
    ASSIGN_OR_RETURN(scores, file.GetFloatArray(kScoresKey));
  }
  SpmTokenizer::Options options;
  options.special = {.bos = 1, .eos = 2, .unk = 0, .add_bos = true, .add_eos = false};
  const int32_t n_vocab = static_cast<int32_t>(tokens.size());
  RETURN_IF_ERROR(ReadSpecial(file, n_vocab, &options.special));
  RETURN_IF_ERROR(ReadBool(file, "tokenizer.ggml.add_space_prefix", &options.add_space_prefix));
  if (file.Find("general.name") != nullptr) {
    ASSIGN_OR_RETURN(options.model_name, file.GetString("general.name"));
  }
  ASSIGN_OR_RETURN(auto tok, SpmTokenizer::Create(std::move(tokens), std::move(scores),
                                                  std::move(types), std::move(options)));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> BpeFromGguf(const gguf::GgufFile& file,
                                                       std::vector<std::string> tokens,
                                                       std::vector<int32_t> types) {
  constexpr char kMergesKey[] = "tokenizer.ggml.merges";
  if (file.Find(kMergesKey) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(kMergesKey, ": missing for a gpt2 tokenizer"));
  }
  ASSIGN_OR_RETURN(const std::vector<std::string> merges, file.GetStringArray(kMergesKey));
  BpeTokenizer::Options options;
  if (file.Find("tokenizer.ggml.pre") != nullptr) {
    ASSIGN_OR_RETURN(options.pre, file.GetString("tokenizer.ggml.pre"));
  } else {
    log::Warn("tokenizer.ggml.pre missing: using the default pre-tokenizer");
  }
  const std::string& pre = options.pre;
  options.special = {.bos = 11, .eos = 11, .add_bos = false, .add_eos = false};
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3" ||
      pre == "tekken") {
    options.ignore_merges = true;
    options.special.add_bos = true;
  }
  if (pre == "chameleon") options.special.add_bos = true;
  const int32_t n_vocab = static_cast<int32_t>(tokens.size());
  RETURN_IF_ERROR(ReadSpecial(file, n_vocab, &options.special));
  ASSIGN_OR_RETURN(auto tok, BpeTokenizer::Create(std::move(tokens), std::move(types), merges,
                                                  std::move(options)));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const gguf::GgufFile& file) {
  ASSIGN_OR_RETURN(const std::string model, file.GetString(kModelKey));
  if (model != "llama" && model != "gpt2") {
    return absl::UnimplementedError(
        absl::StrCat(kModelKey, ": unsupported tokenizer model '", model, "'"));
  }
  ASSIGN_OR_RETURN(std::vector<std::string> tokens, file.GetStringArray(kTokensKey));
  if (tokens.empty() || tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %d tokens is not a usable vocabulary", kTokensKey, tokens.size()));
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> types, ReadTokenTypes(file));
  if (model == "llama") return SpmFromGguf(file, std::move(tokens), std::move(types));
  return BpeFromGguf(file, std::move(tokens), std::move(types));
}

bool Tokenizer::IsEndOfGeneration(TokenId id) const {
  return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

bool Tokenizer::IsControl(TokenId id) const {
  return IsValid(id) && static_cast<size_t>(id) < token_types_.size() &&
         token_types_[id] == tokenizer_internal::kTypeControl;
}

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool strip_leading_space)
    : tokenizer_(tokenizer), strip_leading_space_(strip_leading_space) {}

std::string StreamingDetokenizer::Push(TokenId id) {
  std::string piece = tokenizer_.TokenToPiece(id);
  // llama.cpp drops one leading space from the first token's piece only (even
  // when that piece is empty, the chance is gone).
  if (first_ && strip_leading_space_ && tokenizer_.add_space_prefix() && !piece.empty() &&
      piece[0] == ' ') {
    piece.erase(0, 1);
  }
  first_ = false;
  return tokenizer_internal::TakeValidUtf8(&pending_, piece);
}

std::string StreamingDetokenizer::Flush() { return tokenizer_internal::FlushUtf8(&pending_); }

std::string Detokenize(const Tokenizer& tokenizer, std::span<const TokenId> ids,
                       bool strip_leading_space) {
  StreamingDetokenizer stream(tokenizer, strip_leading_space);
  std::string text;
  for (TokenId id : ids) text += stream.Push(id);
  text += stream.Flush();
  return text;
}

}  // namespace chord
