#include "runtime/data/sft.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/text/chat_template.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

constexpr int32_t kEos = 256;  // the byte tokenizer's end-of-text id

class SftTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("lattice_sft_", info->name(), "_", ::getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  absl::StatusOr<SftExamples> Tokenize(const std::string& jsonl) {
    return TokenizeSftJsonl(jsonl, "data.jsonl", *tok_, kEos);
  }
  std::unique_ptr<Tokenizer> tok_ = Tokenizer::Bytes();
  std::filesystem::path dir_;
};

std::vector<int32_t> Bytes(const std::string& s) { return std::vector<int32_t>(s.begin(), s.end()); }

TEST_F(SftTest, PromptCompletionMasksThePromptAndAppendsEos) {
  auto ex = Tokenize("{\"prompt\": \"ab\", \"completion\": \"cd\"}\n");
  ASSERT_TRUE(ex.ok()) << ex.status();
  ASSERT_EQ(ex->size(), 1);
  EXPECT_EQ(ex->tokens, (std::vector<int32_t>{'a', 'b', 'c', 'd', kEos}));
  EXPECT_EQ(ex->mask, (std::vector<uint8_t>{0, 0, 1, 1, 1}));
  EXPECT_EQ(ex->lines, (std::vector<int64_t>{1}));
}

TEST_F(SftTest, MessagesAreRenderedByTheChatTemplateWithAssistantMask) {
  const std::string line =
      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, "
      "{\"role\": \"assistant\", \"content\": \"yo\"}]}";
  auto ex = Tokenize(line);
  ASSERT_TRUE(ex.ok()) << ex.status();
  auto segs = text::RenderChatSegments({{"user", "hi"}, {"assistant", "yo"}}, false);
  ASSERT_TRUE(segs.ok());
  std::vector<int32_t> want;
  std::vector<uint8_t> mask;
  for (const auto& s : *segs) {
    for (char c : s.text) {
      want.push_back(static_cast<unsigned char>(c));
      mask.push_back(s.assistant ? 1 : 0);
    }
  }
  EXPECT_EQ(ex->tokens, want);  // no EOS: the template's end-of-turn marker is the stop
  EXPECT_EQ(ex->mask, mask);
  // The counted text is exactly the assistant content and its end-of-turn marker.
  std::string counted;
  for (size_t i = 0; i < want.size(); ++i) {
    if (mask[i]) counted += static_cast<char>(want[i]);
  }
  EXPECT_EQ(counted, absl::StrCat("yo", text::kChatEndOfTurn));
}

TEST_F(SftTest, ErrorsNameTheFileAndLine) {
  struct Case {
    std::string jsonl;
    std::vector<std::string> want;
  };
  const std::string ok = "{\"prompt\": \"a\", \"completion\": \"b\"}\n";
  const std::vector<Case> cases = {
      {ok + "{\"prompt\": \"a\", \n", {"data.jsonl:2", "invalid JSON"}},
      {ok + ok + "[1, 2]\n", {"data.jsonl:3", "JSON object"}},
      {ok + "{\"prompt\": \"a\"}\n", {"data.jsonl:2", "missing \"completion\""}},
      {"{\"completion\": \"a\"}\n", {"data.jsonl:1", "missing \"prompt\""}},
      {"{\"prompt\": 3, \"completion\": \"a\"}\n", {"data.jsonl:1", "\"prompt\" must be a string"}},
      {"{\"text\": \"a\"}\n", {"data.jsonl:1", "needs \"prompt\" and \"completion\""}},
      {"{\"prompt\": \"a\", \"completion\": \"b\", \"messages\": []}\n",
       {"data.jsonl:1", "both"}},
      {ok + "\n" + "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
                   "{\"role\": \"robot\", \"content\": \"b\"}]}\n",
       {"data.jsonl:3", "messages[1]", "robot"}},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n",
       {"data.jsonl:1", "no assistant message"}},
      {"{\"messages\": [{\"role\": \"user\"}]}\n", {"data.jsonl:1", "content"}},
      {"\n\n", {"data.jsonl", "no examples"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.jsonl);
    auto ex = Tokenize(c.jsonl);
    ASSERT_FALSE(ex.ok());
    EXPECT_EQ(ex.status().code(), absl::StatusCode::kInvalidArgument);
    for (const std::string& w : c.want) EXPECT_THAT(ex.status().message(), HasSubstr(w));
  }
}

