// `chord inspect MODEL [--json]`: what a GGUF file holds (architecture,
// hyperparameters, tokenizer, metadata, tensor table, bytes per layer), as text
// for people or as one JSON object for scripts.
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "common/gguf/gguf_file.h"
#include "nlohmann/json.hpp"

namespace chord::cli {
namespace {

using gguf::GgufFile;
using gguf::Value;
using gguf::ValueType;
using Json = nlohmann::ordered_json;

constexpr std::string_view kTokenizerModelKey = "tokenizer.ggml.model";
constexpr std::string_view kTokenizerPreKey = "tokenizer.ggml.pre";
constexpr std::string_view kTokensKey = "tokenizer.ggml.tokens";
constexpr std::string_view kBosKey = "tokenizer.ggml.bos_token_id";
constexpr std::string_view kEosKey = "tokenizer.ggml.eos_token_id";
// Long strings (chat templates, licenses) are cut in the text view only.
constexpr size_t kMaxTextString = 100;

// Bytes of the tensors named blk.N.* per N, and of all the others.
struct LayerBytes {
  std::map<int64_t, uint64_t> per_layer;
  uint64_t non_layer = 0;
  uint64_t total = 0;
};

// Returns N for a tensor named "blk.N.<rest>", nullopt for any other name.
std::optional<int64_t> LayerOf(std::string_view name) {
  constexpr std::string_view kPrefix = "blk.";
  if (name.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  size_t i = kPrefix.size();
  int64_t layer = 0;
  const size_t first_digit = i;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && i - first_digit < 9) {
    layer = layer * 10 + (name[i] - '0');
    ++i;
  }
  if (i == first_digit || i >= name.size() || name[i] != '.') return std::nullopt;
  return layer;
}

LayerBytes CountLayerBytes(const GgufFile& file) {
  LayerBytes result;
  for (const gguf::TensorInfo& tensor : file.tensors()) {
    result.total += tensor.n_bytes;
    if (std::optional<int64_t> layer = LayerOf(tensor.name)) {
      result.per_layer[*layer] += tensor.n_bytes;
    } else {
      result.non_layer += tensor.n_bytes;
    }
  }
  return result;
}

std::string ArraySummary(const gguf::Array& array) {
  return absl::StrFormat("%s[%d]", gguf::ValueTypeName(array.element_type), array.elements.size());
}

// Keeps one metadata entry on one line: control bytes are escaped.
std::string QuotedText(const std::string& text) {
  const size_t shown = std::min(text.size(), kMaxTextString);
  std::string out = "\"";
  for (size_t i = 0; i < shown; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7f) {
      absl::StrAppend(&out, absl::StrFormat("\\x%02x", c));
    } else {
      out += static_cast<char>(c);
    }
  }
  out += "\"";
  if (shown < text.size()) absl::StrAppend(&out, "... (", text.size(), " bytes)");
  return out;
}

// A float32 as the shortest decimal that reads back to it (1e-05, not
// 9.99999974e-06), so that both views show what the converter wrote.
double ShortestFloat(const Value& value) {
  const double wide = std::get<double>(value.data);
  if (value.type != ValueType::kFloat32) return wide;
  char buffer[32];
  const auto [end, error] =
      std::to_chars(buffer, buffer + sizeof(buffer), static_cast<float>(wide));
  if (error != std::errc()) return wide;
  return std::strtod(std::string(buffer, end).c_str(), nullptr);
}

std::string ValueText(const Value& value) {
  switch (value.type) {
    case ValueType::kString:
      return QuotedText(std::get<std::string>(value.data));
    case ValueType::kArray:
      return ArraySummary(std::get<gguf::Array>(value.data));
    case ValueType::kBool:
      return std::get<bool>(value.data) ? "true" : "false";
    case ValueType::kFloat32:
    case ValueType::kFloat64:
      return absl::StrFormat("%.9g", ShortestFloat(value));
    default:
      if (const auto* u = std::get_if<uint64_t>(&value.data)) return absl::StrCat(*u);
      return absl::StrCat(std::get<int64_t>(value.data));
  }
}

Json ValueJson(const Value& value) {
  switch (value.type) {
    case ValueType::kString:
      return std::get<std::string>(value.data);
    case ValueType::kArray:
      return ArraySummary(std::get<gguf::Array>(value.data));
    case ValueType::kBool:
      return std::get<bool>(value.data);
    case ValueType::kFloat32:
    case ValueType::kFloat64:
      return ShortestFloat(value);
    default:
      if (const auto* u = std::get_if<uint64_t>(&value.data)) return *u;
      return std::get<int64_t>(value.data);
  }
}

std::string ShapeText(const gguf::TensorInfo& tensor) {
  std::string text = "[";
  for (size_t i = 0; i < tensor.dims.size(); ++i) {
    absl::StrAppend(&text, i == 0 ? "" : ", ", tensor.dims[i]);
  }
  return text + "]";
}

std::string HumanBytes(uint64_t bytes) {
  constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  if (unit == 0) return absl::StrCat(bytes, " B");
  return absl::StrFormat("%.2f %s", value, kUnits[unit]);
}

// The facts both views share, pulled out of the file once.
struct Summary {
  std::string architecture;
  std::string name;
  std::string hparam_prefix;  // "<arch>."
  std::optional<std::string> tokenizer_model;
  std::optional<std::string> tokenizer_pre;
  std::optional<uint64_t> vocab_size;
  std::optional<int64_t> bos;
  std::optional<int64_t> eos;
  LayerBytes layers;
};

template <typename T>
std::optional<T> Optional(absl::StatusOr<T> value) {
  if (!value.ok()) return std::nullopt;
  return *std::move(value);
}

Summary Summarize(const GgufFile& file) {
  Summary s;
  s.architecture = file.GetString("general.architecture").value_or("");
  s.name = file.GetString("general.name").value_or("");
  s.hparam_prefix = s.architecture.empty() ? "" : s.architecture + ".";
  s.tokenizer_model = Optional(file.GetString(kTokenizerModelKey));
  s.tokenizer_pre = Optional(file.GetString(kTokenizerPreKey));
  if (const Value* tokens = file.Find(kTokensKey); tokens && tokens->type == ValueType::kArray) {
    s.vocab_size = std::get<gguf::Array>(tokens->data).elements.size();
  }
  s.bos = Optional(file.GetInt(kBosKey));
  s.eos = Optional(file.GetInt(kEosKey));
  s.layers = CountLayerBytes(file);
  return s;
}

bool IsHyperparameter(const Summary& s, std::string_view key) {
  return !s.hparam_prefix.empty() && key.substr(0, s.hparam_prefix.size()) == s.hparam_prefix;
}

bool ShownInHeader(std::string_view key) {
  return key == "general.architecture" || key == "general.name" || key == kTokenizerModelKey ||
         key == kTokenizerPreKey || key == kBosKey || key == kEosKey;
}

template <typename T>
std::string OrNone(const std::optional<T>& value) {
  if (!value) return "(none)";
  return absl::StrCat(*value);
}

void PrintText(const std::string& path, const GgufFile& file, const Summary& s) {
  std::cout << absl::StrFormat("file:          %s\n", path)
            << absl::StrFormat("size:          %d bytes (%s)\n", file.file_size(),
                               HumanBytes(file.file_size()))
            << absl::StrFormat("GGUF version:  %d (alignment %d, data at byte %d)\n",
                               file.version(), file.alignment(), file.data_offset())
            << absl::StrFormat("architecture:  %s\n",
                               s.architecture.empty() ? "(none)" : s.architecture)
            << absl::StrFormat("name:          %s\n", s.name.empty() ? "(none)" : s.name)
            << absl::StrFormat("tokenizer:     %s (pre: %s), vocab %s, bos %s, eos %s\n",
                               OrNone(s.tokenizer_model), OrNone(s.tokenizer_pre),
                               OrNone(s.vocab_size), OrNone(s.bos), OrNone(s.eos));
  std::cout << "\nhyperparameters:\n";
  for (const auto& [key, value] : file.metadata()) {
    if (IsHyperparameter(s, key)) std::cout << "  " << key << " = " << ValueText(value) << "\n";
  }
  std::cout << "\nother metadata:\n";
  for (const auto& [key, value] : file.metadata()) {
    if (IsHyperparameter(s, key) || ShownInHeader(key)) continue;
    std::cout << "  " << key << " = " << ValueText(value) << "\n";
  }
  std::cout << absl::StrFormat("\ntensors: %d, %d bytes (%s)\n", file.tensors().size(),
                               s.layers.total, HumanBytes(s.layers.total));
  std::cout << absl::StrFormat("  %-32s %-8s %-24s %12s\n", "name", "type", "shape", "bytes");
  for (const gguf::TensorInfo& t : file.tensors()) {
    std::cout << absl::StrFormat("  %-32s %-8s %-24s %12d\n", t.name, DTypeName(t.type),
                                 ShapeText(t), t.n_bytes);
  }
  std::cout << absl::StrFormat("\nbytes per layer (%d layers):\n", s.layers.per_layer.size());
  for (const auto& [layer, bytes] : s.layers.per_layer) {
    std::cout << absl::StrFormat("  blk.%-4d %12d (%s)\n", layer, bytes, HumanBytes(bytes));
  }
  std::cout << absl::StrFormat("  non-layer %11d (%s)\n", s.layers.non_layer,
                               HumanBytes(s.layers.non_layer));
}

template <typename T>
Json OrNull(const std::optional<T>& value) {
  return value ? Json(*value) : Json(nullptr);
}

Json MakeJson(const std::string& path, const GgufFile& file, const Summary& s) {
  Json out;
  out["path"] = path;
  out["file_size"] = file.file_size();
  out["gguf_version"] = file.version();
  out["alignment"] = file.alignment();
  out["data_offset"] = file.data_offset();
  out["architecture"] = s.architecture;
  out["name"] = s.name;
  out["hyperparameters"] = Json::object();
  out["tokenizer"] = {{"model", OrNull(s.tokenizer_model)},
                      {"pre", OrNull(s.tokenizer_pre)},
                      {"vocab_size", OrNull(s.vocab_size)},
                      {"bos_token_id", OrNull(s.bos)},
                      {"eos_token_id", OrNull(s.eos)}};
  out["metadata"] = Json::object();
  for (const auto& [key, value] : file.metadata()) {
    if (IsHyperparameter(s, key)) {
      out["hyperparameters"][key] = ValueJson(value);
    } else if (!ShownInHeader(key)) {
      out["metadata"][key] = ValueJson(value);
    }
  }
  out["tensors"] = Json::array();
  for (const gguf::TensorInfo& t : file.tensors()) {
    out["tensors"].push_back({{"name", t.name},
                              {"type", DTypeName(t.type)},
                              {"shape", t.dims},
                              {"offset", t.offset},
                              {"bytes", t.n_bytes}});
  }
  out["tensor_bytes"] = s.layers.total;
  out["layers"] = Json::array();
  for (const auto& [layer, bytes] : s.layers.per_layer) {
    out["layers"].push_back({{"layer", layer}, {"bytes", bytes}});
  }
  out["non_layer_bytes"] = s.layers.non_layer;
  return out;
}

int RunInspect(const std::string& path, bool json) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  if (!file.ok()) {
    std::fprintf(stderr, "chord inspect: %s\n", std::string(file.status().message()).c_str());
    return 1;
  }
  const Summary summary = Summarize(**file);
  if (json) {
    // Replace invalid UTF-8 (token texts may hold raw bytes) instead of throwing.
    std::cout << MakeJson(path, **file, summary).dump(2, ' ', false, Json::error_handler_t::replace)
              << "\n";
  } else {
    PrintText(path, **file, summary);
  }
  std::cout.flush();
  if (!std::cout) {
    std::fprintf(stderr, "chord inspect: cannot write the output\n");
    return 1;
  }
  return 0;
}

}  // namespace

Subcommand AddInspectCommand(CLI::App& parent) {
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  Subcommand command;
  command.app = parent.add_subcommand(
      "inspect", "Print a GGUF model's metadata, hyperparameters, tokenizer and tensor table");
  command.app->add_option("MODEL", *path, "the .gguf file")->required();
  command.app->add_flag("--json", *json, "print one JSON object instead of text");
  command.run = [path, json] { return RunInspect(*path, *json); };
  return command;
}

}  // namespace chord::cli
