// The token table shared by both tokenizer families: texts, scores, llama.cpp's
// token attributes, text -> id lookup, and the split of input text around
// special (control / user-defined) tokens that happens before tokenization.
//
// Thread-safety: immutable once built (the Set* calls happen during
// construction); all const methods may run concurrently.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"

namespace chord::tokenizer_internal {

// llama.cpp's token attribute bits (llama_token_attr).
enum TokenAttr : uint32_t {
  kAttrUndefined = 0,
  kAttrUnknown = 1u << 0,
  kAttrUnused = 1u << 1,
  kAttrNormal = 1u << 2,
  kAttrControl = 1u << 3,
  kAttrUserDefined = 1u << 4,
  kAttrByte = 1u << 5,
  kAttrLstrip = 1u << 7,
  kAttrRstrip = 1u << 8,
};

// GGUF token types (tokenizer.ggml.token_type).
enum TokenType : int32_t {
  kTypeNormal = 1,
  kTypeUnknown = 2,
  kTypeControl = 3,
  kTypeUserDefined = 4,
  kTypeUnused = 5,
  kTypeByte = 6,
};

// A piece of the input: either a special token (token >= 0) or the raw text
// [offset, offset + length) of the input.
struct Fragment {
  TokenId token = -1;
  size_t offset = 0;
  size_t length = 0;
};

class Vocab {
 public:
  // `scores` and `types` may be empty (all 0.0 / all normal); otherwise their
  // length must match `tokens`. INVALID_ARGUMENT naming the key when not.
  static absl::StatusOr<Vocab> Create(std::vector<std::string> tokens, std::vector<float> scores,
                                      std::vector<int32_t> types);

  int32_t size() const { return static_cast<int32_t>(texts_.size()); }
  bool IsValid(TokenId id) const { return id >= 0 && id < size(); }
  // -1 when `text` is not a token. Duplicate texts resolve to the last id.
  TokenId Find(std::string_view text) const;
  const std::string& text(TokenId id) const { return texts_[id]; }
  float score(TokenId id) const { return scores_[id]; }
  uint32_t attr(TokenId id) const { return attrs_[id]; }
  // The piece of an unknown, control or user-defined token, rendered the same
  // way by both tokenizer families: its text, or "" for unknown/control tokens
  // unless `render_special`. nullopt for other tokens (each family decodes them).
  std::optional<std::string> SpecialPiece(TokenId id, bool render_special) const;
  // The GGUF token type, updated when llama.cpp's rules force a token to control.
  int32_t type(TokenId id) const { return types_[id]; }
  const std::vector<int32_t>& types() const { return types_; }

  void SetAttr(TokenId id, uint32_t bit, bool on);
  // Marks a token as control (attribute and type), as llama.cpp does for
  // end-of-generation texts that the file did not mark.
  void ForceControl(TokenId id);

  // Rebuilds the list of special tokens (control, user-defined, unknown),
  // longest text first. Call after the last attribute change.
  void BuildSpecialCache();
  const std::vector<TokenId>& special_tokens() const { return special_cache_; }

  // Splits `text` around special tokens as llama.cpp's tokenizer_st_partition:
  // each special token in turn (longest first) is cut out of the remaining raw
  // text. Control and unknown tokens only count when `parse_special`;
  // user-defined ones always do.
  std::vector<Fragment> Partition(std::string_view text, bool parse_special) const;

 private:
  void CutOut(std::string_view text, TokenId id, const Fragment& fragment,
              std::vector<Fragment>* out) const;

  std::vector<std::string> texts_;
  std::vector<float> scores_;
  std::vector<uint32_t> attrs_;
  std::vector<int32_t> types_;
  absl::flat_hash_map<std::string, TokenId> to_id_;
  std::vector<TokenId> special_cache_;
};

// The special ids and flags a tokenizer needs, already resolved from metadata
// and llama.cpp's per-family defaults (-1: none).
struct SpecialTokens {
  TokenId bos = -1;
  TokenId eos = -1;
  TokenId unk = -1;
  TokenId eot = -1;
  TokenId eom = -1;
  bool add_bos = false;
  bool add_eos = false;
};

// INVALID_ARGUMENT when a special id is neither -1 nor a token of `vocab`.
absl::Status CheckSpecialTokens(const Vocab& vocab, const SpecialTokens& special);

// Applies llama.cpp's text-based detection of EOT/EOM/FIM tokens (forcing them
// to control) and returns the sorted end-of-generation ids.
std::vector<TokenId> DetectEndOfGeneration(Vocab* vocab, SpecialTokens* special);

}  // namespace chord::tokenizer_internal