TEST_F(SftTest, EmptyCompletionLearnsToStopAndWithoutEosIsAnError) {
  auto ex = Tokenize("{\"prompt\": \"ab\", \"completion\": \"\"}\n");
  ASSERT_TRUE(ex.ok()) << ex.status();
  EXPECT_EQ(ex->tokens, (std::vector<int32_t>{'a', 'b', kEos}));
  EXPECT_EQ(ex->mask, (std::vector<uint8_t>{0, 0, 1}));
  auto none = TokenizeSftJsonl("\n{\"prompt\": \"ab\", \"completion\": \"\"}\n", "d.jsonl", *tok_,
                               /*eos=*/-1);
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(none.status().message(), HasSubstr("d.jsonl:2"));
  EXPECT_THAT(none.status().message(), HasSubstr("empty completion"));
}

// Rows: targets are the next token where the mask counts it, else -1; packed rows carry
// doc_starts and never predict across an example.
TEST_F(SftTest, RowsUnpackedAndPacked) {
  auto ex = Tokenize(
      "{\"prompt\": \"ab\", \"completion\": \"c\"}\n"        // a b c EOS   (3 positions)
      "{\"prompt\": \"x\", \"completion\": \"yz\"}\n"        // x y z EOS   (3 positions)
      "{\"prompt\": \"pq\", \"completion\": \"r\"}\n");      // p q r EOS   (3 positions)
  ASSERT_TRUE(ex.ok()) << ex.status();
  auto shared = std::make_shared<const SftExamples>(*ex);
  SftSampleOptions o;
  o.seq_len = 7;
  o.seed = 3;
  o.vocab_size = 257;
  auto unpacked = SftSamples::Create(shared, "p", o);
  ASSERT_TRUE(unpacked.ok()) << unpacked.status();
  EXPECT_EQ((*unpacked)->rows_per_epoch(), 3);
  TokenBatch b;
  ASSERT_TRUE((*unpacked)->ReadBatch(0, 3, b).ok());
  EXPECT_TRUE(b.doc_starts.empty());
  std::set<std::vector<int32_t>> rows;
  for (int r = 0; r < 3; ++r) {
    std::vector<int32_t> in(b.inputs.begin() + r * 7, b.inputs.begin() + r * 7 + 7);
    std::vector<int32_t> tg(b.targets.begin() + r * 7, b.targets.begin() + r * 7 + 7);
    rows.insert(in);
    if (in[0] == 'a') {
      EXPECT_EQ(in, (std::vector<int32_t>{'a', 'b', 'c', 0, 0, 0, 0}));
      EXPECT_EQ(tg, (std::vector<int32_t>{-1, 'c', kEos, -1, -1, -1, -1}));
    }
  }
  EXPECT_EQ(rows.size(), 3u);  // one epoch visits every row once

  o.pack = true;
  auto packed = SftSamples::Create(shared, "p", o);
  ASSERT_TRUE(packed.ok()) << packed.status();
  // Two examples (3 + 3 positions) fit in 7, the third starts a new row.
  EXPECT_EQ((*packed)->rows_per_epoch(), 2);
  ASSERT_TRUE((*packed)->ReadBatch(0, 2, b).ok());
  ASSERT_EQ(b.doc_starts.size(), 14u);
  int64_t counted = 0;
  for (int r = 0; r < 2; ++r) {
    const int32_t* ds = b.doc_starts.data() + r * 7;
    const int32_t* tg = b.targets.data() + r * 7;
    EXPECT_EQ(ds[0], 0);
    for (int i = 1; i < 7; ++i) EXPECT_TRUE(ds[i] == ds[i - 1] || ds[i] == i) << i;
    for (int i = 0; i < 7; ++i) {
      // The last position of an example predicts EOS (its own), never the next example.
      if (i + 1 < 7 && ds[i + 1] == i + 1 && tg[i] >= 0) EXPECT_EQ(tg[i], kEos);
      counted += tg[i] >= 0;
    }
  }
  EXPECT_EQ(counted, 7);  // c EOS | y z EOS | r EOS: prompt tokens are never targets
}

TEST_F(SftTest, TooLongExampleAndBadTokenNameTheLine) {
  auto ex = Tokenize("{\"prompt\": \"a\", \"completion\": \"b\"}\n"
                     "{\"prompt\": \"abcdefgh\", \"completion\": \"ijk\"}\n");
  ASSERT_TRUE(ex.ok());
  auto shared = std::make_shared<const SftExamples>(*ex);
  SftSampleOptions o;
  o.seq_len = 8;  // the second example has 12 tokens
  auto s = SftSamples::Create(shared, "p", o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("data.jsonl:2"));
  EXPECT_THAT(s.status().message(), HasSubstr("12 tokens"));
  o.seq_len = 16;
  o.vocab_size = 100;  // 'a'..'k' are 97..107
  s = SftSamples::Create(shared, "p", o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("data.jsonl:1"));
  EXPECT_THAT(s.status().message(), HasSubstr("model.vocab_size=100"));
}

