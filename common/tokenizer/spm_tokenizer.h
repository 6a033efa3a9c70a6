// SentencePiece-style tokenizer (`tokenizer.ggml.model` = "llama"), as
// llama.cpp's llm_tokenizer_spm: spaces become "▁", a "▁" is prefixed to text
// that starts the input or follows a special token (when add_space_prefix),
// then adjacent symbols merge, best vocabulary score first (leftmost on ties).
// Pieces that are not tokens fall back to <0xNN> byte tokens, or to the
// unknown token when the vocabulary has no byte tokens.
//
// Thread-safety: immutable after Create(); see Tokenizer.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/vocab.h"

namespace chord {

class SpmTokenizer final : public Tokenizer {
 public:
  struct Options {
    tokenizer_internal::SpecialTokens special;
    bool add_space_prefix = true;
    // general.name; llama.cpp adjusts special-token attributes for Phi-3 by name.
    std::string model_name;
  };

  // INVALID_ARGUMENT when the vocabulary is inconsistent (see Vocab::Create)
  // or a special id is out of range.
  static absl::StatusOr<std::unique_ptr<SpmTokenizer>> Create(std::vector<std::string> tokens,
                                                              std::vector<float> scores,
                                                              std::vector<int32_t> types,
                                                              Options options);

  TokenizerKind kind() const override { return TokenizerKind::kSentencePiece; }
  std::string_view kind_name() const override { return "llama"; }
  std::string_view pre_tokenizer() const override { return "default"; }
  int32_t vocab_size() const override { return vocab_.size(); }

  std::vector<TokenId> Encode(std::string_view text, bool add_special,
                              bool parse_special = false) const override;
  std::string TokenToPiece(TokenId id, bool render_special = false) const override;
  std::string_view TokenText(TokenId id) const override;

 private:
  explicit SpmTokenizer(tokenizer_internal::Vocab vocab) : vocab_(std::move(vocab)) {}

  // Tokenizes one raw-text fragment, already escaped ("▁" for spaces).
  void EncodeSegment(const std::string& text, std::vector<TokenId>* out) const;
  TokenId ByteToken(uint8_t byte) const;

  tokenizer_internal::Vocab vocab_;
  TokenId unk_id_ = -1;
};

}  // namespace chord
