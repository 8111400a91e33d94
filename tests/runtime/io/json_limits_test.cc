#include "runtime/io/json_limits.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

std::string Nested(int depth, char open = '[') {
  const char close = open == '[' ? ']' : '}';
  std::string s;
  for (int i = 0; i < depth; ++i) s += open == '[' ? "[" : "{\"k\":";
  if (open == '{') s += "1";
  s += std::string(depth, close);
  return s;
}

TEST(JsonLimitsTest, ParsesWhatNlohmannParses) {
  const std::string text =
      R"( {"a": [1, -2, 3.5, "x\u00e9", true, false, null], "b": {"c": {}}, "d": []} )";
  absl::StatusOr<Json> j = ParseJson(text);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(*j, Json::parse(text));
  for (const char* scalar : {"1", "\"s\"", "null", "[]", "{}", "18446744073709551615", "-5"}) {
    absl::StatusOr<Json> s = ParseJson(scalar);
    ASSERT_TRUE(s.ok()) << scalar << ": " << s.status();
    EXPECT_EQ(*s, Json::parse(scalar)) << scalar;
  }
}

TEST(JsonLimitsTest, DepthLimitCountsContainers) {
  JsonParseOptions o;
  o.max_depth = 5;
  EXPECT_TRUE(ParseJson(Nested(5), o).ok());
  EXPECT_TRUE(ParseJson(Nested(5, '{'), o).ok());
  absl::StatusOr<Json> deep = ParseJson(Nested(6), o);
  ASSERT_FALSE(deep.ok());
  EXPECT_EQ(deep.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(deep.status().message(), "JSON nested deeper than 5 levels at [0][0][0][0]");
  deep = ParseJson(Nested(6, '{'), o);
  ASSERT_FALSE(deep.ok());
  EXPECT_EQ(deep.status().message(), "JSON nested deeper than 5 levels at k.k.k.k");
  // The default fits every format lattice reads.
  EXPECT_TRUE(ParseJson(Nested(kDefaultMaxJsonDepth)).ok());
  EXPECT_FALSE(ParseJson(Nested(kDefaultMaxJsonDepth + 1)).ok());
}

// The stack overflow of GitHub issue 8: a million levels cost a bounded parse and a short
// message, for arrays, objects and unterminated input alike.
TEST(JsonLimitsTest, HugeNestingIsRejectedQuickly) {
  for (const std::string& text :
       {Nested(1000000), Nested(1000000, '{'), std::string(1000000, '['),
        "{\"a\":" + std::string(1000000, '[')}) {
    absl::StatusOr<Json> j = ParseJson(text);
    ASSERT_FALSE(j.ok());
    EXPECT_THAT(j.status().message(), HasSubstr("JSON nested deeper than 64 levels at "));
    EXPECT_LT(j.status().message().size(), 300u);
  }
}

TEST(JsonLimitsTest, DuplicateKeysNamePathAndKey) {
  absl::StatusOr<Json> j = ParseJson(R"({"a": 1, "a": 2})");
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().message(), "duplicate key \"a\" in (root)");
  j = ParseJson(R"({"model": {"vocab": {"x": 1, "y": 2, "x": 3}}})");
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().message(), "duplicate key \"x\" in model.vocab");
  j = ParseJson(R"({"l": [{"k": 1}, {"k": 1, "k": 1}]})");
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().message(), "duplicate key \"k\" in l[1]");
  j = ParseJson(R"({"a b": {"c": 1, "c": 1}})");
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().message(), "duplicate key \"c\" in [\"a b\"]");
  // The same key in different objects is fine, and the check can be turned off.
  EXPECT_TRUE(ParseJson(R"({"a": {"a": 1}, "b": {"a": 2}})").ok());
  JsonParseOptions o;
  o.reject_duplicate_keys = false;
  absl::StatusOr<Json> last = ParseJson(R"({"a": 1, "a": 2})", o);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ((*last)["a"], 2);
}

TEST(JsonLimitsTest, NulBytesAndSyntaxErrors) {
  // nlohmann alone accepts this: its lexer takes the NUL for the end of the input.
  const std::string nul = std::string("{\"a\": 1}\0junk", 13);
  EXPECT_TRUE(Json::parse(nul.begin(), nul.end()).is_object());
  absl::StatusOr<Json> j = ParseJson(nul);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().message(), "invalid JSON: NUL byte at offset 8");
  j = ParseJson("{\"a\": ");
  ASSERT_FALSE(j.ok());
  EXPECT_THAT(j.status().message(), HasSubstr("invalid JSON: parse error at line 1, column 7"));
  EXPECT_THAT(j.status().message(), ::testing::Not(HasSubstr("[json.exception")));
  // Found by json_fuzz: nlohmann's message quotes the token read so far, all of an
  // unterminated string; the message keeps its start.
  j = ParseJson("{\"a\": \"" + std::string(100000, 'x'));
  ASSERT_FALSE(j.ok());
  EXPECT_THAT(j.status().message(), HasSubstr("invalid JSON: parse error at line 1, column 100008"));
  EXPECT_LE(j.status().message().size(), 320u);
  for (const char* bad : {"", " ", "{} {}", "[1,]", "{\"a\" 1}", "\"\xff\"", "1e400", "nan"}) {
    EXPECT_FALSE(ParseJson(bad).ok()) << bad;
  }
}

TEST(JsonLimitsTest, SnippetIsBoundedAndCutsCleanly) {
  EXPECT_EQ(JsonSnippet(Json::parse(R"({"a":[1,2],"b":"x"})")), R"({"a":[1,2],"b":"x"})");
  EXPECT_EQ(JsonSnippet(Json(nullptr)), "null");
  // Deep values print only their start, without recursing through them.
  Json deep = Json::array();
  Json* at = &deep;
  for (int i = 0; i < 100000; ++i) {
    at->push_back(Json::array());
    at = &(*at)[0];
  }
  const std::string s = JsonSnippet(deep, 20);
  EXPECT_EQ(s, std::string(17, '[') + "...");
  // Long strings are cut before they are encoded; a cut never splits a UTF-8 character.
  const std::string e_acute = "\xC3\xA9";
  std::string many;
  for (int i = 0; i < 1000; ++i) many += e_acute;
  const std::string cut = JsonSnippet(Json(many), 10);
  EXPECT_LE(cut.size(), 10u);
  EXPECT_EQ(cut, "\"" + e_acute + e_acute + e_acute + "...");
  EXPECT_EQ(JsonSnippet(Json(std::string(5000, 'x')), 120).size(), 120u);
}

}  // namespace
}  // namespace lattice
