#include "model/sampler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/decoder.h"
#include "runtime/config.h"
#include "runtime/rng.h"
#include "runtime/text/tokenizer.h"
#include "runtime/text/unicode.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

SamplerOptions Greedy() {
  SamplerOptions o;
  o.temperature = 0;
  return o;
}

// Every sampling mode the command line offers.
std::vector<SamplerOptions> AllModes() {
  std::vector<SamplerOptions> modes;
  for (float t : {0.0f, 0.7f, 1.0f, 5.0f}) {
    for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{40}}) {
      for (float p : {1.0f, 0.9f, 0.1f}) {
        SamplerOptions o;
        o.temperature = t;
        o.top_k = k;
        o.top_p = p;
        o.seed = 11;
        modes.push_back(o);
      }
    }
  }
  return modes;
}

TEST(DecodableTokenMask, ByteTokenizerUnderAPaddedModelVocab) {
  auto tok = Tokenizer::Bytes();
  const std::vector<uint8_t> mask = DecodableTokenMask(*tok, 317);
  ASSERT_EQ(mask.size(), 317u);
  for (int i = 0; i < 317; ++i) EXPECT_EQ(mask[i], i < 257 ? 1 : 0) << i;
  // A model vocabulary smaller than the tokenizer's keeps only the model's ids.
  EXPECT_EQ(DecodableTokenMask(*tok, 100).size(), 100u);
}

// A tokenizer.json whose ids have a hole: bytes 0..255 and one merged token at id 300.
TEST(DecodableTokenMask, HolesInTheVocabularyAreMasked) {
  std::vector<std::string> vocab;
  for (int b = 0; b < 256; ++b) {
    std::string sym = unicode::BytesToByteLevel(std::string(1, static_cast<char>(b)));
    std::string quoted = "\"";
    for (char c : sym) {
      if (c == '"' || c == '\\') quoted.push_back('\\');
      quoted.push_back(c);
    }
    vocab.push_back(absl::StrCat(quoted, "\": ", b));
  }
  vocab.push_back("\"ab\": 300");
  const std::string json = absl::StrCat(
      R"({"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": )",
      R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},)",
      R"( "post_processor": null, "decoder": {"type": "ByteLevel"},)",
      R"( "model": {"type": "BPE", "vocab": {)", absl::StrJoin(vocab, ", "),
      R"(}, "merges": ["a b"]}})");
  auto tok = Tokenizer::FromJson(json, "holes.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  ASSERT_EQ((*tok)->vocab_size(), 301);
  const std::vector<uint8_t> mask = DecodableTokenMask(**tok, 320);
  for (int i = 0; i < 320; ++i) EXPECT_EQ(mask[i], i < 256 || i == 300 ? 1 : 0) << i;
  // The best logits sit in the hole and the padding; only id 300 and the bytes may win.
  std::vector<float> logits(320, 0.0f);
  for (int i = 256; i < 320; ++i) logits[i] = 50.0f;
  for (const SamplerOptions& o : AllModes()) {
    for (uint64_t draw = 0; draw < 20; ++draw) {
      auto id = SampleToken(logits, mask, o, draw);
      ASSERT_TRUE(id.ok()) << id.status();
      EXPECT_EQ(*id, 300);
    }
  }
}

// The masked ids have by far the best logits; no mode ever returns one.
TEST(SampleToken, NeverReturnsAMaskedId) {
  const int64_t vocab = 317, padded = 320;
  const std::vector<uint8_t> mask = DecodableTokenMask(*Tokenizer::Bytes(), vocab);
  std::vector<float> logits(padded);
  CounterRng rng(3, "test.logits");
  for (int64_t i = 0; i < padded; ++i) logits[i] = i >= 257 ? 30.0f + rng.Uniform(i) : rng.Uniform(i);
  logits[301] = 1000.0f;  // the id that used to end every generation
  for (const SamplerOptions& o : AllModes()) {
    for (uint64_t draw = 0; draw < 200; ++draw) {
      auto id = SampleToken(logits, mask, o, draw);
      ASSERT_TRUE(id.ok()) << id.status();
      ASSERT_GE(*id, 0);
      ASSERT_LT(*id, 257) << "t=" << o.temperature << " k=" << o.top_k << " p=" << o.top_p;
    }
  }
  // Greedy takes the best allowed id.
  std::vector<float> l2(padded, 0.0f);
  l2[301] = 9;
  l2[42] = 5;
  l2[43] = 5;  // a tie goes to the smaller id
  EXPECT_EQ(*SampleToken(l2, mask, Greedy(), 0), 42);
}

