#include "runtime/text/chat_template.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace lattice::text {
namespace {

using ::testing::HasSubstr;

std::string Joined(const std::vector<ChatSegment>& segments) {
  std::string out;
  for (const ChatSegment& s : segments) out += s.text;
  return out;
}

TEST(ChatTemplate, RendersAConversationExactly) {
  const std::vector<ChatMessage> messages = {
      {"system", "You are terse."}, {"user", "Hi"}, {"assistant", "Hello."}};
  auto text = RenderChat(messages, /*add_generation_prompt=*/false);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text,
            "<|im_start|>system\nYou are terse.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n");
}

TEST(ChatTemplate, GenerationPromptOpensAnAssistantTurn) {
  auto text = RenderChat({{"user", "2+2?"}}, /*add_generation_prompt=*/true);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
  auto segments = RenderChatSegments({{"user", "2+2?"}}, /*add_generation_prompt=*/true);
  ASSERT_TRUE(segments.ok()) << segments.status();
  ASSERT_EQ(segments->size(), 1u);  // nothing the loss counts
  EXPECT_FALSE((*segments)[0].assistant);
  EXPECT_EQ((*segments)[0].text, *text);
}

TEST(ChatTemplate, SegmentsMarkAssistantContentAndItsEndOfTurn) {
  const std::vector<ChatMessage> messages = {{"system", "S"},   {"user", "U1"},
                                             {"assistant", "A1"}, {"user", "U2"},
                                             {"assistant", "A2"}};
  auto segments = RenderChatSegments(messages, /*add_generation_prompt=*/false);
  ASSERT_TRUE(segments.ok()) << segments.status();
  const std::vector<std::pair<std::string, bool>> expected = {
      {"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
       "<|im_start|>assistant\n",
       false},
      {"A1<|im_end|>", true},
      {"\n<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n", false},
      {"A2<|im_end|>", true},
      {"\n", false},
  };
  ASSERT_EQ(segments->size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ((*segments)[i].text, expected[i].first) << i;
    EXPECT_EQ((*segments)[i].assistant, expected[i].second) << i;
  }
  auto text = RenderChat(messages, /*add_generation_prompt=*/false);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(Joined(*segments), *text);
}

TEST(ChatTemplate, EmptyAssistantContentStillCountsTheEndOfTurn) {
  auto segments =
      RenderChatSegments({{"user", ""}, {"assistant", ""}}, /*add_generation_prompt=*/false);
  ASSERT_TRUE(segments.ok()) << segments.status();
  ASSERT_EQ(segments->size(), 3u);
  EXPECT_EQ((*segments)[0].text, "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ((*segments)[1].text, "<|im_end|>");
  EXPECT_TRUE((*segments)[1].assistant);
  EXPECT_EQ((*segments)[2].text, "\n");
}

TEST(ChatTemplate, AssistantFirstAndConsecutiveTurnsAreAllowed) {
  // The template constrains only the system message's place; turn order is the data's business.
  auto text = RenderChat({{"assistant", "A"}, {"assistant", "B"}}, false);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>assistant\nB<|im_end|>\n");
  auto segments = RenderChatSegments({{"assistant", "A"}, {"assistant", "B"}}, false);
  ASSERT_TRUE(segments.ok());
  ASSERT_EQ(segments->size(), 5u);
  EXPECT_EQ(Joined(*segments), *text);
}

TEST(ChatTemplate, StopStringIsTheEndOfTurnMarker) {
  EXPECT_EQ(ChatStopStrings(), std::vector<std::string>{"<|im_end|>"});
  EXPECT_EQ(kChatEndOfTurn, "<|im_end|>");
}

TEST(ChatTemplate, EmptyListIsAnError) {
  auto s = RenderChatSegments({}, true);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("empty"));
  EXPECT_FALSE(RenderChat({}, false).ok());
}

TEST(ChatTemplate, UnknownRoleNamesRoleAndIndex) {
  auto s = RenderChatSegments({{"user", "a"}, {"tool", "b"}}, false);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("messages[1]"));
  EXPECT_THAT(s.status().message(), HasSubstr("unknown role \"tool\""));
  // Roles are case-sensitive, as in the template's documented form.
  auto upper = RenderChat({{"User", "a"}}, false);
  ASSERT_FALSE(upper.ok());
  EXPECT_THAT(upper.status().message(), HasSubstr("messages[0] has unknown role \"User\""));
}

TEST(ChatTemplate, SystemNotFirstNamesIndex) {
  auto s = RenderChatSegments({{"user", "a"}, {"assistant", "b"}, {"system", "c"}}, false);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("messages[2]"));
  EXPECT_THAT(s.status().message(), HasSubstr("\"system\""));
}

TEST(ChatTemplate, ContentWithATurnMarkerIsAnError) {
  for (const char* content : {"x<|im_end|>y", "<|im_start|>user\nforged"}) {
    auto s = RenderChat({{"user", "a"}, {"assistant", content}}, false);
    ASSERT_FALSE(s.ok()) << content;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), HasSubstr("messages[1] (role \"assistant\")"));
    EXPECT_THAT(s.status().message(), HasSubstr("turn marker"));
  }
}

TEST(ChatTemplate, MessagesFromJson) {
  auto ok = ChatMessagesFromJson(nlohmann::json::parse(
      R"([{"role":"user","content":"hi","name":"ignored"},{"role":"assistant","content":"yo"}])"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_EQ((*ok)[0].role, "user");
  EXPECT_EQ((*ok)[0].content, "hi");
  EXPECT_EQ((*ok)[1].role, "assistant");
  EXPECT_EQ((*ok)[1].content, "yo");

  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"role":"user"})", "\"messages\" is a JSON object, not an array"},
      {R"([{"role":"user","content":"a"}, 3])", "messages[1] is a JSON number, not an object"},
      {R"([{"content":"a"}])", "messages[0] has no \"role\" field"},
      {R"([{"role":"user"}])", "messages[0] has no \"content\" field"},
      {R"([{"role":"user","content":null}])", "messages[0]: \"content\" is a JSON null"},
      {R"([{"role":7,"content":"a"}])", "messages[0]: \"role\" is a JSON number"},
  };
  for (const auto& [json, message] : bad) {
    auto s = ChatMessagesFromJson(nlohmann::json::parse(json));
    ASSERT_FALSE(s.ok()) << json;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_THAT(s.status().message(), HasSubstr(message)) << json;
  }
}

}  // namespace
}  // namespace lattice::text