TEST_F(SftTest, PreparedFileIsReusedAndDamageIsNamed) {
  const std::string jsonl = Write("d.jsonl", "{\"prompt\": \"ab\", \"completion\": \"cd\"}\n"
                                             "{\"messages\": [{\"role\": \"user\", \"content\": "
                                             "\"q\"}, {\"role\": \"assistant\", \"content\": "
                                             "\"a\"}]}\n");
  auto first = PrepareSft(jsonl, "byte");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->reused);
  EXPECT_EQ(first->examples, 2);
  struct stat st1;
  ASSERT_EQ(::stat(first->prepared_path.c_str(), &st1), 0);
  auto second = PrepareSft(jsonl, "byte");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->reused);
  struct stat st2;
  ASSERT_EQ(::stat(first->prepared_path.c_str(), &st2), 0);
  EXPECT_EQ(st1.st_ino, st2.st_ino);  // not rewritten
  EXPECT_EQ(st1.st_mtim.tv_nsec, st2.st_mtim.tv_nsec);
  auto read = ReadSftPrepared(first->prepared_path, jsonl);
  ASSERT_TRUE(read.ok()) << read.status();
  auto direct = TokenizeSftJsonl(
      "{\"prompt\": \"ab\", \"completion\": \"cd\"}\n{\"messages\": [{\"role\": \"user\", "
      "\"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n",
      jsonl, *tok_, kEos);
  ASSERT_TRUE(direct.ok());
  EXPECT_EQ(read->tokens, direct->tokens);
  EXPECT_EQ(read->mask, direct->mask);
  EXPECT_EQ(read->offsets, direct->offsets);
  EXPECT_EQ(read->lines, direct->lines);

  // A changed JSONL makes the file stale: prepared again.
  Write("d.jsonl", "{\"prompt\": \"ab\", \"completion\": \"cde\"}\n");
  auto third = PrepareSft(jsonl, "byte");
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_FALSE(third->reused);
  EXPECT_EQ(third->examples, 1);

  // A flipped byte fails the CRC; a cut file fails the size check: both name the file.
  std::string bytes;
  {
    std::ifstream in(third->prepared_path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::string flipped = bytes;
  flipped[flipped.size() - 10] ^= 1;
  Write("d.jsonl.lattice-sft", flipped);
  auto bad = PrepareSft(jsonl, "byte");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(bad.status().message(), HasSubstr("d.jsonl.lattice-sft"));
  EXPECT_THAT(bad.status().message(), HasSubstr("CRC"));
  Write("d.jsonl.lattice-sft", bytes.substr(0, bytes.size() - 3));
  auto cut = ReadSftPrepared(third->prepared_path, jsonl);
  ASSERT_FALSE(cut.ok());
  EXPECT_THAT(cut.status().message(), HasSubstr("truncated"));
  Write("d.jsonl.lattice-sft", "hello");
  cut = ReadSftPrepared(third->prepared_path, jsonl);
  ASSERT_FALSE(cut.ok());
  EXPECT_THAT(cut.status().message(), HasSubstr("not a lattice prepared SFT file"));
}

TEST_F(SftTest, StateRefusesOtherPacking) {
  auto ex = Tokenize("{\"prompt\": \"a\", \"completion\": \"b\"}\n"
                     "{\"prompt\": \"c\", \"completion\": \"d\"}\n");
  ASSERT_TRUE(ex.ok());
  auto shared = std::make_shared<const SftExamples>(*ex);
  SftSampleOptions o;
  o.seq_len = 8;
  auto unpacked = SftSamples::Create(shared, "p", o);
  o.pack = true;
  auto packed = SftSamples::Create(shared, "p", o);
  ASSERT_TRUE(unpacked.ok() && packed.ok());
  const DataLoaderState s = (*unpacked)->State(6);
  EXPECT_TRUE((*unpacked)->CheckState(s).ok());
  auto back = DataLoaderState::FromJson(s.ToJson());
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE((*unpacked)->CheckState(*back).ok());
  EXPECT_FALSE((*packed)->CheckState(s).ok());
}

}  // namespace
}  // namespace lattice
