#include "runtime/io/yaml_limits.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/config.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

std::string Indented(int depth) {
  std::string s;
  for (int i = 0; i < depth; ++i) s += std::string(2 * i, ' ') + "k" + std::to_string(i) + ":\n";
  return s;
}

TEST(YamlLimitsTest, EveryPresetPasses) {
  for (const auto& e : std::filesystem::directory_iterator(std::string(LATTICE_SOURCE_DIR) +
                                                           "/configs")) {
    std::ifstream f(e.path());
    std::stringstream text;
    text << f.rdbuf();
    EXPECT_TRUE(CheckYamlLimits(text.str()).ok()) << e.path();
  }
}

TEST(YamlLimitsTest, CountsEveryKindOfNesting) {
  // Nested to exactly the limit, then one more, in each spelling.
  EXPECT_TRUE(CheckYamlLimits(Indented(4), kMaxYamlBytes, 4).ok());
  absl::Status s = CheckYamlLimits(Indented(5), kMaxYamlBytes, 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "YAML nested deeper than 4 levels at line 5, column 9");

  EXPECT_TRUE(CheckYamlLimits("a: [[[1]]]", kMaxYamlBytes, 4).ok());
  s = CheckYamlLimits("a: [[[[1]]]]", kMaxYamlBytes, 4);
  EXPECT_EQ(s.message(), "YAML nested deeper than 4 levels at line 1, column 7");
  EXPECT_FALSE(CheckYamlLimits("a: {b: {c: {d: 1}}}", kMaxYamlBytes, 3).ok());
  // A "- " line counts its indentation and each indicator (one more than the text needs when
  // the sequence is the collection at that indentation: the estimate errs on the high side).
  EXPECT_FALSE(CheckYamlLimits("- - - - x", kMaxYamlBytes, 3).ok());
  EXPECT_TRUE(CheckYamlLimits("- - x", kMaxYamlBytes, 3).ok());
  EXPECT_TRUE(CheckYamlLimits("a:\n- x\n- y", kMaxYamlBytes, 2).ok());
  // A flow collection spanning lines keeps its depth.
  EXPECT_FALSE(CheckYamlLimits("a: [\n  [\n   [\n    [1]]]]", kMaxYamlBytes, 4).ok());
}

TEST(YamlLimitsTest, TextThatOnlyLooksNestedIsFine) {
  const int limit = 2;
  // Brackets inside quotes, comments, plain scalars and block scalars are text.
  EXPECT_TRUE(CheckYamlLimits("a: \"[[[[[\"\nb: '{{{{'\n", kMaxYamlBytes, limit).ok());
  EXPECT_TRUE(CheckYamlLimits("a: 1  # [[[[[[\n# {{{{{{\n", kMaxYamlBytes, limit).ok());
  EXPECT_TRUE(CheckYamlLimits("path: data[[[[1]]]].bin\n", kMaxYamlBytes, limit).ok());
  EXPECT_TRUE(CheckYamlLimits("a: |\n  x:\n    y:\n      z: [[[[\nb: 1\n", kMaxYamlBytes, limit)
                  .ok());
  EXPECT_TRUE(CheckYamlLimits("a: \"it's [[[[\"\nb: 'say \"[[['\n", kMaxYamlBytes, limit).ok());
}

