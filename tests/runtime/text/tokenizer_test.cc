#include "runtime/text/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "runtime/text/unicode.h"

namespace lattice {
namespace {

using unicode::SplitPattern;

std::string ReadData(const std::string& name) {
  const std::string path = std::string(LATTICE_SOURCE_DIR) + "/tests/data/tokenizer/" + name;
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<int32_t> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view f : absl::StrSplit(text, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    ids.push_back(std::stoi(std::string(f)));
  }
  return ids;
}

// A tokenizer.json over the 256 byte symbols (ids 0..255 in byte order) plus `extra` tokens
// (byte-level strings) with ids 256.., and `merges` written in the given form.
std::string MakeJson(const std::vector<std::string>& extra,
                     const std::vector<std::pair<std::string, std::string>>& merges, bool pair_form,
                     const std::string& added_tokens = "[]",
                     const std::string& pre_tokenizer =
                         R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})",
                     bool ignore_merges = false) {
  auto quote = [](const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') out.push_back('\\');
      out.push_back(c);
    }
    return out + "\"";
  };
  std::vector<std::string> vocab;
  for (int b = 0; b < 256; ++b) {
    vocab.push_back(
        absl::StrCat(quote(unicode::BytesToByteLevel(std::string(1, char(b)))), ": ", b));
  }
  for (size_t i = 0; i < extra.size(); ++i)
    vocab.push_back(absl::StrCat(quote(extra[i]), ": ", 256 + i));
  std::vector<std::string> m;
  for (const auto& [a, b] : merges) {
    m.push_back(pair_form ? absl::StrCat("[", quote(a), ", ", quote(b), "]")
                          : quote(absl::StrCat(a, " ", b)));
  }
  return absl::StrCat(R"({"version": "1.0", "truncation": null, "padding": null, "added_tokens": )",
                      added_tokens, R"(, "normalizer": null, "pre_tokenizer": )", pre_tokenizer,
                      R"(, "post_processor": null, "decoder": {"type": "ByteLevel"},)",
                      R"( "model": {"type": "BPE", "dropout": null, "unk_token": null,)",
                      R"( "ignore_merges": )", ignore_merges ? "true" : "false", R"(, "vocab": {)",
                      absl::StrJoin(vocab, ", "), R"(}, "merges": [)", absl::StrJoin(m, ", "),
                      "]}}");
}