TEST(SampleToken, NanAndInfiniteLogits) {
  std::vector<uint8_t> mask(4, 1);
  std::vector<float> logits = {std::nanf(""), 1.0f, -kInf, 2.0f};
  for (const SamplerOptions& o : AllModes()) {
    for (uint64_t draw = 0; draw < 50; ++draw) {
      auto id = SampleToken(logits, mask, o, draw);
      ASSERT_TRUE(id.ok());
      EXPECT_TRUE(*id == 1 || *id == 3) << *id;
    }
  }
  // +inf takes all the mass (shared among the ids that reach it), at any temperature.
  std::vector<float> inf = {1.0f, kInf, 3.0f, kInf};
  for (const SamplerOptions& o : AllModes()) {
    for (uint64_t draw = 0; draw < 50; ++draw) {
      auto id = SampleToken(inf, mask, o, draw);
      ASSERT_TRUE(id.ok());
      EXPECT_TRUE(*id == 1 || *id == 3) << *id;
    }
  }
  // Nothing usable: an error, not an id.
  std::vector<float> bad = {std::nanf(""), -kInf, 7.0f, 8.0f};
  std::vector<uint8_t> only_bad = {1, 1, 0, 0};
  auto none = SampleToken(bad, only_bad, Greedy(), 0);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(none.status().message(), HasSubstr("no token can be sampled"));
}

// Temperature sampling follows the softmax of the allowed ids only. Two ids with logits 0 and
// log(3): p = 3/4. 4000 draws: standard deviation sqrt(.75 * .25 / 4000) = 0.0068, 5 sigma.
TEST(SampleToken, FollowsTheSoftmaxOfTheAllowedIds) {
  std::vector<float> logits = {0.0f, std::log(3.0f), 100.0f};
  std::vector<uint8_t> mask = {1, 1, 0};
  SamplerOptions o;
  o.seed = 5;
  int ones = 0;
  const int n = 4000;
  for (int draw = 0; draw < n; ++draw) ones += *SampleToken(logits, mask, o, draw) == 1;
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 5 * 0.0068);
  // Reproducible for a seed and draw.
  EXPECT_EQ(*SampleToken(logits, mask, o, 17), *SampleToken(logits, mask, o, 17));
}

// (Moved here from decoder_test.cc.) Id 5 is padding: masked, never chosen.
TEST(SampleToken, GreedyTopKTopP) {
  const std::vector<float> logits = {0.1f, 3.0f, 2.9f, -1.0f, 0.0f, 100.0f};
  const std::vector<uint8_t> mask = {1, 1, 1, 1, 1, 0};
  EXPECT_EQ(*SampleToken(logits, mask, Greedy(), 0), 1);
  SamplerOptions top1;
  top1.top_k = 1;
  for (uint64_t d = 0; d < 50; ++d) EXPECT_EQ(*SampleToken(logits, mask, top1, d), 1);
  SamplerOptions top2;
  top2.top_k = 2;
  int ones = 0;
  for (uint64_t d = 0; d < 2000; ++d) {
    const int32_t tkn = *SampleToken(logits, mask, top2, d);
    ASSERT_TRUE(tkn == 1 || tkn == 2);
    ones += tkn == 1;
  }
  // p(1) = e^0.1 / (1 + e^0.1) = 0.525; 2000 draws: sd 0.011, the bound is ~3.6 sd.
  EXPECT_NEAR(ones / 2000.0, 0.525, 0.04);
  SamplerOptions nucleus;
  nucleus.top_p = 0.4f;  // the single most likely token already holds > 40%
  for (uint64_t d = 0; d < 50; ++d) EXPECT_EQ(*SampleToken(logits, mask, nucleus, d), 1);
}

