// Text <-> token ids, built from a GGUF file's `tokenizer.*` metadata.
//
// Two families, as llama.cpp implements them:
//   - SentencePiece-style (`tokenizer.ggml.model` = "llama"): score-driven merges over
//     UTF-8 symbols, "▁" for spaces, a leading space added to the text
//     (`tokenizer.ggml.add_space_prefix`, default true), byte fallback <0xNN>.
//   - byte-level BPE (`tokenizer.ggml.model` = "gpt2"): text split by the pre-tokenizer
//     named in `tokenizer.ggml.pre` (gpt-2, llama-bpe/llama3, falcon, starcoder,
//     refact, mpt, deepseek-coder, qwen2, ...), bytes mapped to unicode, rank-driven merges
//     from `tokenizer.ggml.merges`.
// BOS/EOS ids and whether to add them come from metadata, with llama.cpp's defaults.
//
// Thread-safety: immutable after construction; Encode/Decode may run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace chord::gguf {
class GgufFile;
}

namespace chord {

using TokenId = int32_t;

enum class TokenizerKind { kSentencePiece, kBytePairEncoding };

class Tokenizer {
 public:
  // Reads the vocabulary from metadata. INVALID_ARGUMENT / NOT_FOUND / UNIMPLEMENTED
  // (for an unknown model or pre-tokenizer name) with a message naming the key.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const gguf::GgufFile& file);

  virtual ~Tokenizer() = default;

  virtual TokenizerKind kind() const = 0;
  virtual std::string_view kind_name() const = 0;      // "llama" / "gpt2"
  virtual std::string_view pre_tokenizer() const = 0;  // e.g. "gpt-2"; "default" for SPM
  virtual int32_t vocab_size() const = 0;

  // Tokenizes `text`. With `add_special`, BOS (and EOS) are added as the
  // metadata says. With `parse_special`, control-token texts such as "</s>" in
  // the text become those tokens; otherwise they are plain text.
  virtual std::vector<TokenId> Encode(std::string_view text, bool add_special,
                                      bool parse_special = false) const = 0;

  // The raw bytes of one token (byte tokens give their byte, "▁" becomes " ",
  // BPE's byte-to-unicode mapping is undone). Control tokens give their text
  // only when `render_special`, else "".
  virtual std::string TokenToPiece(TokenId id, bool render_special = false) const = 0;
  virtual std::string_view TokenText(TokenId id) const = 0;  // the vocabulary entry as stored

  TokenId bos_id() const { return bos_id_; }  // -1 when the model has none
  TokenId eos_id() const { return eos_id_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  // Whether a space is prefixed to the text before tokenizing (SPM), and so
  // dropped again from the first piece when detokenizing.
  bool add_space_prefix() const { return add_space_prefix_; }
  // End-of-generation tokens: EOS, EOT, and any control token marked as such.
  bool IsEndOfGeneration(TokenId id) const;
  const std::vector<TokenId>& end_of_generation_ids() const { return eog_ids_; }
  bool IsControl(TokenId id) const;
  bool IsValid(TokenId id) const { return id >= 0 && id < vocab_size(); }

 protected:
  TokenId bos_id_ = -1;
  TokenId eos_id_ = -1;
  bool add_bos_ = false;
  bool add_eos_ = false;
  bool add_space_prefix_ = false;
  std::vector<TokenId> eog_ids_;      // sorted
  std::vector<int32_t> token_types_;  // tokenizer.ggml.token_type; 1 normal, 3 control, 6 byte...
};

// Turns a stream of token ids into text that is always valid UTF-8: bytes of a
// code point split across tokens are held back until the code point is complete.
// For SPM models the leading space of the first piece is dropped, as llama.cpp does
// when detokenizing. Invalid sequences become U+FFFD. Not thread-safe (one per stream).
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tokenizer, bool strip_leading_space = true);
  // Returns the text that became complete with this token (possibly empty).
  std::string Push(TokenId id);
  // Returns whatever is held back, with incomplete sequences replaced by U+FFFD.
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool strip_leading_space_;
  bool first_ = true;
  std::string pending_;
};

// Decodes a whole sequence (what StreamingDetokenizer would print in total).
std::string Detokenize(const Tokenizer& tokenizer, std::span<const TokenId> ids,
                       bool strip_leading_space = true);

}  // namespace chord
