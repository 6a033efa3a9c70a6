#include "common/tokenizer/spm_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <queue>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_replace.h"
#include "common/base/status.h"
#include "common/tokenizer/unicode.h"

namespace chord {
namespace {

using tokenizer_internal::Fragment;
using tokenizer_internal::Vocab;

constexpr char kSpaceMarker[] = "\xE2\x96\x81";  // U+2581 "▁"

struct Symbol {
  int prev;
  int next;
  size_t offset;  // into the segment text
  size_t length;  // 0 once merged into its left neighbour
};

struct Bigram {
  int left;
  int right;
  float score;
  size_t size;
};

// Highest score first; on a tie, the leftmost pair.
struct BigramOrder {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

// One segment's merge state: llama.cpp's llm_tokenizer_spm_session.
class SpmSession {
 public:
  SpmSession(const Vocab& vocab, const std::string& text) : vocab_(vocab), text_(text) {}

  // Splits the text into UTF-8 symbols and merges them; `rev_merge_` records
  // how each merged text was formed, for resegmenting texts that are not tokens.
  void Merge() {
    size_t offset = 0;
    while (offset < text_.size()) {
      const size_t len =
          std::min(tokenizer_internal::Utf8SequenceLength(static_cast<uint8_t>(text_[offset])),
                   text_.size() - offset);
      const int index = static_cast<int>(symbols_.size());
      offset += len;
      symbols_.push_back({index - 1, offset == text_.size() ? -1 : index + 1, offset - len, len});
    }
    for (int i = 1; i < static_cast<int>(symbols_.size()); ++i) TryAddBigram(i - 1, i);
    while (!queue_.empty()) {
      const Bigram bigram = queue_.top();
      queue_.pop();
      Symbol& left = symbols_[bigram.left];
      Symbol& right = symbols_[bigram.right];
      // Stale entry: one side was merged away since it was queued.
      if (left.length == 0 || right.length == 0 || left.length + right.length != bigram.size) {
        continue;
      }
      left.length += right.length;
      right.length = 0;
      left.next = right.next;
      if (right.next >= 0) symbols_[right.next].prev = bigram.left;
      TryAddBigram(left.prev, bigram.left);
      TryAddBigram(bigram.left, left.next);
    }
  }

  void Emit(const std::function<TokenId(uint8_t)>& byte_token, std::vector<TokenId>* out) const {
    if (symbols_.empty()) return;
    for (int i = 0; i != -1; i = symbols_[i].next) Resegment(symbols_[i], byte_token, out);
  }

 private:
  void TryAddBigram(int left, int right) {
    if (left == -1 || right == -1) return;
    const size_t size = symbols_[left].length + symbols_[right].length;
    const std::string_view piece(text_.data() + symbols_[left].offset, size);
    const TokenId id = vocab_.Find(piece);
    if (id < 0) return;
    queue_.push({left, right, vocab_.score(id), size});
    rev_merge_[piece] = {left, right};
  }

  void Resegment(const Symbol& symbol, const std::function<TokenId(uint8_t)>& byte_token,
                 std::vector<TokenId>* out) const {
    const std::string_view piece(text_.data() + symbol.offset, symbol.length);
    const TokenId id = vocab_.Find(piece);
    if (id >= 0) {
      out->push_back(id);
      return;
    }
    const auto it = rev_merge_.find(piece);
    if (it == rev_merge_.end()) {
      for (char c : piece) {
        const TokenId b = byte_token(static_cast<uint8_t>(c));
        if (b >= 0) out->push_back(b);
      }
      return;
    }
    Resegment(symbols_[it->second.first], byte_token, out);
    Resegment(symbols_[it->second.second], byte_token, out);
  }

