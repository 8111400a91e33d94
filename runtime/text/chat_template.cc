#include "runtime/text/chat_template.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "runtime/status.h"

namespace lattice::text {
namespace {

bool KnownRole(absl::string_view role) {
  return role == "system" || role == "user" || role == "assistant";
}

// Appends `text` to the last segment when it is of the same kind, so kinds alternate.
void Append(std::vector<ChatSegment>& segments, std::string text, bool assistant) {
  if (text.empty()) return;
  if (!segments.empty() && segments.back().assistant == assistant) {
    segments.back().text += text;
    return;
  }
  segments.push_back(ChatSegment{std::move(text), assistant});
}

}  // namespace

absl::StatusOr<std::vector<ChatSegment>> RenderChatSegments(
    const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  if (messages.empty()) {
    return absl::InvalidArgumentError("chat template: the messages list is empty");
  }
  std::vector<ChatSegment> segments;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (!KnownRole(m.role)) {
      return absl::InvalidArgumentError(
          absl::StrCat("chat template: messages[", i, "] has unknown role \"", m.role,
                       "\" (expected system, user or assistant)"));
    }
    if (m.role == "system" && i != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chat template: messages[", i,
          "] has role \"system\", but a system message may only be messages[0]"));
    }
    for (absl::string_view marker : {kChatTurnStart, kChatEndOfTurn}) {
      if (absl::StrContains(m.content, marker)) {
        return absl::InvalidArgumentError(
            absl::StrCat("chat template: messages[", i, "] (role \"", m.role,
                         "\") content contains the turn marker \"", marker, "\""));
      }
    }
    Append(segments, absl::StrCat(kChatTurnStart, m.role, "\n"), /*assistant=*/false);
    // The end-of-turn marker belongs to the turn: counted for assistant turns so that a
    // fine-tuned model learns to end its answer.
    Append(segments, absl::StrCat(m.content, kChatEndOfTurn), m.role == "assistant");
    Append(segments, "\n", /*assistant=*/false);
  }
  if (add_generation_prompt) {
    Append(segments, absl::StrCat(kChatTurnStart, "assistant\n"), /*assistant=*/false);
  }
  return segments;
}

absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages,
                                       bool add_generation_prompt) {
  LATTICE_ASSIGN_OR_RETURN(std::vector<ChatSegment> segments,
                           RenderChatSegments(messages, add_generation_prompt));
  std::string out;
  for (const ChatSegment& s : segments) out += s.text;
  return out;
}

std::vector<std::string> ChatStopStrings() { return {std::string(kChatEndOfTurn)}; }

absl::StatusOr<std::vector<ChatMessage>> ChatMessagesFromJson(const nlohmann::json& messages) {
  if (!messages.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"messages\" is a JSON ", messages.type_name(), ", not an array"));
  }
  std::vector<ChatMessage> out;
  out.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    const nlohmann::json& m = messages[i];
    if (!m.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "] is a JSON ", m.type_name(), ", not an object"));
    }
    ChatMessage message;
    for (auto [key, field] : {std::pair{"role", &message.role},
                              std::pair{"content", &message.content}}) {
      auto it = m.find(key);
      if (it == m.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("messages[", i, "] has no \"", key, "\" field"));
      }
      if (!it->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat("messages[", i, "]: \"", key,
                                                       "\" is a JSON ", it->type_name(),
                                                       ", not a string"));
      }
      *field = it->get<std::string>();
    }
    out.push_back(std::move(message));
  }
  return out;
}

}  // namespace lattice::text
