// Chat templates chord renders with its own code. A GGUF's
// `tokenizer.chat_template` is Jinja source written by whoever made the file;
// evaluating it would run untrusted code (CVE-2024-34359), so it is only
// inspected for the markers of the well-known formats, and the matching
// built-in renderer is used.
//
// Rendered text holds the format's control-token texts (e.g. "<|im_start|>")
// and no leading BOS: tokenize it with add_special (BOS as the model's
// metadata says) and parse_special. Pure functions; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "chord/v1/inference.pb.h"
#include "common/gguf/gguf_file.h"
#include "common/tokenizer/tokenizer.h"

namespace chord::coordinator {

enum class ChatFormat { kLlama2, kLlama3, kChatMl, kMistral, kZephyr, kGemma, kPhi3 };

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// The names --chat-template accepts: llama2, llama3, chatml, mistral, zephyr,
// gemma, phi3. INVALID_ARGUMENT for any other.
absl::StatusOr<ChatFormat> ChatFormatFromName(std::string_view name);
std::string_view ChatFormatName(ChatFormat format);

// Recognizes the format a Jinja template implements from its markers.
// NOT_FOUND when it is none that chord knows.
absl::StatusOr<ChatFormat> RecognizeChatTemplate(std::string_view jinja_source);

// The prompt for `messages`, ending with the opening of the assistant's turn.
// INVALID_ARGUMENT for an empty list or an unknown role, or a role order the
// format cannot express (Llama 2 and Mistral alternate user and assistant).
absl::StatusOr<std::string> RenderChat(ChatFormat format, const std::vector<ChatMessage>& messages);

// The control-token text that closes a turn (e.g. "<|im_end|>"): generation
// stops when the model emits it.
std::string_view EndOfTurnText(ChatFormat format);

// The format to serve chat with: `override_name` (--chat-template) when given,
// else the one the model's tokenizer.chat_template implements; nullopt when
// the model has none chord recognizes. INVALID_ARGUMENT for an unknown name.
absl::StatusOr<std::optional<ChatFormat>> ResolveChatFormat(const gguf::GgufFile& header,
                                                            std::string_view override_name);

// Renders `messages` into `generate`'s prompt_token_ids (control tokens
// parsed, BOS as the model wants) and adds the end-of-turn token to its stop
// tokens. INVALID_ARGUMENT when there is no format or the messages do not fit it.
absl::Status ChatToPrompt(const std::optional<ChatFormat>& format,
                          const std::vector<ChatMessage>& messages, const Tokenizer& tokenizer,
                          chord::v1::GenerateRequest& generate);

}  // namespace chord::coordinator