  const Vocab& vocab_;
  const std::string& text_;
  std::vector<Symbol> symbols_;
  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue_;
  absl::flat_hash_map<std::string_view, std::pair<int, int>> rev_merge_;
};

bool ContainsAny(const std::string& haystack, std::initializer_list<std::string_view> needles) {
  for (std::string_view n : needles) {
    if (haystack.find(n) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SpmTokenizer>> SpmTokenizer::Create(std::vector<std::string> tokens,
                                                                   std::vector<float> scores,
                                                                   std::vector<int32_t> types,
                                                                   Options options) {
  ASSIGN_OR_RETURN(Vocab vocab,
                   Vocab::Create(std::move(tokens), std::move(scores), std::move(types)));
  RETURN_IF_ERROR(tokenizer_internal::CheckSpecialTokens(vocab, options.special));
  std::unique_ptr<SpmTokenizer> tok(new SpmTokenizer(std::move(vocab)));
  Vocab& v = tok->vocab_;
  tokenizer_internal::SpecialTokens& special = options.special;
  tok->eog_ids_ = tokenizer_internal::DetectEndOfGeneration(&v, &special);
  // Phi-3's chat tokens swallow the whitespace after them (llama.cpp sets this
  // by model name until GGUF carries per-token attributes).
  std::string name = absl::AsciiStrToLower(options.model_name);
  if (ContainsAny(name, {"phi-3", "phi3"})) {
    v.BuildSpecialCache();
    for (TokenId id : v.special_tokens()) v.SetAttr(id, tokenizer_internal::kAttrRstrip, true);
    v.SetAttr(v.Find("</s>"), tokenizer_internal::kAttrRstrip, true);
    for (std::string_view t : {"<unk>", "<s>", "<|endoftext|>"}) {
      v.SetAttr(v.Find(t), tokenizer_internal::kAttrRstrip, false);
    }
  }
  v.BuildSpecialCache();
  tok->bos_id_ = special.bos;
  tok->eos_id_ = special.eos;
  tok->unk_id_ = special.unk;
  tok->add_bos_ = special.add_bos;
  tok->add_eos_ = special.add_eos;
  tok->add_space_prefix_ = options.add_space_prefix;
  tok->token_types_ = v.types();
  return tok;
}

TokenId SpmTokenizer::ByteToken(uint8_t byte) const {
  const TokenId id = vocab_.Find(absl::StrFormat("<0x%02X>", byte));
  if (id >= 0) return id;
  const TokenId plain = vocab_.Find(std::string(1, static_cast<char>(byte)));
  return plain >= 0 ? plain : unk_id_;
}

void SpmTokenizer::EncodeSegment(const std::string& text, std::vector<TokenId>* out) const {
  SpmSession session(vocab_, text);
  session.Merge();
  session.Emit([this](uint8_t b) { return ByteToken(b); }, out);
}

std::vector<TokenId> SpmTokenizer::Encode(std::string_view text, bool add_special,
                                          bool parse_special) const {
  std::vector<TokenId> out;
  if (add_special && add_bos_ && bos_id_ >= 0) out.push_back(bos_id_);
  bool prev_special = true;  // the start of the input counts as after a special token
  for (const Fragment& f : vocab_.Partition(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      prev_special = true;
      continue;
    }
    std::string segment;
    if (add_space_prefix_ && prev_special) segment = " ";
    segment.append(text.substr(f.offset, f.length));
    EncodeSegment(absl::StrReplaceAll(segment, {{" ", kSpaceMarker}}), &out);
    prev_special = false;
  }
  if (add_special && add_eos_ && eos_id_ >= 0) out.push_back(eos_id_);
  return out;
}

std::string SpmTokenizer::TokenToPiece(TokenId id, bool render_special) const {
  using namespace tokenizer_internal;  // NOLINT: attribute bits
  if (!vocab_.IsValid(id)) return "";
  if (std::optional<std::string> special = vocab_.SpecialPiece(id, render_special)) return *special;
  const uint32_t attr = vocab_.attr(id);
  if (attr & kAttrNormal) return absl::StrReplaceAll(vocab_.text(id), {{kSpaceMarker, " "}});
  if (attr & kAttrByte) {
    const std::string& t = vocab_.text(id);
    // "<0xNN>"; llama.cpp parses the hex digits after "<0x".
    unsigned value = 0;
    for (size_t i = 3; i < t.size() && std::isxdigit(static_cast<unsigned char>(t[i])); ++i) {
      const char c = t[i];
      value = value * 16 + static_cast<unsigned>(std::isdigit(static_cast<unsigned char>(c))
                                                     ? c - '0'
                                                     : (std::tolower(c) - 'a' + 10));
    }
    return std::string(1, static_cast<char>(value & 0xFF));
  }
  return "";  // unused / undefined tokens render as nothing, like control ones
}

std::string_view SpmTokenizer::TokenText(TokenId id) const {
  return vocab_.IsValid(id) ? std::string_view(vocab_.text(id)) : std::string_view();
}

}  // namespace chord