std::unique_ptr<Tokenizer> MustLoad(const std::string& json) {
  auto tok = Tokenizer::FromJson(json, "test.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

std::vector<int32_t> Ids(std::initializer_list<int32_t> ids) { return ids; }

// ---- Byte mapping and UTF-8 --------------------------------------------------------------------

TEST(ByteLevelTest, MappingMatchesGpt2) {
  const auto& to = unicode::ByteToCodePoint();
  EXPECT_EQ(to['!'], uint32_t{'!'});
  EXPECT_EQ(to['~'], uint32_t{'~'});
  EXPECT_EQ(to[0xA1], 0xA1u);
  EXPECT_EQ(to[0xFF], 0xFFu);
  EXPECT_EQ(to[0x00], 256u);
  EXPECT_EQ(to[' '], 0x120u);   // 'Ġ'
  EXPECT_EQ(to['\n'], 0x10Au);  // 'Ċ'
  EXPECT_EQ(to[0x7F], 0x121u);
  EXPECT_EQ(to[0xAD], 0x143u);  // the last unprintable byte gets 256 + 67
  for (int b = 0; b < 256; ++b) EXPECT_EQ(unicode::CodePointToByte(to[b]), b);
  EXPECT_EQ(unicode::BytesToByteLevel("hello world\n"), "hello\xC4\xA0world\xC4\x8A");
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(unicode::ByteLevelToBytes(unicode::BytesToByteLevel(all)), all);
  EXPECT_FALSE(unicode::ByteLevelToBytes("a\xE2\x82\xAC").has_value());  // '€' is not mapped
  EXPECT_FALSE(unicode::ByteLevelToBytes(" ").has_value());              // space maps to 'Ġ'
}

TEST(Utf8Test, LossyReplacesMaximalSubparts) {
  EXPECT_EQ(unicode::Utf8Lossy("a\xE2\x82\xAC"), "a\xE2\x82\xAC");
  EXPECT_EQ(unicode::Utf8Lossy("\xE2\x82"), "\xEF\xBF\xBD");
  EXPECT_EQ(unicode::Utf8Lossy("\xF0\x9F\x98"
                               "A"),
            "\xEF\xBF\xBD"
            "A");
  EXPECT_EQ(unicode::Utf8Lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::Utf8Lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::DecodeUtf8("\xF0\x9F\x91\x8D", 0).code_point, 0x1F44D);
  EXPECT_EQ(unicode::DecodeUtf8("\xF0\x9F\x91", 0).code_point, unicode::kInvalidCodePoint);
}

TEST(Utf8Test, ClassesFollowUnicodeProperties) {
  EXPECT_EQ(unicode::Classify(0x00E9), unicode::CharClass::kLetter);  // é
  EXPECT_EQ(unicode::Classify(0x4E2D), unicode::CharClass::kLetter);  // 中
  EXPECT_EQ(unicode::Classify(0x0663), unicode::CharClass::kNumber);  // Arabic-Indic 3
  EXPECT_EQ(unicode::Classify(0x216B), unicode::CharClass::kNumber);  // Ⅻ (Nl)
  EXPECT_EQ(unicode::Classify(0x00BD), unicode::CharClass::kNumber);  // ½ (No)
  EXPECT_EQ(unicode::Classify(0x00A0), unicode::CharClass::kSpace);
  EXPECT_EQ(unicode::Classify(0x3000), unicode::CharClass::kSpace);
  EXPECT_EQ(unicode::Classify(0x0085), unicode::CharClass::kSpace);
  EXPECT_EQ(unicode::Classify(0x200B), unicode::CharClass::kOther);  // zero width space
  EXPECT_EQ(unicode::Classify(0x001C), unicode::CharClass::kOther);
  EXPECT_EQ(unicode::Classify(0x0301), unicode::CharClass::kOther);   // combining acute
  EXPECT_EQ(unicode::Classify(0x1F44D), unicode::CharClass::kOther);  // emoji
}

// ---- Split patterns (expected pieces come from `tokenizers` 0.20.3) ----------------------------

struct SplitCase {
  std::string text;
  std::vector<std::string> gpt2;
  std::vector<std::string> llama3;
};

TEST(SplitTest, TrickyStringsMatchTokenizers) {
  const std::vector<SplitCase> cases = {
      {"Hello world", {"Hello", " world"}, {"Hello", " world"}},
      {"it's I'M they're",
       {"it", "'s", " I", "'", "M", " they", "'re"},
       {"it", "'s", " I", "'M", " they", "'re"}},
      {"a  b   c", {"a", " ", " b", "  ", " c"}, {"a", " ", " b", "  ", " c"}},
      {"x\t\ty", {"x", "\t", "\t", "y"}, {"x", "\t", "\ty"}},
      {"end  ", {"end", "  "}, {"end", "  "}},
      {"a\n\nb", {"a", "\n", "\n", "b"}, {"a", "\n\n", "b"}},
      {" \n x", {" \n", " x"}, {" \n", " x"}},
      {"12345 678", {"12345", " 678"}, {"123", "45", " ", "678"}},
      {"  leading", {" ", " leading"}, {" ", " leading"}},
      {"caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD!",
       {"caf\xC3\xA9", " \xE4\xB8\xAD\xE6\x96\x87", " \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD!"},
       {"caf\xC3\xA9", " \xE4\xB8\xAD\xE6\x96\x87", " \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD!"}},
      {"don't 'stop'", {"don", "'t", " '", "stop", "'"}, {"don", "'t", " '", "stop", "'"}},
      {"e\xCC\x81t\xC3\xA9", {"e", "\xCC\x81", "t\xC3\xA9"}, {"e", "\xCC\x81t\xC3\xA9"}},
      {"a\xC2\xA0\xC2\xA0"
       "b",
       {"a", "\xC2\xA0", "\xC2\xA0", "b"},
       {"a", "\xC2\xA0",
        "\xC2\xA0"
        "b"}},
      {"?!... ok", {"?!...", " ok"}, {"?!...", " ok"}},
      {"x'\xC5\xBFy", {"x", "'", "\xC5\xBFy"}, {"x", "'\xC5\xBF", "y"}},  // long s folds to s
      {"line\r\n\r\nnext", {"line", "\r\n\r", "\n", "next"}, {"line", "\r\n\r\n", "next"}},
      {"(hello) [world]",
       {"(", "hello", ")", " [", "world", "]"},
       {"(hello", ")", " [", "world", "]"}},
      {"\xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6",
       {"\xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6"},
       {"\xD9\xA3\xD9\xA4\xD9\xA5", "\xD9\xA6"}},
  };
  for (const SplitCase& c : cases) {
    EXPECT_EQ(unicode::Split(SplitPattern::kGpt2, c.text), c.gpt2) << "gpt2: " << c.text;
    EXPECT_EQ(unicode::Split(SplitPattern::kLlama3, c.text), c.llama3) << "llama3: " << c.text;
  }
}

TEST(SplitTest, PiecesTileArbitraryBytes) {
  std::mt19937 rng(7);
  const char alphabet[] = "ab 1\t\n\r'sS.\xC3\xA9\xE4\xB8\xAD\x80\xFF";
  for (int iter = 0; iter < 2000; ++iter) {
    std::string text;
    const int n = rng() % 24;
    for (int i = 0; i < n; ++i) text.push_back(alphabet[rng() % (sizeof(alphabet) - 1)]);
    for (SplitPattern p : {SplitPattern::kGpt2, SplitPattern::kLlama3}) {
      const std::vector<std::string> pieces = unicode::Split(p, text);
      EXPECT_EQ(absl::StrJoin(pieces, ""), text);
      for (const std::string& piece : pieces) EXPECT_FALSE(piece.empty());
    }
  }
}

TEST(SplitTest, RecognizesOnlyTheTwoPatterns) {
  EXPECT_EQ(unicode::RecognizeSplitRegex(unicode::kGpt2SplitRegex), SplitPattern::kGpt2);
  EXPECT_EQ(unicode::RecognizeSplitRegex(unicode::kLlama3SplitRegex), SplitPattern::kLlama3);
  EXPECT_FALSE(unicode::RecognizeSplitRegex(R"(\s+)").has_value());
}

// ---- Golden ids from `tokenizers` --------------------------------------------------------------

TEST(TokenizerTest, GoldenIdsOfTinyGpt2AndLlama3) {
  const std::string text = ReadData("golden_text.txt");
  for (const char* name : {"gpt2", "llama3"}) {
    auto tok = Tokenizer::FromFile(std::string(LATTICE_SOURCE_DIR) + "/tests/data/tokenizer/tiny_" +
                                   name + ".json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    const std::vector<int32_t> expected =
        ParseIds(ReadData(absl::StrCat("golden_ids_", name, ".txt")));
    ASSERT_GT(expected.size(), 500u);
    EXPECT_EQ((*tok)->Encode(text), expected) << name;
    auto decoded = (*tok)->Decode(expected);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, text) << name;
  }
}

TEST(TokenizerTest, Llama3AddedTokenIdsAndEot) {
  auto tok = Tokenizer::FromFile(std::string(LATTICE_SOURCE_DIR) +
                                 "/tests/data/tokenizer/tiny_llama3.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 602);
  EXPECT_EQ((*tok)->TokenToId("<|begin_of_text|>"), 600);
  EXPECT_EQ((*tok)->eot_id(), 601);
  EXPECT_EQ((*tok)->Encode("<|begin_of_text|>Hi<|end_of_text|>").front(), 600);
  EXPECT_EQ((*tok)->Encode("<|begin_of_text|>Hi<|end_of_text|>").back(), 601);
}

// ---- Model semantics on hand-made files --------------------------------------------------------

TEST(TokenizerTest, StringAndPairMergeFormsAgree) {
  const std::vector<std::string> extra = {"ab", "abc",
                                          "\xC4\xA0"
                                          "a"};  // 256, 257, 258
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"a", "b"}, {"ab", "c"}, {"\xC4\xA0", "a"}};
  auto s = MustLoad(MakeJson(extra, merges, false));
  auto p = MustLoad(MakeJson(extra, merges, true));
  ASSERT_TRUE(s && p);
  // " ab": "a b" outranks "Ġ a", and nothing merges "Ġ ab".
  EXPECT_EQ(s->Encode("abc ab a"), Ids({257, ' ', 256, 258}));
  EXPECT_EQ(p->Encode("abc ab a"), s->Encode("abc ab a"));
  EXPECT_EQ(s->vocab_size(), 259);
  EXPECT_EQ(s->TokenToId("abc"), 257);
  EXPECT_FALSE(s->TokenToId("abcd").has_value());
  EXPECT_FALSE(s->eot_id().has_value());
}

TEST(TokenizerTest, MergesApplyByRankThenLeftmost) {
  // "b c" has the better rank, so "abc" becomes a + bc although "a b" exists.
  auto tok = MustLoad(MakeJson({"bc", "ab", "aa"}, {{"b", "c"}, {"a", "b"}, {"a", "a"}}, true));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->Encode("abc"), Ids({'a', 256}));
  EXPECT_EQ(tok->Encode("abab"), Ids({257, 257}));
  EXPECT_EQ(tok->Encode("aaa"), Ids({258, 'a'}));  // overlapping pairs: leftmost first
  EXPECT_EQ(tok->Encode("aaaa"), Ids({258, 258}));
}

