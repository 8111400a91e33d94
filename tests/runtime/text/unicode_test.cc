// The character classes follow the Unicode version of the engine `tokenizers` 0.20 uses for each
// (Unicode 14.0 for the split regexes, 16.0 for added tokens' word boundaries), not the system's.
// tests/runtime/text/tokenizer_parity_test.py checks every code point against `tokenizers`; this
// pins the characters whose answer depends on the version.
#include "runtime/text/unicode.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

namespace lattice {
namespace {

using unicode::CharClass;
using unicode::Classify;
using unicode::IsWhiteSpace;
using unicode::IsWordChar;
using unicode::SplitPattern;

std::string Utf8(const std::vector<uint32_t>& code_points) {
  std::string out;
  for (uint32_t cp : code_points) unicode::AppendUtf8(cp, &out);
  return out;
}

// Assigned in Unicode 15.0 (ICU 72 and Debian 12 know them): Oniguruma 6.9.8 (Unicode 14.0)
// does not, so the split regexes treat them as "other"; the regex crate (16.0) counts them as
// word characters.
TEST(UnicodeClassesTest, NewInUnicode15AreOtherToSplitButWordToAddedTokens) {
  for (int32_t cp : {0x11F04,    // KAWI LETTER A (Lo)
                     0x1E4D0,    // NAG MUNDARI LETTER O (Lo)
                     0x11F50,    // KAWI DIGIT ZERO (Nd)
                     0x1E4F0}) {  // NAG MUNDARI DIGIT ZERO (Nd)
    EXPECT_EQ(Classify(cp), CharClass::kOther) << std::hex << cp;
    EXPECT_TRUE(IsWordChar(cp)) << std::hex << cp;
  }
}

// Assigned in Unicode 16.0: unknown to Oniguruma 6.9.8 and to ICU 72, known to the regex crate.
TEST(UnicodeClassesTest, NewInUnicode16AreWordCharacters) {
  for (int32_t cp : {0x1C89,     // CYRILLIC CAPITAL LETTER TJE (Lu)
                     0x1E5D0,    // OL ONAL LETTER O (Lo)
                     0x16130,    // GURUNG KHEMA DIGIT ZERO (Nd)
                     0x10D40,    // GARAY DIGIT ZERO (Nd)
                     0x0897}) {  // ARABIC PEPET (Mn)
    EXPECT_EQ(Classify(cp), CharClass::kOther) << std::hex << cp;
    EXPECT_TRUE(IsWordChar(cp)) << std::hex << cp;
  }
}

TEST(UnicodeClassesTest, SplitRegexClassesInUnicode14) {
  EXPECT_EQ(Classify('A'), CharClass::kLetter);
  EXPECT_EQ(Classify('Z'), CharClass::kLetter);
  EXPECT_EQ(Classify('['), CharClass::kOther);
  EXPECT_EQ(Classify(0x00AA), CharClass::kLetter);   // ª (Lo)
  EXPECT_EQ(Classify(0x02B0), CharClass::kLetter);   // ʰ (Lm)
  EXPECT_EQ(Classify(0x01C5), CharClass::kLetter);   // ǅ (Lt)
  EXPECT_EQ(Classify(0xFFDC), CharClass::kLetter);   // the last letter of the flat BMP table
  EXPECT_EQ(Classify(0x10000), CharClass::kLetter);  // LINEAR B SYLLABLE B008 A: range search
  EXPECT_EQ(Classify(0x3134A), CharClass::kLetter);  // last CJK ideograph of extension G
  EXPECT_EQ(Classify(0x0660), CharClass::kNumber);   // ARABIC-INDIC DIGIT ZERO (Nd)
  EXPECT_EQ(Classify(0x0669), CharClass::kNumber);
  EXPECT_EQ(Classify(0x066A), CharClass::kOther);    // ARABIC PERCENT SIGN
  EXPECT_EQ(Classify(0x2160), CharClass::kNumber);   // Ⅰ (Nl)
  EXPECT_EQ(Classify(0x00B2), CharClass::kNumber);   // ² (No)
  EXPECT_EQ(Classify(0x1FBF9), CharClass::kNumber);  // SEGMENTED DIGIT NINE, last N
  EXPECT_EQ(Classify(0x0301), CharClass::kOther);    // combining acute (Mn)
  EXPECT_EQ(Classify(0x24B6), CharClass::kOther);    // Ⓐ (So)
  EXPECT_EQ(Classify(0x0378), CharClass::kOther);    // unassigned
  EXPECT_EQ(Classify(0x10FFFF), CharClass::kOther);
  EXPECT_EQ(Classify(unicode::kInvalidCodePoint), CharClass::kOther);
}

TEST(UnicodeClassesTest, WordCharactersAreRegexCrateWordClass) {
  EXPECT_TRUE(IsWordChar('a'));
  EXPECT_TRUE(IsWordChar('7'));
  EXPECT_TRUE(IsWordChar('_'));      // Pc
  EXPECT_TRUE(IsWordChar(0x203F));   // ‿ (Pc)
  EXPECT_TRUE(IsWordChar(0x200D));   // ZERO WIDTH JOINER (Join_Control)
  EXPECT_TRUE(IsWordChar(0x0301));   // combining acute (Mark)
  EXPECT_TRUE(IsWordChar(0x24B6));   // Ⓐ: So, but Alphabetic
  EXPECT_TRUE(IsWordChar(0x2160));   // Ⅰ: Nl is Alphabetic
  EXPECT_FALSE(IsWordChar(0x00B2));  // ²: No is neither Nd nor Alphabetic
  EXPECT_FALSE(IsWordChar(0x200B));  // ZERO WIDTH SPACE (Cf)
  EXPECT_FALSE(IsWordChar(' '));
  EXPECT_FALSE(IsWordChar('-'));
  EXPECT_FALSE(IsWordChar(0x1F44D));  // 👍
  EXPECT_FALSE(IsWordChar(0x0378));   // unassigned
  EXPECT_FALSE(IsWordChar(unicode::kInvalidCodePoint));
}

// White_Space (PropList.txt, unchanged from Unicode 14.0 through 16.0), over every code point.
TEST(UnicodeClassesTest, WhiteSpaceIsExactlyTheWhiteSpaceProperty) {
  const std::set<int32_t> expected = {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x20,   0x85,
                                      0xA0,   0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
                                      0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028,
                                      0x2029, 0x202F, 0x205F, 0x3000};
  int count = 0;
  for (int32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    const bool space = IsWhiteSpace(cp);
    count += space;
    ASSERT_EQ(space, expected.count(cp) == 1) << std::hex << cp;
    ASSERT_EQ(Classify(cp) == CharClass::kSpace, space) << std::hex << cp;
  }
  EXPECT_EQ(count, 25);
}

// The case: U+11F04 is "other" to Oniguruma, so the GPT-2 regex joins it with the
// apostrophe and the contraction 's is not split off (as `tokenizers` 0.20.3 splits it).
TEST(UnicodeClassesTest, SplitsOfNewCharactersMatchTokenizers) {
  const std::string kawi_a = Utf8({0x11F04});
  const std::string kawi_zero = Utf8({0x11F50});
  const std::string tje = Utf8({0x1C89});
  for (SplitPattern p : {SplitPattern::kGpt2, SplitPattern::kLlama3}) {
    EXPECT_EQ(unicode::Split(p, kawi_a + "'s"), (std::vector<std::string>{kawi_a + "'", "s"}));
    EXPECT_EQ(unicode::Split(p, "1" + kawi_zero + "2"),
              (std::vector<std::string>{"1", kawi_zero, "2"}));
  }
  EXPECT_EQ(unicode::Split(SplitPattern::kGpt2, "a" + kawi_a + "b"),
            (std::vector<std::string>{"a", kawi_a, "b"}));
  EXPECT_EQ(unicode::Split(SplitPattern::kLlama3, "a" + kawi_a + "b"),
            (std::vector<std::string>{"a", kawi_a + "b"}));
  EXPECT_EQ(unicode::Split(SplitPattern::kGpt2, tje + "x"), (std::vector<std::string>{tje, "x"}));
  EXPECT_EQ(unicode::Split(SplitPattern::kLlama3, tje + "x"),
            (std::vector<std::string>{tje + "x"}));
}

}  // namespace
}  // namespace lattice