TEST(SamplerOptions, Validation) {
  SamplerOptions o;
  EXPECT_TRUE(ValidateSamplerOptions(o).ok());
  o.temperature = -1;
  EXPECT_THAT(ValidateSamplerOptions(o).message(), HasSubstr("temperature=-1"));
  o.temperature = std::nanf("");
  EXPECT_FALSE(ValidateSamplerOptions(o).ok());
  o = SamplerOptions();
  o.top_k = -2;
  EXPECT_THAT(ValidateSamplerOptions(o).message(), HasSubstr("top_k=-2"));
  o = SamplerOptions();
  o.top_p = 0;
  EXPECT_THAT(ValidateSamplerOptions(o).message(), HasSubstr("top_p=0"));
}

// A tiny model with 317 vocabulary rows (320 padded) under the 257-token byte tokenizer, whose
// rows 257..316 are made to win every argmax: generation with every mode emits only ids the
// tokenizer decodes, and the streamed text is the decoding of the whole sequence.
TEST(SampleToken, TinyModelWithALargerVocabThanItsTokenizer) {
  ModelConfig mc;
  mc.vocab_size = 317;
  mc.seq_len = 64;
  mc.vocab_pad_multiple = 64;
  Config cfg;
  cfg.model = mc;
  ASSERT_TRUE(cfg.Validate().ok()) << cfg.Validate();
  ASSERT_EQ(mc.padded_vocab(), 320);
  auto model = Decoder::Create(mc, 1);
  ASSERT_TRUE(model.ok()) << model.status();
  (*model)->InitializeWeights(3);
  auto tok = Tokenizer::Bytes();
  const std::vector<int32_t> prompt = tok->Encode("Hello");

  // Logits are dot products with the (tied) embedding rows: a row that is 10x the current best
  // row gets 10x its (positive) logit.
  std::vector<float> logits(mc.padded_vocab());
  {
    KvCache cache = (*model)->NewKvCache(mc.seq_len);
    for (int32_t id : prompt) (*model)->DecodeStep(id, cache, logits.data());
  }
  int best = 0;
  for (int i = 0; i < 257; ++i) best = logits[i] > logits[best] ? i : best;
  ASSERT_GT(logits[best], 0.0f);
  const Parameter* wte = (*model)->params().Find("wte");
  ASSERT_NE(wte, nullptr);
  float* w = wte->value.f32();
  for (int r = 257; r < 317; ++r) {
    for (int64_t c = 0; c < mc.d_model; ++c) w[r * mc.d_model + c] = 10.0f * w[best * mc.d_model + c];
  }
  const std::vector<uint8_t> mask = DecodableTokenMask(*tok, mc.vocab_size);
  for (SamplerOptions o : AllModes()) {
    KvCache cache = (*model)->NewKvCache(mc.seq_len);
    for (int32_t id : prompt) (*model)->DecodeStep(id, cache, logits.data());
    // The premise: unmasked, greedy would pick an id the tokenizer cannot decode.
    int unmasked = 0;
    for (int i = 0; i < mc.vocab_size; ++i) unmasked = logits[i] > logits[unmasked] ? i : unmasked;
    ASSERT_GE(unmasked, 257);
    TextStreamer stream(*tok, {});
    std::string streamed;
    std::vector<int32_t> out;
    while (cache.len < mc.seq_len) {
      auto id = SampleToken(logits, mask, o, out.size());
      ASSERT_TRUE(id.ok()) << id.status();
      ASSERT_LT(*id, 257);
      out.push_back(*id);
      auto piece = stream.Add(*id);
      ASSERT_TRUE(piece.ok()) << piece.status();
      streamed += piece->text;
      (*model)->DecodeStep(*id, cache, logits.data());
    }
    streamed += stream.Finish();
    auto text = tok->Decode(out);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(streamed, *text);
  }
}

// ---- TextStreamer ------------------------------------------------------------------------

std::vector<std::string> Pieces(TextStreamer& s, const std::string& bytes, bool* stopped) {
  std::vector<std::string> pieces;
  *stopped = false;
  for (unsigned char b : bytes) {
    auto p = s.Add(b);
    EXPECT_TRUE(p.ok()) << p.status();
    pieces.push_back(p->text);
    if (p->stopped) {
      *stopped = true;
      break;
    }
  }
  return pieces;
}