TEST(TokenizerTest, IgnoreMergesTakesWholeWordsFromTheVocab) {
  // "xyz" is in the vocab but no merge builds it.
  const std::string with = MakeJson({"xyz", "xy"}, {{"x", "y"}}, true, "[]",
                                    R"({"type": "ByteLevel", "add_prefix_space": false})", true);
  const std::string without = MakeJson({"xyz", "xy"}, {{"x", "y"}}, true);
  EXPECT_EQ(MustLoad(with)->Encode("xyz"), Ids({256}));
  EXPECT_EQ(MustLoad(without)->Encode("xyz"), Ids({257, 'z'}));
}

TEST(TokenizerTest, AddPrefixSpace) {
  auto tok = MustLoad(MakeJson({"\xC4\xA0"
                                "a"},
                               {{"\xC4\xA0", "a"}}, true, "[]",
                               R"({"type": "ByteLevel", "add_prefix_space": true})"));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->Encode("a"), Ids({256}));
  EXPECT_EQ(tok->Encode(" a"), Ids({256}));
  EXPECT_EQ(tok->Encode(""), Ids({}));
}

TEST(TokenizerTest, AddedTokensMatchLeftmostLongestBeforeSplitting) {
  const std::string added = R"([
    {"id": 256, "content": "<|endoftext|>", "special": true, "normalized": false},
    {"id": 257, "content": "<|end|>", "special": true, "normalized": false},
    {"id": 258, "content": "<|end|>x", "special": false, "normalized": false},
    {"id": 9999, "content": "word", "special": false, "normalized": true, "single_word": true}
  ])";
  auto tok = MustLoad(MakeJson({}, {}, true, added));
  ASSERT_TRUE(tok);
  // Ids follow `tokenizers`' assignment (model vocab size, then max + 1), not the file's "id".
  EXPECT_EQ(tok->TokenToId("<|endoftext|>"), 256);
  EXPECT_EQ(tok->TokenToId("word"), 259);
  EXPECT_EQ(tok->vocab_size(), 260);
  EXPECT_EQ(tok->eot_id(), 256);
  EXPECT_EQ(tok->Encode("a<|endoftext|>b"), Ids({'a', 256, 'b'}));
  EXPECT_EQ(tok->Encode("<|end|>x<|end|>y"), Ids({258, 257, 'y'}));
  EXPECT_EQ(tok->Encode("<|endoftext|"),
            Ids({'<', '|', 'e', 'n', 'd', 'o', 'f', 't', 'e', 'x', 't', '|'}));
  EXPECT_EQ(tok->Encode("a word"), Ids({'a', ' ', 259}));  // byte ' ' (mapped to 'Ġ') is id 32
  EXPECT_EQ(tok->Encode("swords"), Ids({'s', 'w', 'o', 'r', 'd', 's'}));  // not a single word
  auto decoded = tok->Decode(tok->Encode("x<|endoftext|>y word"));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, "x<|endoftext|>y word");
}

