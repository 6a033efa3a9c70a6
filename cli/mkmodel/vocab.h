// Tokenizer metadata for `chord mkmodel`: a made-up SentencePiece-style ("llama")
// vocabulary of any size, or the tokenizer.* keys of an existing GGUF.
//
// The synthetic vocabulary is laid out like Llama's: <unk>, <s>, </s>, the 256
// byte-fallback tokens <0x00>..<0xFF>, then distinct pieces made of letters and
// common English fragments, with and without the "▁" word-start marker. Every
// multi-character piece is a shorter piece plus one character, so SPM merging
// can reach it. It depends only on the size (not on the weights' seed).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/gguf/gguf_file.h"
#include "common/gguf/gguf_writer.h"

namespace chord::mkmodel {

// llama.cpp's token types (LLAMA_TOKEN_TYPE_*).
inline constexpr int32_t kTokenNormal = 1;
inline constexpr int32_t kTokenUnknown = 2;
inline constexpr int32_t kTokenControl = 3;
inline constexpr int32_t kTokenByte = 6;

inline constexpr int32_t kUnkId = 0;
inline constexpr int32_t kBosId = 1;
inline constexpr int32_t kEosId = 2;
// Specials and byte tokens plus at least a few pieces.
inline constexpr int64_t kMinSyntheticVocab = 3 + 256 + 40;

struct Vocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
};

// INVALID_ARGUMENT when n_vocab < kMinSyntheticVocab or larger than the pieces
// this generator can make (well above 100k).
absl::StatusOr<Vocab> MakeSyntheticVocab(int64_t n_vocab);

// Adds tokenizer.ggml.{model, tokens, scores, token_type, bos/eos/unk ids,
// add_bos_token, add_eos_token}.
absl::Status AddVocabMetadata(const Vocab& vocab, gguf::GgufWriter& writer);

// The length of `source`'s tokenizer.ggml.tokens; INVALID_ARGUMENT when it has
// no non-empty string array there.
absl::StatusOr<int64_t> SourceVocabSize(const gguf::GgufFile& source);

// Copies every tokenizer.* key of `source` in file order; returns the vocabulary
// size (the length of tokenizer.ggml.tokens). INVALID_ARGUMENT when the source
// has no token list.
absl::StatusOr<int64_t> CopyTokenizerMetadata(const gguf::GgufFile& source,
                                              gguf::GgufWriter& writer);

}  // namespace chord::mkmodel
