// Fuzz target: the tokenizers (common/tokenizer). Input: one byte choosing the
// tokenizer, one byte of flags, then text (any bytes, invalid UTF-8 included).
// The text is tokenized, and the input read as 16-bit token ids (in range and
// past it) is detokenized, both at once and streaming.
//
// Tokenizers: the SentencePiece vocabulary of stories260K (with and without the
// space prefix) and a 1,024-token prefix of GPT-2's byte-level BPE vocabulary
// under each family of pre-tokenizer (fuzz/data, written by make_fuzz_data.cc).
//
// Invariants checked: every id Encode returns is in the vocabulary; decoding
// gives valid UTF-8; streaming gives the same text as Detokenize; and valid
// UTF-8 text without control-token syntax comes back unchanged (SentencePiece
// also maps U+2581 to a space, so that round trip excludes it).
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/gguf/gguf_file.h"
#include "common/gguf/gguf_writer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/unicode.h"
#include "fuzz/fuzz_target.h"

namespace chord::fuzz {
namespace {

// `base`'s metadata with `key` replaced by a string or bool value, as a header-only file.
std::unique_ptr<gguf::GgufFile> WithValue(const gguf::GgufFile& base, const std::string& key,
                                          gguf::Value value) {
  gguf::GgufWriter writer;
  for (const auto& [name, original] : base.metadata()) {
    if (name == key) continue;
    FUZZ_CHECK(writer.AddValue(name, original).ok());
  }
  FUZZ_CHECK(writer.AddValue(key, std::move(value)).ok());
  const std::vector<uint8_t> header = writer.SerializeHeader();
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> file =
      gguf::GgufFile::ParseHeader(std::string(header.begin(), header.end()));
  FUZZ_CHECK(file.ok());
  return *std::move(file);
}

std::unique_ptr<Tokenizer> Build(const gguf::GgufFile& file) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(file);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "fuzz data: %s\n", std::string(tokenizer.status().message()).c_str());
    FUZZ_CHECK(tokenizer.ok());
  }
  return *std::move(tokenizer);
}

// Built once per process: the vocabularies are fixed, only the text is fuzzed.
const std::vector<std::unique_ptr<Tokenizer>>& Tokenizers() {
  static const auto* const tokenizers = [] {
    auto* out = new std::vector<std::unique_ptr<Tokenizer>>;
    absl::StatusOr<std::unique_ptr<gguf::GgufFile>> spm =
        gguf::GgufFile::Open(DataPath("spm-vocab.gguf"));
    absl::StatusOr<std::unique_ptr<gguf::GgufFile>> bpe =
        gguf::GgufFile::Open(DataPath("bpe-vocab.gguf"));
    FUZZ_CHECK(spm.ok() && bpe.ok());
    out->push_back(Build(**spm));
    out->push_back(Build(*WithValue(**spm, "tokenizer.ggml.add_space_prefix",
                                    gguf::Value{gguf::ValueType::kBool, false})));
    // One name per pre-tokenizer family that pre_tokenizer.cc implements.
    for (const char* pre : {"gpt-2", "llama-bpe", "qwen2", "falcon", "starcoder", "deepseek-coder",
                            "default"}) {
      out->push_back(Build(*WithValue(**bpe, "tokenizer.ggml.pre",
                                      gguf::Value{gguf::ValueType::kString, std::string(pre)})));
    }
    return out;
  }();
  return *tokenizers;
}

bool IsValidUtf8(std::string_view text) {
  std::string pending;
  return tokenizer_internal::TakeValidUtf8(&pending, text) == text && pending.empty();
}

// Text that must survive Encode + Detokenize unchanged.
bool RoundTrips(const Tokenizer& tokenizer, std::string_view text) {
  if (!IsValidUtf8(text)) return false;
  if (tokenizer.kind() == TokenizerKind::kSentencePiece &&
      text.find("\xe2\x96\x81") != std::string_view::npos) {
    return false;
  }
  return true;
}

int Run(const uint8_t* data, size_t size) {
  const std::vector<std::unique_ptr<Tokenizer>>& tokenizers = Tokenizers();
  ByteReader input(data, size);
  const Tokenizer& tokenizer = *tokenizers[input.Byte() % tokenizers.size()];
  const uint8_t flags = input.Byte();
  const bool add_special = flags & 1;
  const bool parse_special = flags & 2;
  const std::string_view text = input.Rest();

  const std::vector<TokenId> ids = tokenizer.Encode(text, add_special, parse_special);
  for (TokenId id : ids) FUZZ_CHECK(tokenizer.IsValid(id));
  const std::string decoded = Detokenize(tokenizer, ids);
  FUZZ_CHECK(IsValidUtf8(decoded));
  if (!add_special && !parse_special && RoundTrips(tokenizer, text)) FUZZ_CHECK(decoded == text);

  // The same bytes as token ids, as a worker could return them; the
  // coordinator only lets ids below vocab_size through, but the tokenizer
  // must not depend on it.
  std::vector<TokenId> sampled;
  for (size_t i = 2; i + 1 < size; i += 2) {
    const int32_t id = data[i] | (data[i + 1] << 8);
    sampled.push_back(id % (tokenizer.vocab_size() + 16));
  }
  const std::string whole = Detokenize(tokenizer, sampled);
  FUZZ_CHECK(IsValidUtf8(whole));
  StreamingDetokenizer stream(tokenizer);
  std::string streamed;
  for (TokenId id : sampled) {
    (void)tokenizer.TokenToPiece(id, flags & 4);
    (void)tokenizer.TokenText(id);
    streamed += stream.Push(id);
  }
  streamed += stream.Flush();
  FUZZ_CHECK(streamed == whole);
  return 0;
}

}  // namespace

int FuzzTokenizer(const uint8_t* data, size_t size) { return Run(data, size); }

}  // namespace chord::fuzz

CHORD_FUZZ_ENTRY(chord::fuzz::FuzzTokenizer)