TEST(TokenizerTest, DecodeReplacesBrokenUtf8AndRejectsUnknownIds) {
  auto tok = MustLoad(MakeJson({}, {}, true));
  ASSERT_TRUE(tok);
  const std::vector<int32_t> euro = tok->Encode("\xE2\x82\xAC");
  ASSERT_EQ(euro.size(), 3u);
  auto half = tok->Decode({euro[0], euro[1]});
  ASSERT_TRUE(half.ok());
  EXPECT_EQ(*half, "\xEF\xBF\xBD");
  auto bad = tok->Decode({'a', 256});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("256"), std::string::npos);
  EXPECT_FALSE(tok->Decode({-1}).ok());
}

TEST(TokenizerTest, ArbitraryBytesRoundTrip) {
  auto tok = MustLoad(MakeJson({"ba"}, {{"b", "a"}}, true));
  ASSERT_TRUE(tok);
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::vector<int32_t> ids = tok->Encode(all);
  EXPECT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
}

TEST(TokenizerTest, EncodeBatchEqualsEncode) {
  auto tok =
      Tokenizer::FromFile(std::string(LATTICE_SOURCE_DIR) + "/tests/data/tokenizer/tiny_gpt2.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text = ReadData("golden_text.txt");
  std::vector<std::string> docs;
  for (int i = 0; i < 300; ++i) docs.push_back(text.substr((i * 37) % text.size(), 20 + i % 90));
  std::vector<absl::string_view> views(docs.begin(), docs.end());
  for (int threads : {1, 2, 4}) {
    const auto batch = (*tok)->EncodeBatch(views, threads);
    ASSERT_EQ(batch.size(), docs.size());
    for (size_t i = 0; i < docs.size(); ++i) EXPECT_EQ(batch[i], (*tok)->Encode(docs[i]));
  }
}

// ---- The byte tokenizer ------------------------------------------------------------------------

TEST(ByteTokenizerTest, IdsAreBytesAndEotIs256) {
  auto tok = Tokenizer::Bytes();
  EXPECT_EQ(tok->vocab_size(), 257);
  EXPECT_EQ(tok->eot_id(), 256);
  EXPECT_EQ(tok->Encode("hi\xFF"), Ids({'h', 'i', 255}));
  EXPECT_EQ(tok->Encode("a<|endoftext|>"), Ids({'a', 256}));
  EXPECT_EQ(tok->TokenToId("a"), 'a');
  auto text = tok->Decode({'o', 'k', 256});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "ok<|endoftext|>");
  EXPECT_FALSE(tok->Decode({257}).ok());
  auto loaded = Tokenizer::Load("byte");
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ((*loaded)->vocab_size(), 257);
}

