#include "common/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <queue>

#include "absl/strings/str_format.h"
#include "common/base/status.h"
#include "common/tokenizer/unicode.h"

namespace chord {
namespace {

using tokenizer_internal::Fragment;
using tokenizer_internal::Vocab;

struct Symbol {
  int prev;
  int next;
  size_t offset;
  size_t length;
};

struct Bigram {
  int left;
  int right;
  int rank;
  std::string text;
};

// Lowest rank first; on a tie, the leftmost pair.
struct BigramOrder {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

// Undoes GPT-2's byte mapping; code points outside it are written as llama.cpp
// does ("[UNK_BYTE_0x..." + the token text + "]").
std::string DecodeByteLevel(const std::string& text) {
  std::string out;
  for (uint32_t cpt : tokenizer_internal::DecodeUtf8(text)) {
    const int byte = tokenizer_internal::ByteFromUnicode(cpt);
    if (byte >= 0) {
      out.push_back(static_cast<char>(byte));
      continue;
    }
    std::string utf8;
    tokenizer_internal::AppendUtf8(cpt, &utf8);
    out += "[UNK_BYTE_0x";
    for (char c : utf8) out += absl::StrFormat("%02x", static_cast<uint8_t>(c));
    out += text + "]";
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(
    std::vector<std::string> tokens, std::vector<int32_t> types,
    const std::vector<std::string>& merges, Options options) {
  ASSIGN_OR_RETURN(std::vector<std::string> regexes,
                   tokenizer_internal::PreTokenizerRegexes(options.pre));
  ASSIGN_OR_RETURN(auto pre_tokenizer, tokenizer_internal::PreTokenizer::Create(regexes));
  ASSIGN_OR_RETURN(Vocab vocab, Vocab::Create(std::move(tokens), {}, std::move(types)));
  RETURN_IF_ERROR(tokenizer_internal::CheckSpecialTokens(vocab, options.special));
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer(std::move(vocab)));
  tok->pre_ = options.pre;
  tok->ignore_merges_ = options.ignore_merges;
  tok->pre_tokenizer_ = std::move(pre_tokenizer);
  tok->ranks_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    // "first second", split at the first space after the first byte; the first
    // occurrence of a pair keeps its rank.
    const std::string& m = merges[i];
    const size_t pos = m.find(' ', 1);
    std::pair<std::string, std::string> pair;
    if (pos != std::string::npos) pair = {m.substr(0, pos), m.substr(pos + 1)};
    tok->ranks_.emplace(std::move(pair), static_cast<int>(i));
  }
  tokenizer_internal::SpecialTokens& special = options.special;
  tok->eog_ids_ = tokenizer_internal::DetectEndOfGeneration(&tok->vocab_, &special);
  tok->vocab_.BuildSpecialCache();
  tok->bos_id_ = special.bos;
  tok->eos_id_ = special.eos;
  tok->add_bos_ = special.add_bos;
  tok->add_eos_ = special.add_eos;
  tok->add_space_prefix_ = false;
  tok->token_types_ = tok->vocab_.types();
  return tok;
}

int BpeTokenizer::MergeRank(std::string_view left, std::string_view right) const {
  const auto it = ranks_.find(std::make_pair(std::string(left), std::string(right)));
  return it == ranks_.end() ? -1 : it->second;
}

void BpeTokenizer::EncodeWord(const std::string& word, std::vector<TokenId>* out) const {
  if (ignore_merges_) {
    const TokenId whole = vocab_.Find(word);
    if (whole >= 0) {
      out->push_back(whole);
      return;
    }
  }
  std::vector<Symbol> symbols;
  size_t offset = 0;
  while (offset < word.size()) {
    const size_t len =
        std::min(tokenizer_internal::Utf8SequenceLength(static_cast<uint8_t>(word[offset])),
                 word.size() - offset);
    const int index = static_cast<int>(symbols.size());
    offset += len;
    symbols.push_back({index - 1, offset == word.size() ? -1 : index + 1, offset - len, len});
  }
  const auto text_of = [&](const Symbol& s) {
    return std::string_view(word.data() + s.offset, s.length);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
  const auto add_bigram = [&](int left, int right) {
    if (left == -1 || right == -1) return;
    const int rank = MergeRank(text_of(symbols[left]), text_of(symbols[right]));
    if (rank < 0) return;
    std::string text(text_of(symbols[left]));
    text.append(text_of(symbols[right]));
    queue.push({left, right, rank, std::move(text)});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) add_bigram(i - 1, i);
  while (!queue.empty()) {
    const Bigram bigram = queue.top();
    queue.pop();
    Symbol& left = symbols[bigram.left];
    Symbol& right = symbols[bigram.right];
    if (left.length == 0 || right.length == 0) continue;
    // Stale: the pair's text changed since it was queued.
    if (left.length + right.length != bigram.text.size() ||
        std::string_view(word.data() + left.offset, bigram.text.size()) != bigram.text) {
      continue;
    }
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = bigram.left;
    add_bigram(left.prev, bigram.left);
    add_bigram(bigram.left, left.next);
  }
  for (const Symbol& s : symbols) {
    if (s.length == 0) continue;
    const std::string_view piece = text_of(s);
    const TokenId id = vocab_.Find(piece);
    if (id >= 0) {
      out->push_back(id);
      continue;
    }
    for (char c : piece) {  // llama.cpp's fallback: single bytes that are tokens
      const TokenId b = vocab_.Find(std::string_view(&c, 1));
      if (b >= 0) out->push_back(b);
    }
  }
}

std::vector<TokenId> BpeTokenizer::Encode(std::string_view text, bool add_special,
                                          bool parse_special) const {
  std::vector<TokenId> out;
  if (add_special && add_bos_ && bos_id_ >= 0) out.push_back(bos_id_);
  for (const Fragment& f : vocab_.Partition(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      continue;
    }
    for (const std::string& word : pre_tokenizer_->Split(text.substr(f.offset, f.length))) {
      EncodeWord(tokenizer_internal::ByteEncode(word), &out);
    }
  }
  if (add_special && add_eos_ && eos_id_ >= 0) out.push_back(eos_id_);
  return out;
}

std::string BpeTokenizer::TokenToPiece(TokenId id, bool render_special) const {
  using namespace tokenizer_internal;  // NOLINT: attribute bits
  if (!vocab_.IsValid(id)) return "";
  if (std::optional<std::string> special = vocab_.SpecialPiece(id, render_special)) return *special;
  const uint32_t attr = vocab_.attr(id);
  if (attr & kAttrNormal) return DecodeByteLevel(vocab_.text(id));
  return "";
}

std::string_view BpeTokenizer::TokenText(TokenId id) const {
  return vocab_.IsValid(id) ? std::string_view(vocab_.text(id)) : std::string_view();
}

}  // namespace chord