// Found by config_fuzz: yaml-cpp 0.7's LoadAll loops forever on a ',' where a block value
// starts. No YAML value starts with ',', so the check refuses it first.
TEST(YamlLimitsTest, CommaWhereAValueStartsIsRefused) {
  for (const char* bad : {",", ", a", "- 1\n,", "a:\n  ,", "a: ,b", "- ,", "? ,", "x: 1\n  ,\n",
                          "!x ,", "&a,", "*a ,", "!:Z1, 2]", "[1] ,", "'a' ,", "a: [1]\n,"}) {
    const absl::Status s = CheckYamlLimits(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.message(), HasSubstr("YAML value starting with ',' at line")) << bad;
  }
  EXPECT_EQ(CheckYamlLimits("- 1\n,").message(),
            "YAML value starting with ',' at line 2, column 1 (a ',' separates entries only "
            "inside [ ] or { })");
  // Commas inside plain scalars, quotes and flow collections are fine.
  for (const char* good : {"a: b, c", "a: [1, 2]", "a: [1\n  , 2]", "a: \",x\"", "a: ',x'",
                           "a: {b: 1, c: 2}", "# ,\na: 1", "a: !!str x, y", "a: &x [1, 2]",
                           "b: *x", "'k': v"}) {
    EXPECT_TRUE(CheckYamlLimits(good).ok()) << good;
  }
  absl::StatusOr<Config> c = ParseConfig("- 1\n,", {}, "comma.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("comma.yaml: YAML value starting with ','"));
}

// Found by config_fuzz: text on which yaml-cpp's parser makes no progress, so that LoadAll
// builds empty documents forever. The check runs the same loop and stops where it sticks.
TEST(YamlLimitsTest, TextWhereYamlCppMakesNoProgressIsRefused) {
  const std::string stuck = "\"omd\"\"\"\"\"\"\",";  // "omd""""""", (minimized)
  const absl::Status s = CheckYamlLimits(stuck);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("invalid YAML at line 1, column "));
  EXPECT_THAT(s.message(), HasSubstr("yaml-cpp makes no progress there"));
  absl::StatusOr<Config> c = ParseConfig(stuck, {}, "stuck.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("stuck.yaml: invalid YAML at line 1"));
  // Real multi-document text is left to the loader's own message, up to a point.
  EXPECT_TRUE(CheckYamlLimits("a: 1\n---\nb: 2\n").ok());
  std::string many;
  for (int i = 0; i < 20; ++i) many += "---\na: 1\n";
  EXPECT_EQ(CheckYamlLimits(many).message(),
            "YAML text holds more than 16 documents (a config is one)");
}

// Found by config_fuzz: "\0\0\0," looks like UTF-32 to yaml-cpp, which decodes a "," and
// loops on it. YAML text holds no control characters other than tab, LF and CR.
TEST(YamlLimitsTest, ControlCharactersAreRefused) {
  const absl::Status s = CheckYamlLimits(std::string("a: 1\nb: \0\0\0,", 13));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "YAML text holds the control byte 0x00 at line 2, column 4 (configs are UTF-8 text)");
  EXPECT_FALSE(CheckYamlLimits("a: \x1b[31m").ok());
  EXPECT_FALSE(CheckYamlLimits("a: \x7f").ok());
  EXPECT_TRUE(CheckYamlLimits("a:\t1\r\nb: \xc3\xa9\n").ok());
}

TEST(YamlLimitsTest, SizeLimit) {
  EXPECT_TRUE(CheckYamlLimits(std::string(100, '#'), 100).ok());
  const absl::Status s = CheckYamlLimits(std::string(101, '#'), 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "YAML text of 101 bytes is larger than the 100 bytes lattice accepts");
}

// The config loader runs the check before yaml-cpp, whose own guard said only "bad file".
TEST(YamlLimitsTest, ConfigLoadingReportsDepthAndSize) {
  const std::string deep = "model: " + std::string(100000, '[') + std::string(100000, ']') + "\n";
  absl::StatusOr<Config> c = ParseConfig(deep, {}, "deep.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(),
              HasSubstr("deep.yaml: YAML nested deeper than 32 levels at line 1, column 39"));
  c = ParseConfig(Indented(40), {}, "indented.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("indented.yaml: YAML nested deeper than 32 levels"));
  c = ParseConfig(std::string(kMaxYamlBytes + 1, '#'), {}, "huge.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("huge.yaml: YAML text of 4194305 bytes"));
  // --set values go through the same check.
  c = ParseConfig("", {"model.n_layer=" + std::string(1000, '[')}, "<defaults>");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("model.n_layer"));
  EXPECT_THAT(c.status().message(), HasSubstr("YAML nested deeper than 32 levels"));
}

}  // namespace
}  // namespace lattice
