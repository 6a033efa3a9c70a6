#include "coordinator/chat_template.h"

#include <array>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/status.h"

namespace chord::coordinator {
namespace {

constexpr std::array<std::pair<std::string_view, ChatFormat>, 7> kNames = {{
    {"llama2", ChatFormat::kLlama2},
    {"llama3", ChatFormat::kLlama3},
    {"chatml", ChatFormat::kChatMl},
    {"mistral", ChatFormat::kMistral},
    {"zephyr", ChatFormat::kZephyr},
    {"gemma", ChatFormat::kGemma},
    {"phi3", ChatFormat::kPhi3},
}};

// absl's string functions take absl::string_view, which is not
// std::string_view in this build; these work on std::string_view.
std::string Strip(std::string_view s) {
  const size_t begin = s.find_first_not_of(" \t\n\r\f\v");
  if (begin == std::string_view::npos) return "";
  const size_t end = s.find_last_not_of(" \t\n\r\f\v");
  return std::string(s.substr(begin, end - begin + 1));
}

bool Contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

bool KnownRole(std::string_view role) {
  return role == "system" || role == "user" || role == "assistant";
}

// Formats without a system turn (Llama 2, Mistral, Gemma) put the system
// message in front of the first user message, as their templates do.
// Returns the remaining turns, which must alternate user/assistant and end
// with the user.
absl::StatusOr<std::vector<ChatMessage>> FoldSystemIntoUser(
    const std::vector<ChatMessage>& messages, std::string_view system_prefix,
    std::string_view system_suffix) {
  std::vector<ChatMessage> turns;
  std::string system;
  size_t first = 0;
  if (messages[0].role == "system") {
    system = std::string(system_prefix) + Strip(messages[0].content) + std::string(system_suffix);
    first = 1;
  }
  for (size_t i = first; i < messages.size(); ++i) {
    const bool user_turn = (i - first) % 2 == 0;
    if (messages[i].role != (user_turn ? "user" : "assistant")) {
      return absl::InvalidArgumentError(
          absl::StrCat("this model's chat format needs messages alternating user/assistant (after "
                       "an optional first "
                       "system message); message ",
                       i, " has role '", messages[i].role, "'"));
    }
    turns.push_back(messages[i]);
  }
  if (turns.empty() || turns.back().role != "user") {
    return absl::InvalidArgumentError(
        "this model's chat format needs the last message to be from the user");
  }
  turns[0].content = absl::StrCat(system, turns[0].content);
  return turns;
}

// Llama 2: "[INST] <<SYS>>\n...\n<</SYS>>\n\nuser [/INST] answer </s><s>[INST] ...".
// Mistral: "[INST] user [/INST]answer</s>[INST] ...".
absl::StatusOr<std::string> RenderInst(bool llama2, const std::vector<ChatMessage>& messages) {
  absl::StatusOr<std::vector<ChatMessage>> turns =
      llama2 ? FoldSystemIntoUser(messages, "<<SYS>>\n", "\n<</SYS>>\n\n")
             : FoldSystemIntoUser(messages, "", "\n\n");
  if (!turns.ok()) return turns.status();
  std::string out;
  for (size_t i = 0; i < turns->size(); ++i) {
    const std::string content = Strip((*turns)[i].content);
    if ((*turns)[i].role == "user") {
      if (i > 0 && llama2) out += "<s>";
      absl::StrAppend(&out, "[INST] ", content, " [/INST]");
    } else {
      absl::StrAppend(&out, llama2 ? " " : "", content, llama2 ? " </s>" : "</s>");
    }
  }
  return out;
}

absl::StatusOr<std::string> RenderGemma(const std::vector<ChatMessage>& messages) {
  absl::StatusOr<std::vector<ChatMessage>> turns = FoldSystemIntoUser(messages, "", "\n\n");
  if (!turns.ok()) return turns.status();
  std::string out;
  for (const ChatMessage& turn : *turns) {
    absl::StrAppend(&out, "<start_of_turn>", turn.role == "assistant" ? "model" : "user", "\n",
                    Strip(turn.content), "<end_of_turn>\n");
  }
  return out + "<start_of_turn>model\n";
}

// The formats with a header per turn: open + role + mid + content + close.
std::string RenderHeaders(std::string_view open, std::string_view mid, std::string_view close,
                          const std::vector<ChatMessage>& messages, bool strip) {
  std::string out;
  for (const ChatMessage& message : messages) {
    out += std::string(open) + message.role + std::string(mid) +
           (strip ? Strip(message.content) : message.content) + std::string(close);
  }
  return out + std::string(open) + "assistant" + std::string(mid);
}

}  // namespace

absl::StatusOr<ChatFormat> ChatFormatFromName(std::string_view name) {
  for (const auto& [known, format] : kNames) {
    if (known == name) return format;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat template '", std::string(name),
                   "'; known: llama2, llama3, chatml, mistral, zephyr, gemma, phi3"));
}