TEST(TextStreamer, MultiByteCharactersSplitAcrossIdsArePrintedWhole) {
  auto tok = Tokenizer::Bytes();
  TextStreamer s(*tok, {});
  bool stopped;
  // "h€l": the euro sign is three byte tokens; nothing of it appears until the last one.
  EXPECT_THAT(Pieces(s, "h\xE2\x82\xACl", &stopped),
              ::testing::ElementsAre("h", "", "", "\xE2\x82\xAC", "l"));
  EXPECT_EQ(s.Finish(), "");
  // An invalid byte becomes U+FFFD once the next byte shows it starts nothing.
  TextStreamer t(*tok, {});
  EXPECT_THAT(Pieces(t, "\xFF" "a\xF0\x9F", &stopped),
              ::testing::ElementsAre("", "\xEF\xBF\xBD" "a", "", ""));
  // Generation that ends inside a character prints the replacement, as Decode does.
  EXPECT_EQ(t.Finish(), "\xEF\xBF\xBD");
}

TEST(TextStreamer, PiecesJoinToTheDecodingOfEverySequence) {
  auto tok = Tokenizer::Bytes();
  // Bytes drawn from ASCII, lead bytes, continuation bytes and invalid bytes.
  const unsigned char alphabet[] = {'a', ' ', 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98,
                                    0x80, 0xFF, 0xC0};
  CounterRng rng(9, "test.bytes");
  uint64_t k = 0;
  for (int seq = 0; seq < 300; ++seq) {
    std::vector<int32_t> ids;
    const int len = 1 + static_cast<int>(rng.Bits(k++) % 12);
    for (int i = 0; i < len; ++i) ids.push_back(alphabet[rng.Bits(k++) % sizeof(alphabet)]);
    TextStreamer s(*tok, {});
    std::string joined;
    for (size_t i = 0; i < ids.size(); ++i) {
      auto p = s.Add(ids[i]);
      ASSERT_TRUE(p.ok());
      joined += p->text;
      // Always a prefix of the decoding so far: printed text is never taken back.
      auto so_far = tok->Decode(absl::MakeConstSpan(ids.data(), i + 1));
      ASSERT_TRUE(so_far.ok());
      ASSERT_EQ(so_far->compare(0, joined.size(), joined), 0);
    }
    joined += s.Finish();
    EXPECT_EQ(joined, *tok->Decode(ids));
  }
}

TEST(TextStreamer, StopStringsEndTheTextAndAreNotPrinted) {
  auto tok = Tokenizer::Bytes();
  bool stopped;
  TextStreamer s(*tok, {"\n\n", "END"});
  // "E" and "EN" could start "END": held back until "ENd" shows they do not.
  EXPECT_THAT(Pieces(s, "hi ENdEND more", &stopped),
              ::testing::ElementsAre("h", "i", " ", "", "", "ENd", "", "", ""));
  EXPECT_TRUE(stopped);
  EXPECT_EQ(s.Finish(), "");
  auto after = s.Add('x');
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(after->stopped);

  TextStreamer t(*tok, {"\n\n"});
  EXPECT_THAT(Pieces(t, "a\nb\n\nc", &stopped), ::testing::ElementsAre("a", "", "\nb", "", ""));
  EXPECT_TRUE(stopped);
  // A prefix that is still pending when generation ends is printed then.
  TextStreamer u(*tok, {"END"});
  EXPECT_THAT(Pieces(u, "xEN", &stopped), ::testing::ElementsAre("x", "", ""));
  EXPECT_FALSE(stopped);
  EXPECT_EQ(u.Finish(), "EN");
}

TEST(TextStreamer, AnUndecodableIdIsAnErrorAndChangesNothing) {
  auto tok = Tokenizer::Bytes();
  TextStreamer s(*tok, {});
  ASSERT_TRUE(s.Add('a').ok());
  auto bad = s.Add(301);
  EXPECT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("301"));
  EXPECT_EQ(s.num_ids(), 1);
  auto b = s.Add('b');
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->text, "b");
}

}  // namespace
}  // namespace lattice
