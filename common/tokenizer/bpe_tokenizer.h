// Byte-level BPE tokenizer (`tokenizer.ggml.model` = "gpt2"), as llama.cpp's
// llm_tokenizer_bpe: the pre-tokenizer cuts the text into words, each word's
// bytes are mapped to printable code points (GPT-2's table), and adjacent
// symbols merge by the rank of their pair in `tokenizer.ggml.merges` (lowest
// first, leftmost on ties). With ignore_merges (Llama 3) a word that is itself a
// token is taken whole.
//
// Thread-safety: immutable after Create(); see Tokenizer.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/tokenizer/pre_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/vocab.h"

namespace chord {

class BpeTokenizer final : public Tokenizer {
 public:
  struct Options {
    tokenizer_internal::SpecialTokens special;
    std::string pre = "default";  // tokenizer.ggml.pre
    bool ignore_merges = false;
  };

  // INVALID_ARGUMENT for an inconsistent vocabulary or special id out of range;
  // UNIMPLEMENTED for an unknown pre-tokenizer name.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(
      std::vector<std::string> tokens, std::vector<int32_t> types,
      const std::vector<std::string>& merges, Options options);

  TokenizerKind kind() const override { return TokenizerKind::kBytePairEncoding; }
  std::string_view kind_name() const override { return "gpt2"; }
  std::string_view pre_tokenizer() const override { return pre_; }
  int32_t vocab_size() const override { return vocab_.size(); }

  std::vector<TokenId> Encode(std::string_view text, bool add_special,
                              bool parse_special = false) const override;
  std::string TokenToPiece(TokenId id, bool render_special = false) const override;
  std::string_view TokenText(TokenId id) const override;

 private:
  explicit BpeTokenizer(tokenizer_internal::Vocab vocab) : vocab_(std::move(vocab)) {}

  // Merges one byte-encoded word and appends its tokens.
  void EncodeWord(const std::string& word, std::vector<TokenId>* out) const;
  int MergeRank(std::string_view left, std::string_view right) const;

  tokenizer_internal::Vocab vocab_;
  std::string pre_;
  bool ignore_merges_ = false;
  std::unique_ptr<tokenizer_internal::PreTokenizer> pre_tokenizer_;
  absl::flat_hash_map<std::pair<std::string, std::string>, int> ranks_;
};

}  // namespace chord
