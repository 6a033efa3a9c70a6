#include "common/tokenizer/unicode.h"

#include <array>

namespace chord::tokenizer_internal {
namespace {

struct ByteTables {
  std::array<uint32_t, 256> to_unicode{};
  std::array<int, 324> from_unicode{};  // code points used are < 324
};

const ByteTables& Tables() {
  static const ByteTables tables = [] {
    ByteTables t;
    t.from_unicode.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cpt = printable ? static_cast<uint32_t>(b) : next++;
      t.to_unicode[b] = cpt;
      t.from_unicode[cpt] = b;
    }
    return t;
  }();
  return tables;
}

// Range allowed for the second byte of a sequence with this lead byte, and the
// number of continuation bytes; need == 0 marks a byte that cannot start one.
struct LeadInfo {
  int need;
  uint8_t lo;
  uint8_t hi;
};

LeadInfo Lead(uint8_t b) {
  if (b >= 0xC2 && b <= 0xDF) return {1, 0x80, 0xBF};
  if (b == 0xE0) return {2, 0xA0, 0xBF};
  if (b == 0xED) return {2, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {2, 0x80, 0xBF};
  if (b == 0xF0) return {3, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {3, 0x80, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};
  return {0, 0, 0};
}

}  // namespace

size_t Utf8SequenceLength(uint8_t lead) {
  static constexpr size_t kLengths[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLengths[lead >> 4];
}

void AppendUtf8(uint32_t cpt, std::string* out) {
  if (cpt < 0x80) {
    out->push_back(static_cast<char>(cpt));
  } else if (cpt < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cpt >> 6)));
    out->push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else if (cpt < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cpt >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cpt >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cpt >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  }
}

std::vector<uint32_t> DecodeUtf8(std::string_view text) {
  // Mirrors llama.cpp: the lead byte's high bits give the length, continuation
  // bytes must be 10xxxxxx; overlong forms are accepted. Anything else costs one
  // byte and yields U+FFFD.
  std::vector<uint32_t> out;
  out.reserve(text.size());
  size_t i = 0;
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const auto is_cont = [&](size_t k) { return k < text.size() && (byte(k) & 0xC0) == 0x80; };
  while (i < text.size()) {
    const uint8_t b = byte(i);
    if (!(b & 0x80)) {
      out.push_back(b);
      i += 1;
    } else if ((b & 0xE0) == 0xC0 && is_cont(i + 1)) {
      out.push_back(((b & 0x1Fu) << 6) | (byte(i + 1) & 0x3Fu));
      i += 2;
    } else if ((b & 0xF0) == 0xE0 && is_cont(i + 1) && is_cont(i + 2)) {
      out.push_back(((b & 0x0Fu) << 12) | ((byte(i + 1) & 0x3Fu) << 6) | (byte(i + 2) & 0x3Fu));
      i += 3;
    } else if ((b & 0xF8) == 0xF0 && is_cont(i + 1) && is_cont(i + 2) && is_cont(i + 3)) {
      out.push_back(((b & 0x07u) << 18) | ((byte(i + 1) & 0x3Fu) << 12) |
                    ((byte(i + 2) & 0x3Fu) << 6) | (byte(i + 3) & 0x3Fu));
      i += 4;
    } else {
      out.push_back(kReplacementChar);
      i += 1;
    }
  }
  return out;
}

uint32_t ByteToUnicode(uint8_t byte) { return Tables().to_unicode[byte]; }

int ByteFromUnicode(uint32_t cpt) {
  const auto& table = Tables().from_unicode;
  return cpt < table.size() ? table[cpt] : -1;
}

std::string ByteEncode(std::string_view text) {
  std::string out;
  out.reserve(text.size() * 2);
  for (char c : text) AppendUtf8(ByteToUnicode(static_cast<uint8_t>(c)), &out);
  return out;
}

std::string TakeValidUtf8(std::string* pending, std::string_view bytes) {
  std::string& buf = *pending;
  buf.append(bytes);
  std::string out;
  size_t i = 0;
  const size_t n = buf.size();
  const auto at = [&](size_t k) { return static_cast<uint8_t>(buf[k]); };
  while (i < n) {
    const uint8_t b = at(i);
    if (b < 0x80) {
      out.push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    const LeadInfo lead = Lead(b);
    if (lead.need == 0) {
      AppendUtf8(kReplacementChar, &out);
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool bad = false;
    for (int k = 1; k <= lead.need; ++k, ++j) {
      if (j >= n) {  // valid so far, but incomplete: hold it back
        buf.erase(0, i);
        return out;
      }
      const uint8_t lo = k == 1 ? lead.lo : 0x80;
      const uint8_t hi = k == 1 ? lead.hi : 0xBF;
      if (at(j) < lo || at(j) > hi) {
        bad = true;
        break;
      }
    }
    if (bad) {
      AppendUtf8(kReplacementChar, &out);  // the maximal subpart [i, j)
    } else {
      out.append(buf, i, j - i);
    }
    i = j;
  }
  buf.clear();
  return out;
}

std::string FlushUtf8(std::string* pending) {
  std::string& buf = *pending;
  std::string out;
  if (!buf.empty()) AppendUtf8(kReplacementChar, &out);
  buf.clear();
  return out;
}

}  // namespace chord::tokenizer_internal