// ---- Errors ------------------------------------------------------------------------------------

void ExpectError(const std::string& json, absl::StatusCode code, const std::string& needle) {
  auto tok = Tokenizer::FromJson(json, "bad.json");
  ASSERT_FALSE(tok.ok()) << needle;
  EXPECT_EQ(tok.status().code(), code) << tok.status();
  EXPECT_NE(tok.status().message().find("bad.json"), std::string::npos) << tok.status();
  EXPECT_NE(tok.status().message().find(needle), std::string::npos) << tok.status();
}

TEST(TokenizerErrorTest, ClearErrors) {
  const std::string good = MakeJson({"ab"}, {{"a", "b"}}, true);
  ExpectError(good.substr(0, good.size() / 2), absl::StatusCode::kDataLoss, "not valid");
  ExpectError("[1, 2]", absl::StatusCode::kInvalidArgument, "expected a JSON object");
  std::string wordpiece = good;
  wordpiece.replace(wordpiece.find("\"BPE\""), 5, "\"WordPiece\"");
  ExpectError(wordpiece, absl::StatusCode::kInvalidArgument, "model.type");
  ExpectError(MakeJson({"ab"}, {{"a", "q\xC3\xA9"}}, true), absl::StatusCode::kInvalidArgument,
              "model.merges[0]");
  ExpectError(MakeJson({"ab"}, {{"a", "zz"}}, false), absl::StatusCode::kInvalidArgument,
              "\"zz\" is not in model.vocab");
  ExpectError(MakeJson({"xy"}, {{"x", "z"}}, true), absl::StatusCode::kInvalidArgument,
              "\"xz\" is not in model.vocab");
  std::string normalizer = good;
  normalizer.replace(normalizer.find("\"normalizer\": null"), 18,
                     R"("normalizer": {"type": "NFC"})");
  ExpectError(normalizer, absl::StatusCode::kInvalidArgument, "normalizer");
  ExpectError(MakeJson({}, {}, true, "[]",
                       R"({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": )"
                       R"({"Regex": "\\w+"}, "behavior": "Isolated", "invert": false}, )"
                       R"({"type": "ByteLevel", "use_regex": false}]})"),
              absl::StatusCode::kInvalidArgument, "unknown split regex \"\\\\w+\"");
  ExpectError(MakeJson({}, {}, true, "[]", R"({"type": "Whitespace"})"),
              absl::StatusCode::kInvalidArgument, "pre_tokenizer.type");
  std::string dup = good;
  dup.replace(dup.find("\"ab\": 256"), 9, "\"ab\": 255");
  ExpectError(dup, absl::StatusCode::kInvalidArgument, "id 255 is used by both");
  std::string unknown_key = good;
  unknown_key.replace(unknown_key.find("\"dropout\""), 9, "\"dropin\"");
  ExpectError(unknown_key, absl::StatusCode::kInvalidArgument, "model.dropin");
  auto missing = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

