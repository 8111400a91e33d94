// The chat template lattice renders conversations with, for instruction fine-tuning
// (data.format: sft with a `messages` list) and `lattice generate --chat`.
//
// It is ChatML (the format of OpenAI's ChatML document, used by Qwen and others):
//
//   <|im_start|>system\nYou are terse.<|im_end|>\n
//   <|im_start|>user\nHi<|im_end|>\n
//   <|im_start|>assistant\nHello.<|im_end|>\n
//
// and, with add_generation_prompt, a trailing "<|im_start|>assistant\n" for the model to
// continue. Nothing is added that the messages do not hold (no default system prompt, no BOS).
// The markers are plain text here; a tokenizer.json that lists them as added tokens encodes each
// as one token, any other tokenizer encodes them as ordinary text. docs/generate.md documents it.
#ifndef LATTICE_RUNTIME_TEXT_CHAT_TEMPLATE_H_
#define LATTICE_RUNTIME_TEXT_CHAT_TEMPLATE_H_

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lattice::text {

// Turn markers of the template.
inline constexpr absl::string_view kChatTurnStart = "<|im_start|>";
// The end-of-turn marker: generation of an assistant turn stops when it appears.
inline constexpr absl::string_view kChatEndOfTurn = "<|im_end|>";

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatSegment {
  std::string text;
  // True for text a fine-tuning loss counts: an assistant message's content and the end-of-turn
  // marker after it (so the model learns to stop); false for everything else (markers, role
  // names, system and user turns, the newline after each turn, the generation prompt).
  bool assistant;
};

// Renders `messages` as consecutive segments whose concatenation is RenderChat's string.
// Adjacent segments of the same kind are merged, so the kinds alternate, and no segment is
// empty (an assistant message with empty content still yields "<|im_end|>" as assistant text).
// InvalidArgument, naming the message index and role, for: an empty list, a role other than
// system/user/assistant, a system message that is not messages[0], and content that contains a
// turn marker (it would forge a turn boundary).
absl::StatusOr<std::vector<ChatSegment>> RenderChatSegments(
    const std::vector<ChatMessage>& messages, bool add_generation_prompt);

// The rendered conversation: the concatenation of RenderChatSegments' texts.
absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages,
                                       bool add_generation_prompt);

// Strings that end generation of an assistant turn under this template ({kChatEndOfTurn}).
std::vector<std::string> ChatStopStrings();

// Reads a JSON `messages` value: an array of objects each with string fields "role" and
// "content" (other fields are ignored). InvalidArgument naming the index and what is wrong
// ("messages[1]: \"content\" is not a string"). Roles are checked by RenderChatSegments.
absl::StatusOr<std::vector<ChatMessage>> ChatMessagesFromJson(const nlohmann::json& messages);

}  // namespace lattice::text

#endif  // LATTICE_RUNTIME_TEXT_CHAT_TEMPLATE_H_
