#include "common/tokenizer/vocab.h"

#include <algorithm>
#include <initializer_list>
#include <utility>

#include "common/base/status.h"

namespace chord::tokenizer_internal {
namespace {

uint32_t AttrFromType(int32_t type) {
  switch (type) {
    case kTypeUnknown:
      return kAttrUnknown;
    case kTypeUnused:
      return kAttrUnused;
    case kTypeNormal:
      return kAttrNormal;
    case kTypeControl:
      return kAttrControl;
    case kTypeUserDefined:
      return kAttrUserDefined;
    case kTypeByte:
      return kAttrByte;
    default:
      return kAttrUndefined;
  }
}

// C isspace in the "C" locale, which is what llama.cpp strips around tokens.
bool IsAsciiSpace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

TokenId FindAny(const Vocab& vocab, std::initializer_list<std::string_view> texts) {
  // llama.cpp walks an unordered map, so with several candidates the winner is
  // unspecified; the lowest id is the deterministic choice.
  TokenId best = -1;
  for (std::string_view t : texts) {
    const TokenId id = vocab.Find(t);
    if (id >= 0 && (best < 0 || id < best)) best = id;
  }
  return best;
}

}  // namespace

absl::StatusOr<Vocab> Vocab::Create(std::vector<std::string> tokens, std::vector<float> scores,
                                    std::vector<int32_t> types) {
  if (tokens.empty()) {
    return absl::InvalidArgumentError("tokenizer.ggml.tokens: empty vocabulary");
  }
  if (tokens.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("tokenizer.ggml.tokens: too many tokens");
  }
  if (!scores.empty() && scores.size() != tokens.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "tokenizer.ggml.scores: %d entries for %d tokens", scores.size(), tokens.size()));
  }
  if (!types.empty() && types.size() != tokens.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "tokenizer.ggml.token_type: %d entries for %d tokens", types.size(), tokens.size()));
  }
  Vocab v;
  const size_t n = tokens.size();
  v.scores_ = scores.empty() ? std::vector<float>(n, 0.0f) : std::move(scores);
  v.types_ = types.empty() ? std::vector<int32_t>(n, kTypeNormal) : std::move(types);
  v.attrs_.resize(n);
  v.to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    // llama.cpp renames empty entries so that every token has a distinct text.
    if (tokens[i].empty()) tokens[i] = absl::StrCat("[EMPTY_", i, "]");
    v.to_id_[tokens[i]] = static_cast<TokenId>(i);
    v.attrs_[i] = AttrFromType(v.types_[i]);
  }
  v.texts_ = std::move(tokens);
  v.BuildSpecialCache();
  return v;
}

TokenId Vocab::Find(std::string_view text) const {
  const auto it = to_id_.find(absl::string_view(text.data(), text.size()));
  return it == to_id_.end() ? -1 : it->second;
}

void Vocab::SetAttr(TokenId id, uint32_t bit, bool on) {
  if (!IsValid(id)) return;
  attrs_[id] = on ? (attrs_[id] | bit) : (attrs_[id] & ~bit);
}

void Vocab::ForceControl(TokenId id) {
  if (!IsValid(id) || (attrs_[id] & kAttrControl)) return;
  attrs_[id] = kAttrControl;
  types_[id] = kTypeControl;
}

void Vocab::BuildSpecialCache() {
  special_cache_.clear();
  for (TokenId id = 0; id < size(); ++id) {
    if (attrs_[id] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) special_cache_.push_back(id);
  }
  std::stable_sort(special_cache_.begin(), special_cache_.end(),
                   [&](TokenId a, TokenId b) { return texts_[a].size() > texts_[b].size(); });
}

void Vocab::CutOut(std::string_view text, TokenId id, const Fragment& fragment,
                   std::vector<Fragment>* out) const {
  const std::string& needle = texts_[id];
  const uint32_t attr = attrs_[id];
  size_t offset = fragment.offset;
  size_t length = fragment.length;
  while (length > 0) {
    const size_t match = text.find(needle, offset);
    if (match == std::string_view::npos || match + needle.size() > offset + length) break;
    size_t left = match - offset;
    if (attr & kAttrLstrip) {
      while (left > 0 && IsAsciiSpace(text[offset + left - 1])) --left;
    }
    if (left > 0) out->push_back({-1, offset, left});
    out->push_back({id, 0, 0});
    size_t right_offset = match + needle.size();
    size_t right_length = offset + length - right_offset;
    if (attr & kAttrRstrip) {
      while (right_length > 0 && IsAsciiSpace(text[right_offset])) {
        ++right_offset;
        --right_length;
      }
    }
    offset = right_offset;
    length = right_length;
  }
  if (length > 0) out->push_back({-1, offset, length});
}

std::vector<Fragment> Vocab::Partition(std::string_view text, bool parse_special) const {
  std::vector<Fragment> fragments;
  if (text.empty()) return fragments;
  fragments.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  for (const TokenId id : special_cache_) {
    if (!parse_special && (attrs_[id] & (kAttrControl | kAttrUnknown))) continue;
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
      } else {
        CutOut(text, id, f, &next);
      }
    }
    fragments.swap(next);
  }
  return fragments;
}

absl::Status CheckSpecialTokens(const Vocab& vocab, const SpecialTokens& special) {
  const std::pair<const char*, TokenId> ids[] = {{"bos", special.bos},
                                                 {"eos", special.eos},
                                                 {"unknown", special.unk},
                                                 {"eot", special.eot},
                                                 {"eom", special.eom}};
  for (const auto& [name, id] : ids) {
    if (id != -1 && !vocab.IsValid(id)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tokenizer.ggml.%s_token_id: token id %d outside the vocabulary of %d",
                          name, id, vocab.size()));
    }
  }
  return absl::OkStatus();
}

std::vector<TokenId> DetectEndOfGeneration(Vocab* vocab, SpecialTokens* special) {
  const auto detect = [&](TokenId* slot, std::initializer_list<std::string_view> texts) {
    if (*slot >= 0) return;
    *slot = FindAny(*vocab, texts);
    vocab->ForceControl(*slot);
  };
  detect(&special->eot,
         {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
          "<\xEF\xBD\x9C"
          "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"});
  detect(&special->eom, {"<|eom_id|>"});
  TokenId fim_pad = -1;
  TokenId fim_rep = -1;
  TokenId fim_sep = -1;
  detect(&fim_pad, {"<|fim_pad|>", "<fim-pad>", "<PAD>"});
  detect(&fim_rep, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"});
  detect(&fim_sep, {"<|file_sep|>"});

  std::vector<TokenId> eog;
  for (TokenId id : {fim_pad, fim_rep, fim_sep, special->eos, special->eot, special->eom}) {
    if (id >= 0) eog.push_back(id);
  }
  for (std::string_view t : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                             "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>"}) {
    const TokenId id = vocab->Find(t);
    if (id < 0) continue;
    eog.push_back(id);
    vocab->ForceControl(id);
  }
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
  return eog;
}

std::optional<std::string> Vocab::SpecialPiece(TokenId id, bool render_special) const {
  const uint32_t a = attr(id);
  if (!(a & (kAttrUnknown | kAttrControl | kAttrUserDefined))) return std::nullopt;
  if (!render_special && (a & (kAttrUnknown | kAttrControl))) return std::string();
  return text(id);
}

}  // namespace chord::tokenizer_internal