// A key given twice in any object is an error naming the key and the object: nlohmann would
// keep the last value, `tokenizers` another, and the two would encode differently.
TEST(TokenizerErrorTest, DuplicateKeysAreErrors) {
  const std::string good = MakeJson({"ab"}, {{"a", "b"}}, true);
  std::string vocab = good;
  vocab.replace(vocab.find("\"ab\": 256"), 9, "\"ab\": 256, \"ab\": 257");
  ExpectError(vocab, absl::StatusCode::kDataLoss, "duplicate key \"ab\" in model.vocab");
  std::string top = good;
  top.replace(top.find("\"padding\": null"), 15, "\"padding\": null, \"padding\": null");
  ExpectError(top, absl::StatusCode::kDataLoss, "duplicate key \"padding\" in (root)");
  std::string model = good;
  model.replace(model.find("\"dropout\": null"), 15, "\"dropout\": null, \"dropout\": 0.5");
  ExpectError(model, absl::StatusCode::kDataLoss, "duplicate key \"dropout\" in model");
}

// The crash inputs of GitHub issue 8: tokenizer.json nested 100,000 deep under normalizer,
// model.vocab and model.merges overflowed the stack (a recursive dump for the error message).
// The parse now stops at the depth limit, and the message is short.
TEST(TokenizerErrorTest, DeepNestingStopsAtTheDepthLimit) {
  constexpr int kDepth = 100000;
  const std::string deep = std::string(kDepth, '[') + std::string(kDepth, ']');
  const std::string good = MakeJson({"ab"}, {{"a", "b"}}, true);
  struct Case {
    std::string json;
    std::string where;
  };
  std::string normalizer = good;
  normalizer.replace(normalizer.find("\"normalizer\": null"), 18, "\"normalizer\": " + deep);
  std::string vocab = good;
  vocab.replace(vocab.find("\"ab\": 256"), 9, "\"ab\": " + deep);
  std::string merges = good;
  merges.replace(merges.find("\"merges\": ["), 11, "\"merges\": [" + deep + ", ");
  const Case cases[] = {{normalizer, "at normalizer[0][0]"},
                        {vocab, "at model.vocab.ab[0]"},
                        {merges, "at model.merges[0][0]"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.where);
    auto tok = Tokenizer::FromJson(c.json, "deep.json");
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(tok.status().message(),
                testing::HasSubstr("deep.json: not valid tokenizer JSON: JSON nested deeper "
                                   "than 64 levels " + c.where));
    EXPECT_LT(tok.status().message().size(), 400u);
  }
  // Within the limit the structure is parsed and rejected by the tokenizer's own checks, with a
  // value cut to a short snippet.
  const std::string nested60 = std::string(60, '[') + std::string(60, ']');
  normalizer = good;
  normalizer.replace(normalizer.find("\"normalizer\": null"), 18, "\"normalizer\": " + nested60);
  auto tok = Tokenizer::FromJson(normalizer, "n.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(tok.status().message(), testing::HasSubstr("n.json: normalizer: unsupported value [[[["));
  EXPECT_LT(tok.status().message().size(), 250u);
}

TEST(TokenizerErrorTest, NulByteIsAnError) {
  // nlohmann stops at a NUL as if the input ended there; JSON text never holds one.
  const std::string good = MakeJson({"ab"}, {{"a", "b"}}, true);
  ExpectError(good + std::string("\0junk", 5), absl::StatusCode::kDataLoss,
              absl::StrCat("NUL byte at offset ", good.size()));
}

// Mutates a valid file thousands of times: every result is an error or a working tokenizer.
TEST(TokenizerErrorTest, FuzzedFilesNeverCrash) {
  const std::string added = R"([{"id": 300, "content": "<|endoftext|>", "special": true,
      "normalized": false, "lstrip": true}, {"id": 301, "content": "wo", "single_word": true,
      "rstrip": true}])";
  const std::string pre = R"({"type": "Sequence", "pretokenizers": [{"type": "Split",
      "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
      "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false,
      "use_regex": false}]})";
  const std::string base = MakeJson({"ab", "abc",
                                     "\xC4\xA0"
                                     "a"},
                                    {{"a", "b"}, {"ab", "c"}, {"\xC4\xA0", "a"}}, true, added, pre);
  ASSERT_TRUE(MustLoad(base));
  std::mt19937 rng(12345);
  const char junk[] = "{}[]\",:0123456789 -.eEnulltrueafsBPE\\u\xC4\xA0\xFF";
  int loaded = 0, rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s = base;
    const int edits = 1 + rng() % 3;
    for (int e = 0; e < edits && !s.empty(); ++e) {
      const size_t pos = rng() % s.size();
      switch (rng() % 5) {
        case 0:
          s.erase(pos, 1 + rng() % 8);
          break;
        case 1:
          s.insert(pos, 1, junk[rng() % (sizeof(junk) - 1)]);
          break;
        case 2:
          s[pos] = junk[rng() % (sizeof(junk) - 1)];
          break;
        case 3:
          s.insert(pos, s.substr(rng() % s.size(), 1 + rng() % 16));
          break;
        default:
          s.resize(pos);
          break;
      }
    }
    auto tok = Tokenizer::FromJson(s, "fuzz.json");
    if (!tok.ok()) {
      ++rejected;
      EXPECT_FALSE(tok.status().message().empty());
      continue;
    }
    ++loaded;
    const std::vector<int32_t> ids =
        (*tok)->Encode("abc wo <|endoftext|> a\xC4\xA0 it's 123 \xE4\xB8\xAD\n\n ab");
    for (int32_t id : ids) EXPECT_LT(id, (*tok)->vocab_size());
    (void)(*tok)->Decode(ids);
    (void)(*tok)->Decode({0, 5, 2147483647, -3});
    (void)(*tok)->TokenToId("ab");
  }
  EXPECT_GT(loaded, 50);  // both outcomes are exercised
  EXPECT_GT(rejected, 100);
}

}  // namespace
}  // namespace lattice
