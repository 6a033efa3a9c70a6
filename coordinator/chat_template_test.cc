#include "coordinator/chat_template.h"

#include "gtest/gtest.h"

namespace chord::coordinator {
namespace {

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Name a color."}};

// Excerpts of the templates published with the models (as found in their GGUFs).
constexpr std::string_view kLlama2Jinja =
    "{% if messages[0]['role'] == 'system' %}{% set system_message = '<<SYS>>\\n' + "
    "messages[0]['content'] | "
    "trim + '\\n<</SYS>>\\n\\n' %}{% endif %}{{ bos_token + '[INST] ' + content | trim + ' "
    "[/INST]' }}";
constexpr std::string_view kLlama3Jinja =
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
    "message['content'] | "
    "trim + '<|eot_id|>' %}";
constexpr std::string_view kChatMlJinja =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ "
    "'<|im_end|>' + '\\n'}}{% endfor %}";
constexpr std::string_view kMistralJinja =
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
    "message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token}}{% endif %}{% "
    "endfor %}";
constexpr std::string_view kZephyrJinja =
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\\n' + "
    "message['content'] + "
    "eos_token }}{% endif %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% "
    "endfor %}";
constexpr std::string_view kPhi3Jinja =
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\\n' + message['content'] + "
    "'<|end|>\\n' "
    "}}{% endfor %}{{ '<|assistant|>\\n' }}";
constexpr std::string_view kGemmaJinja =
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim }}";

TEST(ChatTemplateTest, RecognizesTheWellKnownTemplates) {
  const std::vector<std::pair<std::string_view, ChatFormat>> cases = {
      {kLlama2Jinja, ChatFormat::kLlama2}, {kLlama3Jinja, ChatFormat::kLlama3},
      {kChatMlJinja, ChatFormat::kChatMl}, {kMistralJinja, ChatFormat::kMistral},
      {kZephyrJinja, ChatFormat::kZephyr}, {kPhi3Jinja, ChatFormat::kPhi3},
      {kGemmaJinja, ChatFormat::kGemma}};
  for (const auto& [source, format] : cases) {
    absl::StatusOr<ChatFormat> got = RecognizeChatTemplate(source);
    ASSERT_TRUE(got.ok()) << source;
    EXPECT_EQ(*got, format) << source;
  }
}

TEST(ChatTemplateTest, UnknownTemplatesAreNotGuessed) {
  EXPECT_EQ(RecognizeChatTemplate("").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(RecognizeChatTemplate("{{ messages[0].content }}{% import os %}").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ChatTemplateTest, NamesRoundTrip) {
  for (std::string_view name :
       {"llama2", "llama3", "chatml", "mistral", "zephyr", "gemma", "phi3"}) {
    absl::StatusOr<ChatFormat> format = ChatFormatFromName(name);
    ASSERT_TRUE(format.ok()) << name;
    EXPECT_EQ(ChatFormatName(*format), name);
  }
  EXPECT_EQ(ChatFormatFromName("jinja").status().code(), absl::StatusCode::kInvalidArgument);
}

std::string Render(ChatFormat format, const std::vector<ChatMessage>& messages = kConversation) {
  absl::StatusOr<std::string> text = RenderChat(format, messages);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

// Expected strings: what each model's own template produces for the
// conversation (add_generation_prompt, BOS left to the tokenizer).
TEST(ChatTemplateTest, RendersLikeTheModelsTemplates) {
  EXPECT_EQ(Render(ChatFormat::kLlama2),
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Name a color. "
            "[/INST]");
  EXPECT_EQ(Render(ChatFormat::kMistral),
            "[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Name a color. [/INST]");
  EXPECT_EQ(Render(ChatFormat::kLlama3),
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nName a color.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(Render(ChatFormat::kChatMl),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a color.<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(Render(ChatFormat::kZephyr),
            "<|system|>\nBe "
            "brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n<|user|>\nName a color.</s>\n"
            "<|assistant|>\n");
  EXPECT_EQ(
      Render(ChatFormat::kPhi3),
      "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\n"
      "Name a color.<|end|>\n<|assistant|>\n");
  EXPECT_EQ(Render(ChatFormat::kGemma),
            "<start_of_turn>user\nBe "
            "brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nName a color.<end_of_turn>\n<start_of_turn>model\n");
}

TEST(ChatTemplateTest, SingleUserMessage) {
  EXPECT_EQ(Render(ChatFormat::kLlama2, {{"user", "Hi"}}), "[INST] Hi [/INST]");
  EXPECT_EQ(Render(ChatFormat::kChatMl, {{"user", "Hi"}}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, RejectsWhatTheFormatCannotExpress) {
  EXPECT_EQ(RenderChat(ChatFormat::kChatMl, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderChat(ChatFormat::kChatMl, {{"tool", "x"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderChat(ChatFormat::kLlama2, {{"user", "a"}, {"user", "b"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderChat(ChatFormat::kMistral, {{"user", "a"}, {"assistant", "b"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderChat(ChatFormat::kGemma, {{"user", "a"}, {"system", "b"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Formats with a system turn accept it anywhere.
  EXPECT_TRUE(RenderChat(ChatFormat::kChatMl, {{"user", "a"}, {"system", "b"}}).ok());
}

TEST(ChatTemplateTest, EndOfTurnTexts) {
  EXPECT_EQ(EndOfTurnText(ChatFormat::kChatMl), "<|im_end|>");
  EXPECT_EQ(EndOfTurnText(ChatFormat::kLlama3), "<|eot_id|>");
  EXPECT_EQ(EndOfTurnText(ChatFormat::kLlama2), "</s>");
}

}  // namespace
}  // namespace chord::coordinator
