// UTF-8 helpers shared by the tokenizers: code point decoding with llama.cpp's
// lenient rules, GPT-2's byte <-> unicode table, and an incremental decoder that
// turns an arbitrary byte stream into valid UTF-8.
//
// Thread-safety: the functions keep no shared mutable state (the byte tables
// are built once, thread-safely).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace chord::tokenizer_internal {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Length of the UTF-8 sequence that `lead` starts, by its high bits alone
// (1 for ASCII and for stray continuation bytes), as llama.cpp's unicode_len_utf8.
size_t Utf8SequenceLength(uint8_t lead);

// Appends the UTF-8 encoding of `cpt` to `out`.
void AppendUtf8(uint32_t cpt, std::string* out);

// Decodes `text` into code points; each byte that does not start a well-formed
// sequence becomes U+FFFD (one per byte), as llama.cpp's unicode_cpts_from_utf8.
std::vector<uint32_t> DecodeUtf8(std::string_view text);

// GPT-2's reversible byte -> printable code point mapping, and its inverse
// (returns -1 for a code point outside the table).
uint32_t ByteToUnicode(uint8_t byte);
int ByteFromUnicode(uint32_t cpt);

// Maps every byte of `text` through ByteToUnicode and returns the UTF-8 result.
std::string ByteEncode(std::string_view text);

// Incremental UTF-8 validation. Appends `bytes` to `*pending` and returns the
// bytes that form complete, well-formed code points, keeping a valid but
// incomplete tail in `*pending`. Ill-formed input becomes U+FFFD, one per
// maximal ill-formed subpart (the Unicode "best practice" that Python's
// errors="replace" also follows).
std::string TakeValidUtf8(std::string* pending, std::string_view bytes);
// Returns U+FFFD for a held-back incomplete tail (nothing when there is none)
// and clears `*pending`.
std::string FlushUtf8(std::string* pending);

}  // namespace chord::tokenizer_internal