std::string_view ChatFormatName(ChatFormat format) {
  for (const auto& [name, known] : kNames) {
    if (known == format) return name;
  }
  return "unknown";
}

absl::StatusOr<ChatFormat> RecognizeChatTemplate(std::string_view source) {
  // Most specific markers first: Phi-3 and Zephyr share <|assistant|>.
  if (Contains(source, "<|im_start|>")) return ChatFormat::kChatMl;
  if (Contains(source, "<|start_header_id|>")) return ChatFormat::kLlama3;
  if (Contains(source, "<start_of_turn>")) return ChatFormat::kGemma;
  if (Contains(source, "<|assistant|>")) {
    return Contains(source, "<|end|>") ? ChatFormat::kPhi3 : ChatFormat::kZephyr;
  }
  if (Contains(source, "[INST]")) {
    return Contains(source, "<<SYS>>") ? ChatFormat::kLlama2 : ChatFormat::kMistral;
  }
  return absl::NotFoundError(
      "the model's tokenizer.chat_template is not one of the chat formats chord knows");
}

absl::StatusOr<std::string> RenderChat(ChatFormat format,
                                       const std::vector<ChatMessage>& messages) {
  if (messages.empty()) return absl::InvalidArgumentError("messages is empty");
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!KnownRole(messages[i].role)) {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, " has role '", messages[i].role,
                                                     "'; expected system, user or assistant"));
    }
    if (messages[i].role == "system" && i > 0 && format != ChatFormat::kChatMl &&
        format != ChatFormat::kLlama3 && format != ChatFormat::kZephyr &&
        format != ChatFormat::kPhi3) {
      return absl::InvalidArgumentError("a system message must come first");
    }
  }
  switch (format) {
    case ChatFormat::kLlama2:
      return RenderInst(/*llama2=*/true, messages);
    case ChatFormat::kMistral:
      return RenderInst(/*llama2=*/false, messages);
    case ChatFormat::kGemma:
      return RenderGemma(messages);
    case ChatFormat::kLlama3:
      return RenderHeaders("<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", messages,
                           true);
    case ChatFormat::kChatMl:
      return RenderHeaders("<|im_start|>", "\n", "<|im_end|>\n", messages, false);
    case ChatFormat::kZephyr:
      return RenderHeaders("<|", "|>\n", "</s>\n", messages, false);
    case ChatFormat::kPhi3:
      return RenderHeaders("<|", "|>\n", "<|end|>\n", messages, false);
  }
  return absl::InvalidArgumentError("unknown chat format");
}

std::string_view EndOfTurnText(ChatFormat format) {
  switch (format) {
    case ChatFormat::kLlama3:
      return "<|eot_id|>";
    case ChatFormat::kChatMl:
      return "<|im_end|>";
    case ChatFormat::kGemma:
      return "<end_of_turn>";
    case ChatFormat::kPhi3:
      return "<|end|>";
    case ChatFormat::kLlama2:
    case ChatFormat::kMistral:
    case ChatFormat::kZephyr:
      return "</s>";
  }
  return "</s>";
}

absl::StatusOr<std::optional<ChatFormat>> ResolveChatFormat(const gguf::GgufFile& header,
                                                            std::string_view override_name) {
  if (!override_name.empty()) {
    ASSIGN_OR_RETURN(ChatFormat format, ChatFormatFromName(override_name));
    return std::optional<ChatFormat>(format);
  }
  absl::StatusOr<std::string> source = header.GetString("tokenizer.chat_template");
  if (!source.ok()) return std::optional<ChatFormat>();
  absl::StatusOr<ChatFormat> format = RecognizeChatTemplate(*source);
  if (!format.ok()) return std::optional<ChatFormat>();
  return std::optional<ChatFormat>(*format);
}

absl::Status ChatToPrompt(const std::optional<ChatFormat>& format,
                          const std::vector<ChatMessage>& messages, const Tokenizer& tokenizer,
                          chord::v1::GenerateRequest& generate) {
  if (!format.has_value()) {
    return absl::InvalidArgumentError(
        "this model has no chat template chord recognizes; send a prompt, or start the server "
        "with --chat-template NAME");
  }
  ASSIGN_OR_RETURN(std::string text, RenderChat(*format, messages));
  generate.mutable_prompt_token_ids()->clear_ids();
  for (const TokenId id : tokenizer.Encode(text, /*add_special=*/true, /*parse_special=*/true)) {
    generate.mutable_prompt_token_ids()->add_ids(static_cast<uint32_t>(id));
  }
  // The end of the assistant's turn ends generation even where the model's
  // metadata does not mark that token as end-of-generation.
  const std::vector<TokenId> end =
      tokenizer.Encode(EndOfTurnText(*format), /*add_special=*/false, /*parse_special=*/true);
  if (end.size() == 1) generate.add_stop_token_ids(static_cast<uint32_t>(end[0]));
  return absl::OkStatus();
}

}  // namespace chord::coordinator
