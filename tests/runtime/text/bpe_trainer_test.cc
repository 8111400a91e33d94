#include "runtime/text/bpe_trainer.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/text/tokenizer.h"
#include "runtime/text/unicode.h"

namespace lattice {
namespace {

// A few hundred KB of lines: several counting chunks, so thread counts matter if anything does.
std::string SyntheticCorpus() {
  const char* syllables[] = {"ba",  "ko",  "ri",  "tse", "lu", "mon",     "dar",
                             "ein", "qua", "sho", "pel", "vi", "gru",     "na",
                             "xo",  "te",  "'s",  "12",  "3",  "\xC3\xA9"};
  std::string text;
  uint32_t state = 1;
  auto next = [&]() {
    state = state * 1664525u + 1013904223u;
    return state >> 16;
  };
  for (int line = 0; line < 12000; ++line) {
    text += "Line ";
    for (int w = 0; w < 6; ++w) {
      if (w > 0) text += " ";
      const int n = 1 + next() % 3;
      for (int k = 0; k < n; ++k) text += syllables[next() % 20];
    }
    text += (line % 7 == 0) ? ".\n\n" : ",\n";
  }
  return text;
}

TEST(BpeTrainerTest, TrainsToTheTargetAndLoads) {
  const std::string text = SyntheticCorpus();
  BpeTrainerOptions options;
  options.vocab_size = 400;
  auto result = TrainBpe({text}, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->vocab_size, 400);
  EXPECT_EQ(result->num_merges, 400 - 256 - 1);
  EXPECT_EQ(result->num_bytes, static_cast<int64_t>(text.size()));

  const nlohmann::json j = nlohmann::json::parse(result->tokenizer_json);
  EXPECT_EQ(j["model"]["vocab"].size(), 400u);
  EXPECT_EQ(j["model"]["merges"].size(), 143u);
  EXPECT_EQ(j["model"]["vocab"]["<|endoftext|>"], 399);
  EXPECT_EQ(j["model"]["vocab"]["\xC4\xA0"], 32);  // bytes keep their value as id
  EXPECT_EQ(j["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(j["pre_tokenizer"]["add_prefix_space"], false);

  auto tok = Tokenizer::FromJson(result->tokenizer_json, "trained.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 400);
  EXPECT_EQ((*tok)->eot_id(), 399);
  // Frequent words became single tokens.
  EXPECT_EQ((*tok)->Encode("Line").size(), 1u);
  EXPECT_EQ((*tok)->Encode(" ba").size(), 1u);
  const std::vector<int32_t> ids = (*tok)->Encode(text);
  EXPECT_LT(ids.size(), text.size() / 2);  // compresses: bytes per token > 2
  auto decoded = (*tok)->Decode(ids);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, text);
}

TEST(BpeTrainerTest, ResultDoesNotDependOnThreads) {
  const std::string text = SyntheticCorpus();
  BpeTrainerOptions options;
  options.vocab_size = 350;
  options.num_threads = 1;
  auto one = TrainBpe({text}, options);
  options.num_threads = 3;
  auto three = TrainBpe({text}, options);
  ASSERT_TRUE(one.ok() && three.ok());
  EXPECT_EQ(one->tokenizer_json, three->tokenizer_json);
  EXPECT_EQ(one->num_words, three->num_words);
}

TEST(BpeTrainerTest, MergesTheMostFrequentPairFirst) {
  // "xy" occurs 3 times, "ab" twice: the first merge must be x + y.
  BpeTrainerOptions options;
  options.vocab_size = 258;
  options.special_tokens = {};
  options.min_frequency = 1;
  auto result = TrainBpe({"xy ab xy ab xy"}, options);
  ASSERT_TRUE(result.ok()) << result.status();
  const nlohmann::json j = nlohmann::json::parse(result->tokenizer_json);
  ASSERT_EQ(j["model"]["merges"].size(), 2u);
  EXPECT_EQ(j["model"]["merges"][0], nlohmann::json({"x", "y"}));
  EXPECT_EQ(j["model"]["vocab"]["xy"], 256);
}

TEST(BpeTrainerTest, SpecialTokensAreCutOutAndGetTheLastIds) {
  BpeTrainerOptions options;
  options.vocab_size = 300;
  options.special_tokens = {"<|endoftext|>", "<|pad|>"};
  std::string text;
  for (int i = 0; i < 200; ++i) absl::StrAppend(&text, "hello world <|endoftext|>");
  auto result = TrainBpe({text}, options);
  ASSERT_TRUE(result.ok()) << result.status();
  auto tok = Tokenizer::FromJson(result->tokenizer_json, "trained.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  // The trainer stops when no pair repeats, so the special ids follow the learned tokens.
  const int64_t n = result->vocab_size;
  EXPECT_LE(n, 300);
  EXPECT_EQ((*tok)->TokenToId("<|endoftext|>"), n - 2);
  EXPECT_EQ((*tok)->TokenToId("<|pad|>"), n - 1);
  EXPECT_EQ((*tok)->Encode("<|pad|><|endoftext|>"),
            (std::vector<int32_t>{static_cast<int32_t>(n - 1), static_cast<int32_t>(n - 2)}));
  // Never learned across the special token: "|>" and "<|" come only from the specials.
  EXPECT_FALSE((*tok)->TokenToId(unicode::BytesToByteLevel(">hello")).has_value());
  EXPECT_FALSE((*tok)->TokenToId("<|").has_value());
}

TEST(BpeTrainerTest, StopsAtMinFrequency) {
  BpeTrainerOptions options;
  options.vocab_size = 5000;
  auto result = TrainBpe({"abcabc abd"}, options);
  ASSERT_TRUE(result.ok());
  EXPECT_LT(result->vocab_size, 5000);
  EXPECT_EQ(result->num_merges + 256 + 1, result->vocab_size);
}

TEST(BpeTrainerTest, RejectsBadOptions) {
  BpeTrainerOptions options;
  options.vocab_size = 256;  // no room for <|endoftext|>
  EXPECT_EQ(TrainBpe({"x"}, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.vocab_size = 300;
  options.special_tokens = {"<s>", "<s>"};
  EXPECT_EQ(TrainBpe({"x"}, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.special_tokens = {""};
  EXPECT_EQ(TrainBpe({"x"}, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.special_tokens = {"a"};  // the byte token "a"
  auto collide = TrainBpe({"x"}, options);
  EXPECT_EQ(collide.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(collide.status().message().find("\"a\""), std::string::npos);
  options.special_tokens = {};
  options.min_frequency = 0;
  EXPECT_FALSE(TrainBpe({"x"}, options).ok());
  auto missing = TrainBpeFromFiles({"/nonexistent/corpus.txt"}, BpeTrainerOptions());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace lattice
