#include "runtime/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "runtime/rng.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

// A config file in the temp folder, removed when the test ends.
class TempFile {
 public:
  TempFile(const std::string& name, const std::string& text)
      // The pid keeps concurrent runs (ctest -j, two build dirs) apart.
      : path_(::testing::TempDir() + "/lattice_config_test_" + std::to_string(::getpid()) + "_" +
              name) {
    std::ofstream(path_, std::ios::binary) << text;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The error message of parsing `yaml` with `overrides`; fails the test if parsing succeeds.
std::string ParseError(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  absl::StatusOr<Config> c = ParseConfig(yaml, overrides, "x.yaml");
  EXPECT_FALSE(c.ok()) << "parsed:\n" << yaml;
  if (c.ok()) return "";
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  return std::string(c.status().message());
}

TEST(ConfigTest, DefaultsParseAndValidate) {
  absl::StatusOr<Config> c = ParseConfig("", {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c, Config{});
  EXPECT_EQ(c->version, 1);
  EXPECT_EQ(c->model.arch, Arch::kGpt2);
  EXPECT_EQ(c->model.n_layer, 2);
  EXPECT_EQ(c->model.head_dim(), 16);
  EXPECT_EQ(c->model.kv_heads(), 4);
  EXPECT_EQ(c->model.ff_dim(), 256);
  EXPECT_EQ(c->model.padded_vocab(), 256);
  EXPECT_TRUE(c->model.tied());
  EXPECT_EQ(c->train.lr_decay, LrDecay::kCosine);
  EXPECT_EQ(c->parallel.schedule, PipelineSchedule::kOneFOneB);
  EXPECT_TRUE(Config{}.Validate().ok());

  absl::StatusOr<Config> loaded = LoadConfig("", {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*loaded, Config{});
  // A file holding only comments, or empty sections, is all defaults too.
  absl::StatusOr<Config> comments = ParseConfig("# nothing here\nmodel:\ntrain: {}\n", {});
  ASSERT_TRUE(comments.ok()) << comments.status();
  EXPECT_EQ(*comments, Config{});
}

TEST(ConfigTest, PaddedVocabRoundsUp) {
  ModelConfig m;
  m.vocab_size = 50257;
  m.vocab_pad_multiple = 64;
  EXPECT_EQ(m.padded_vocab(), 50304);
  m.vocab_pad_multiple = 1;
  EXPECT_EQ(m.padded_vocab(), 50257);
  m.vocab_size = 128;
  m.vocab_pad_multiple = 128;
  EXPECT_EQ(m.padded_vocab(), 128);
}

TEST(ConfigTest, ParsesEveryKind) {
  const std::string yaml = R"(
version: 1
model:
  arch: llama
  n_layer: 4
  d_model: 128
  n_head: 8
  n_kv_head: 2
  d_ff: 352
  vocab_size: 50257
  vocab_pad_multiple: 128
  seq_len: 256
  norm_eps: 1.0e-6
  rope_theta: 500000
  tie_embeddings: true
  init_std: 0.01
train:
  seed: 18446744073709551615
  micro_batch_size: 2
  global_batch_size: 16
  steps: 1000
  lr: 6e-4
  min_lr: 6e-5
  warmup_steps: 100
  lr_decay: linear
  weight_decay: 0.05
  beta1: 0.8
  beta2: 0.99
  adam_eps: 1e-6
  grad_clip: 0
  log_interval: 10
  eval_interval: 50
  eval_iters: 5
  metrics_file: runs/m.jsonl
  init_weights: "w.safetensors"
  save_weights: 'out.safetensors'
  threads: 2
data:
  tokenizer: byte
  val: data/val
  blend: [[0.7, data/a], [0.3, "data/b"]]
parallel:
  tp: 2
  pp: 2
  vpp: 2
  dp: 1
  sequence_parallel: yes
  zero1: true
  schedule: interleaved
)";
  absl::StatusOr<Config> c = ParseConfig(yaml, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model.arch, Arch::kLlama);
  EXPECT_EQ(c->model.n_layer, 4);
  EXPECT_EQ(c->model.n_kv_head, 2);
  EXPECT_EQ(c->model.d_ff, 352);
  EXPECT_EQ(c->model.padded_vocab(), 50304);
  EXPECT_FLOAT_EQ(c->model.norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c->model.rope_theta, 500000.0f);
  EXPECT_EQ(c->model.tie_embeddings, 1);
  EXPECT_TRUE(c->model.tied());
  EXPECT_EQ(c->train.seed, UINT64_MAX);
  EXPECT_EQ(c->train.global_batch_size, 16);
  EXPECT_FLOAT_EQ(c->train.lr, 6e-4f);
  EXPECT_EQ(c->train.lr_decay, LrDecay::kLinear);
  EXPECT_FLOAT_EQ(c->train.grad_clip, 0.0f);
  EXPECT_EQ(c->train.metrics_file, "runs/m.jsonl");
  EXPECT_EQ(c->train.init_weights, "w.safetensors");
  EXPECT_EQ(c->train.save_weights, "out.safetensors");
  EXPECT_EQ(c->train.threads, 2);
  EXPECT_EQ(c->data.tokenizer, "byte");
  ASSERT_EQ(c->data.blend.size(), 2u);
  EXPECT_DOUBLE_EQ(c->data.blend[0].first, 0.7);
  EXPECT_EQ(c->data.blend[0].second, "data/a");
  EXPECT_EQ(c->data.blend[1].second, "data/b");
  EXPECT_EQ(c->parallel.tp, 2);
  EXPECT_EQ(c->parallel.vpp, 2);
  EXPECT_TRUE(c->parallel.sequence_parallel);
  EXPECT_TRUE(c->parallel.zero1);
  EXPECT_EQ(c->parallel.schedule, PipelineSchedule::kInterleaved);
}

TEST(ConfigTest, DottedKeysAtTopLevel) {
  absl::StatusOr<Config> c =
      ParseConfig("model.n_layer: 6\ntrain.lr_decay: CONSTANT\nparallel.schedule: gpipe\n", {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model.n_layer, 6);
  EXPECT_EQ(c->train.lr_decay, LrDecay::kConstant);
  EXPECT_EQ(c->parallel.schedule, PipelineSchedule::kGpipe);
}

TEST(ConfigTest, UnknownKeysAreRejectedWithASuggestion) {
  const TempFile file("unknown.yaml", "model:\n  n_layer: 2\n  n_heads: 4\n");
  const std::string& path = file.path();
  absl::StatusOr<Config> c = LoadConfig(path, {});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("unknown key 'model.n_heads' in " + path + ":3"));
  EXPECT_THAT(c.status().message(), HasSubstr("(did you mean 'model.n_head'?)"));

  // The right name in the wrong section.
  EXPECT_THAT(ParseError("train:\n  n_layer: 2\n"),
              HasSubstr("unknown key 'train.n_layer' in x.yaml:2 (did you mean 'model.n_layer'?)"));
  // A misspelt section.
  EXPECT_THAT(ParseError("modle:\n  n_layer: 2\n"),
              HasSubstr("unknown key 'modle' in x.yaml:1 (did you mean 'model'?)"));
  // Nothing close: no suggestion.
  const std::string far = ParseError("completely_unrelated_thing: 1\n");
  EXPECT_THAT(far, HasSubstr("unknown key 'completely_unrelated_thing'"));
  EXPECT_THAT(far, ::testing::Not(HasSubstr("did you mean")));
  // Keys below a leaf are unknown too.
  EXPECT_THAT(ParseError("model.n_layer.x: 1\n"), HasSubstr("unknown key 'model.n_layer.x'"));
}

TEST(ConfigTest, WrongTypesNameKeyValueAndType) {
  EXPECT_THAT(ParseError("model:\n  n_layer: two\n"),
              HasSubstr("model.n_layer: expected an integer, got 'two' (x.yaml:2)"));
  EXPECT_THAT(ParseError("model:\n  n_layer: 2.5\n"),
              HasSubstr("model.n_layer: expected an integer, got '2.5'"));
  EXPECT_THAT(ParseError("model:\n  n_layer: [1, 2]\n"),
              HasSubstr("model.n_layer: expected an integer, got a sequence"));
  EXPECT_THAT(ParseError("model:\n  n_layer:\n"),
              HasSubstr("model.n_layer: expected an integer, got nothing (null)"));
  EXPECT_THAT(ParseError("model:\n  n_layer: 99999999999999999999\n"),
              HasSubstr("model.n_layer: expected an integer, got '99999999999999999999'"));
  EXPECT_THAT(ParseError("train:\n  lr: fast\n"),
              HasSubstr("train.lr: expected a number, got 'fast'"));
  EXPECT_THAT(ParseError("train:\n  lr: nan\n"), HasSubstr("train.lr: expected a finite number"));
  EXPECT_THAT(ParseError("train:\n  lr: 1e60\n"),
              HasSubstr("train.lr: expected a finite number within float range, got '1e60'"));
  EXPECT_THAT(ParseError("train:\n  seed: -1\n"),
              HasSubstr("train.seed: expected a non-negative integer, got '-1'"));
  EXPECT_THAT(ParseError("train:\n  threads: 4294967296\n"),
              HasSubstr("train.threads: expected an integer, got '4294967296'"));
  EXPECT_THAT(ParseError("parallel:\n  zero1: maybe\n"),
              HasSubstr("parallel.zero1: expected a boolean (true or false), got 'maybe'"));
  EXPECT_THAT(ParseError("model:\n  arch: gtp2\n"),
              HasSubstr("model.arch: expected one of gpt2, llama, got 'gtp2'"));
  EXPECT_THAT(ParseError("train:\n  lr_decay: exp\n"),
              HasSubstr("train.lr_decay: expected one of cosine, linear, constant, got 'exp'"));
  EXPECT_THAT(ParseError("parallel:\n  schedule: zb\n"),
              HasSubstr("parallel.schedule: expected one of 1f1b, gpipe, interleaved, got 'zb'"));
  EXPECT_THAT(ParseError("model:\n  tie_embeddings: 2\n"),
              HasSubstr("model.tie_embeddings: expected -1 (arch default), true/1 or false/0"));
  EXPECT_THAT(ParseError("data:\n  train: {a: 1}\n"),
              HasSubstr("data.train: expected a string, got a mapping"));
  EXPECT_THAT(ParseError("data:\n  blend: data/a\n"),
              HasSubstr("data.blend: expected a list of [weight, prefix] pairs, got 'data/a'"));
  EXPECT_THAT(ParseError("data:\n  blend: [[0.5, a], [b, 0.5]]\n"),
              HasSubstr("data.blend: entry 1: expected a finite number as the weight, got 'b'"));
  EXPECT_THAT(ParseError("data:\n  blend: [[0.5, a, c]]\n"),
              HasSubstr("data.blend: entry 0: expected a [weight, prefix] pair, got a sequence"));
  EXPECT_THAT(ParseError("model: 3\n"),
              HasSubstr("model: expected a mapping of keys (model.<key>: value), got '3'"));
}

TEST(ConfigTest, VersionMustBeOne) {
  absl::StatusOr<Config> c = ParseConfig("version: 1\n", {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(ParseError("version: 2\n"),
              HasSubstr("version: unsupported config version 2 (this lattice reads version 1)"));
  EXPECT_THAT(ParseError("version: one\n"), HasSubstr("version: expected an integer, got 'one'"));
  EXPECT_THAT(ParseError("", {"version=3"}), HasSubstr("unsupported config version 3"));
}

TEST(ConfigTest, StructuralErrors) {
  EXPECT_THAT(ParseError("model:\n  n_layer: 2\n  n_layer: 3\n"),
              HasSubstr("duplicate key 'model.n_layer' in x.yaml:3"));
  EXPECT_THAT(ParseError("model:\n  n_layer: 2\nmodel.n_layer: 3\n"),
              HasSubstr("duplicate key 'model.n_layer' in x.yaml:3"));
  EXPECT_THAT(ParseError("model:\n  n_layer: [2\n"), HasSubstr("invalid YAML"));
  EXPECT_THAT(ParseError("model:\n\tn_layer: 2\n"), HasSubstr("x.yaml:"));
  EXPECT_THAT(ParseError("- 1\n- 2\n"),
              HasSubstr("x.yaml: the top level must be a mapping of keys, got a sequence"));
  EXPECT_THAT(ParseError("just a string\n"), HasSubstr("the top level must be a mapping"));
  EXPECT_THAT(ParseError("model: {}\n---\ntrain: {}\n"), HasSubstr("holds 2 YAML documents"));
  EXPECT_THAT(ParseError("? [a, b]\n: 1\n"), HasSubstr("keys must be plain names"));
}

TEST(ConfigTest, LoadConfigFileErrors) {
  absl::StatusOr<Config> missing = LoadConfig(::testing::TempDir() + "/no/such.yaml", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no/such.yaml"));
  absl::StatusOr<Config> dir = LoadConfig(::testing::TempDir(), {});
  ASSERT_FALSE(dir.ok());
  EXPECT_THAT(dir.status().message(), HasSubstr("is a directory"));

  const TempFile file("bad_div.yaml", "model:\n  d_model: 100\n  n_head: 3\n");
  const std::string& path = file.path();
  absl::StatusOr<Config> bad = LoadConfig(path, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr(path));
  EXPECT_THAT(bad.status().message(),
              HasSubstr("model.d_model=100 is not divisible by model.n_head=3"));
}

TEST(ConfigTest, OverridesApplyAfterTheFileInOrder) {
  const TempFile file("base.yaml", "model:\n  n_layer: 4\ndata:\n  train: t\n");
  const std::string& path = file.path();
  absl::StatusOr<Config> c = LoadConfig(
      path, {"model.n_layer=8", "train.lr=1e-3", "model.n_layer=6", "data.tokenizer=byte",
             "model.arch=llama", "model.d_ff=172", "parallel.zero1=true", "data.val=v"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model.n_layer, 6);
  EXPECT_FLOAT_EQ(c->train.lr, 1e-3f);
  EXPECT_EQ(c->model.arch, Arch::kLlama);
  EXPECT_EQ(c->model.d_ff, 172);
  EXPECT_TRUE(c->parallel.zero1);
  EXPECT_EQ(c->data.train, "t");
  EXPECT_EQ(c->data.tokenizer, "byte");
  EXPECT_EQ(c->data.val, "v");

  // Blend as a YAML flow sequence; clearing data.train with an empty value.
  absl::StatusOr<Config> b =
      LoadConfig(path, {"data.train=", "data.blend=[[0.7, a], [0.3, \"b c\"]]"});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->data.train.empty());
  ASSERT_EQ(b->data.blend.size(), 2u);
  EXPECT_DOUBLE_EQ(b->data.blend[0].first, 0.7);
  EXPECT_EQ(b->data.blend[0].second, "a");
  EXPECT_DOUBLE_EQ(b->data.blend[1].first, 0.3);
  EXPECT_EQ(b->data.blend[1].second, "b c");
  // Spaces around the key are tolerated; the value keeps YAML's own trimming.
  absl::StatusOr<Config> s = ParseConfig("", {" model.n_layer = 4"});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->model.n_layer, 4);
  // Setting the blend while the file sets data.train is the validation error.
  EXPECT_THAT(LoadConfig(path, {"data.blend=[[1, a]]"}).status().message(),
              HasSubstr("data.train='t' and data.blend are both set"));
}

TEST(ConfigTest, OverrideErrors) {
  EXPECT_THAT(ParseError("", {"model.n_heads=4"}),
              HasSubstr("unknown key 'model.n_heads' in override 'model.n_heads=4' (did you mean "
                        "'model.n_head'?)"));
  EXPECT_THAT(ParseError("", {"model.n_layer"}),
              HasSubstr("override 'model.n_layer' has no '='"));
  EXPECT_THAT(ParseError("", {"model=3"}), HasSubstr("'model' in override 'model=3' is a section"));
  EXPECT_THAT(ParseError("", {"model.n_layer=two"}),
              HasSubstr("model.n_layer: expected an integer, got 'two' (override "
                        "'model.n_layer=two')"));
  EXPECT_THAT(ParseError("", {"data.blend=[[0.5, a]"}), HasSubstr("is not valid YAML"));
  EXPECT_THAT(ParseError("", {"data.blend=[[-1, a]]"}),
              HasSubstr("data.blend entry 0 ('a') has weight -1; weights must be > 0"));
}

// Each invalid combination, set through overrides on the defaults, and the fragment its
// message must contain.
struct ValidateCase {
  std::vector<std::string> overrides;
  std::string fragment;
};

TEST(ConfigTest, ValidateRejectsEachInconsistency) {
  const std::vector<ValidateCase> cases = {
      {{"model.n_layer=0"}, "model.n_layer=0 must be >= 1"},
      {{"model.d_model=-64"}, "model.d_model=-64 must be >= 1"},
      {{"model.n_head=0"}, "model.n_head=0 must be >= 1"},
      {{"model.n_kv_head=-1"}, "model.n_kv_head=-1 must be >= 0"},
      {{"model.d_ff=-1"}, "model.d_ff=-1 must be >= 0"},
      {{"model.vocab_size=0"}, "model.vocab_size=0 must be >= 1"},
      {{"model.vocab_pad_multiple=0"}, "model.vocab_pad_multiple=0 must be >= 1"},
      {{"model.seq_len=0"}, "model.seq_len=0 must be >= 1"},
      {{"model.d_model=1099511627777"}, "model.d_model=1099511627777 is too large"},
      {{"model.d_model=100", "model.n_head=3"},
       "model.d_model=100 is not divisible by model.n_head=3"},
      {{"model.arch=llama", "model.d_ff=128", "model.n_kv_head=3"},
       "model.n_head=4 is not divisible by model.n_kv_head=3"},
      {{"model.n_kv_head=2"},
       "model.n_kv_head=2 differs from model.n_head=4: grouped-query attention needs "
       "model.arch=llama"},
      {{"model.arch=llama", "model.d_ff=128", "model.d_model=60", "model.n_head=4"},
       "head dim model.d_model/model.n_head = 60/4 = 15 is odd"},
      {{"model.arch=llama"}, "model.d_ff must be set (> 0) for model.arch=llama"},
      {{"model.norm_eps=0"}, "model.norm_eps=0 must be > 0"},
      {{"model.arch=llama", "model.d_ff=128", "model.rope_theta=-1"},
       "model.rope_theta=-1 must be > 0"},
      {{"model.init_std=0"}, "model.init_std=0 must be > 0"},
      {{"train.micro_batch_size=0"}, "train.micro_batch_size=0 must be >= 1"},
      {{"train.steps=0"}, "train.steps=0 must be >= 1"},
      {{"train.lr=1e-5", "train.min_lr=1e-4"}, "train.lr=1e-05 must be >= train.min_lr=0.0001"},
      {{"train.min_lr=-1"}, "train.min_lr=-1 must be >= 0"},
      {{"train.warmup_steps=200"}, "train.warmup_steps=200 exceeds train.steps=100"},
      {{"train.beta1=1"}, "train.beta1=1 must be in [0, 1)"},
      {{"train.beta2=-0.5"}, "train.beta2=-0.5 must be in [0, 1)"},
      {{"train.adam_eps=0"}, "train.adam_eps=0 must be > 0"},
      {{"train.weight_decay=-0.1"}, "train.weight_decay=-0.1 must be >= 0"},
      {{"train.global_batch_size=10"},
       "train.global_batch_size=10 is not divisible by train.micro_batch_size=4"},
      {{"train.log_interval=0"}, "train.log_interval=0 must be >= 1"},
      {{"train.eval_interval=10", "train.eval_iters=0"}, "train.eval_iters=0 must be >= 1"},
      {{"data.train=t", "data.blend=[[1, a]]"}, "data.train='t' and data.blend are both set"},
      {{"data.blend=[[0, a]]"}, "data.blend entry 0 ('a') has weight 0; weights must be > 0"},
      {{"data.blend=[[1, \"\"]]"}, "data.blend entry 0 has an empty prefix"},
      {{"parallel.tp=0"}, "parallel.tp=0 must be >= 1"},
      {{"parallel.pp=0"}, "parallel.pp=0 must be >= 1"},
      {{"parallel.vpp=0"}, "parallel.vpp=0 must be >= 1"},
      {{"parallel.dp=-2"}, "parallel.dp=-2 must be >= 0"},
      {{"parallel.vpp=2", "parallel.pp=2", "model.n_layer=4"},
       "parallel.vpp=2 needs parallel.schedule=interleaved and parallel.pp > 1"},
      {{"parallel.vpp=2", "parallel.schedule=interleaved", "model.n_layer=4"},
       "parallel.vpp=2 needs parallel.schedule=interleaved and parallel.pp > 1 (pp=1)"},
      {{"parallel.pp=2", "parallel.vpp=2", "parallel.schedule=interleaved", "model.n_layer=6"},
       "model.n_layer=6 is not divisible by parallel.pp*parallel.vpp = 2*2 = 4"},
      {{"parallel.tp=3", "model.d_model=96", "model.vocab_pad_multiple=3"},
       "model.n_head=4 is not divisible by parallel.tp=3"},
      {{"parallel.tp=8"}, "model.n_head=4 is not divisible by parallel.tp=8"},
      {{"model.arch=llama", "model.d_ff=128", "model.n_head=6", "model.d_model=96",
        "model.n_kv_head=3", "parallel.tp=2"},
       "kv heads (model.n_kv_head) = 3 and parallel.tp=2: one must divide the other"},
      {{"model.arch=llama", "model.d_ff=130", "parallel.tp=4"},
       "MLP size model.d_ff = 130 is not divisible by parallel.tp=4"},
      {{"model.vocab_pad_multiple=1", "model.vocab_size=255", "parallel.tp=2"},
       "padded vocab 255 (model.vocab_size=255 rounded up to model.vocab_pad_multiple=1) is not "
       "divisible by parallel.tp=2"},
      {{"parallel.tp=4", "parallel.sequence_parallel=true", "model.seq_len=66"},
       "model.seq_len=66 is not divisible by parallel.tp=4"},
  };
  for (const ValidateCase& c : cases) {
    SCOPED_TRACE(::testing::PrintToString(c.overrides));
    absl::StatusOr<Config> parsed = ParseConfig("", c.overrides, "v.yaml");
    ASSERT_FALSE(parsed.ok());
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr(c.fragment));
    EXPECT_THAT(parsed.status().message(), HasSubstr("invalid config v.yaml"));
  }
}

TEST(ConfigTest, ValidateAcceptsTheEdgeOfEachRule) {
  const std::vector<std::vector<std::string>> ok = {
      {"model.arch=llama", "model.d_ff=128", "model.n_kv_head=1"},  // MQA
      {"model.arch=llama", "model.d_ff=128", "model.n_kv_head=4"},
      {"model.n_kv_head=4"},                                        // gpt2 n_kv_head == n_head
      {"train.warmup_steps=100"},
      {"train.lr=1e-4", "train.min_lr=1e-4"},
      {"train.min_lr=0"},
      {"train.beta1=0"},
      {"train.grad_clip=-1"},
      {"parallel.pp=2", "parallel.vpp=2", "parallel.schedule=interleaved", "model.n_layer=4"},
      {"parallel.tp=4"},
      // tp 4 over 2 kv heads: each kv head replicated on two ranks.
      {"model.arch=llama", "model.d_ff=128", "model.n_kv_head=2", "parallel.tp=4"},
      {"data.blend=[[0.25, a], [0.75, b]]"},
      {"train.global_batch_size=12"},
  };
  for (const auto& overrides : ok) {
    absl::StatusOr<Config> c = ParseConfig("", overrides);
    EXPECT_TRUE(c.ok()) << ::testing::PrintToString(overrides) << ": " << c.status();
  }
}

TEST(ConfigTest, ValidateLayoutDerivesDpAndGlobalBatch) {
  Config c;
  c.parallel.tp = 2;
  c.parallel.pp = 2;
  c.model.n_layer = 4;
  ASSERT_TRUE(c.ValidateLayout(8).ok());
  EXPECT_EQ(c.parallel.dp, 2);
  EXPECT_EQ(c.train.global_batch_size, 8);  // micro_batch_size 4 * dp 2

  Config explicit_dp = c;
  explicit_dp.parallel.dp = 2;
  explicit_dp.train.global_batch_size = 32;
  EXPECT_TRUE(explicit_dp.ValidateLayout(8).ok());

  Config mismatch = c;
  mismatch.parallel.dp = 3;
  absl::Status s = mismatch.ValidateLayout(8);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("world size 8 != parallel.tp*parallel.dp*parallel.pp = "
                                     "2*3*2 = 12"));

  Config indivisible;
  indivisible.parallel.tp = 2;
  indivisible.parallel.pp = 2;
  indivisible.model.n_layer = 4;
  EXPECT_THAT(indivisible.ValidateLayout(6).message(),
              HasSubstr("world size 6 is not divisible by parallel.tp*parallel.pp = 2*2 = 4"));

  Config gbs;
  gbs.train.global_batch_size = 12;  // divisible by micro 4, not by micro*dp = 8
  EXPECT_THAT(gbs.ValidateLayout(2).message(),
              HasSubstr("train.global_batch_size=12 is not divisible by "
                        "train.micro_batch_size*dp = 4*2 = 8"));
  EXPECT_EQ(gbs.parallel.dp, 0);  // a failed call changes nothing

  Config bad_world;
  EXPECT_FALSE(bad_world.ValidateLayout(0).ok());
  Config invalid;
  invalid.model.n_head = 3;
  EXPECT_THAT(invalid.ValidateLayout(1).message(), HasSubstr("not divisible by model.n_head=3"));
}

Config NonDefaultConfig() {
  Config c;
  c.model.arch = Arch::kLlama;
  c.model.n_layer = 8;
  c.model.d_model = 96;
  c.model.n_head = 6;
  c.model.n_kv_head = 2;
  c.model.d_ff = 256;
  c.model.vocab_size = 50257;
  c.model.vocab_pad_multiple = 128;
  c.model.seq_len = 1024;
  c.model.norm_eps = 1e-6f;
  c.model.rope_theta = 500000.0f;
  c.model.tie_embeddings = 0;
  c.model.init_std = 0.0123456789f;
  c.train.seed = 987654321987654321ull;
  c.train.micro_batch_size = 3;
  c.train.global_batch_size = 24;
  c.train.steps = 5000;
  c.train.lr = 3.3333333e-4f;
  c.train.min_lr = 1.0e-7f;
  c.train.warmup_steps = 0;
  c.train.lr_decay = LrDecay::kConstant;
  c.train.weight_decay = 0.0f;
  c.train.beta1 = 0.85f;
  c.train.beta2 = 0.999f;
  c.train.adam_eps = 1e-10f;
  c.train.grad_clip = -1.0f;
  c.train.log_interval = 7;
  c.train.eval_interval = 100;
  c.train.eval_iters = 3;
  c.train.metrics_file = "runs/a b/\"quoted\" \\ # not a comment: x";
  c.train.init_weights = "true";
  c.train.save_weights = "~";
  c.train.threads = 3;
  c.data.tokenizer = "tok\n\tenizer.json\x01";
  c.data.val = "héllo wörld";
  c.data.blend = {{0.1, "a"}, {1.0 / 3.0, "[b]"}, {2.5e-9, "null"}};
  c.parallel.tp = 2;
  c.parallel.pp = 2;
  c.parallel.vpp = 2;
  c.parallel.dp = 4;
  c.parallel.sequence_parallel = true;
  c.parallel.zero1 = true;
  c.parallel.schedule = PipelineSchedule::kInterleaved;
  return c;
}

TEST(ConfigTest, ToYamlRoundTrips) {
  for (const Config& c : {Config{}, NonDefaultConfig()}) {
    ASSERT_TRUE(c.Validate().ok()) << c.Validate();
    const std::string yaml = c.ToYaml();
    absl::StatusOr<Config> back = ParseConfig(yaml, {});
    ASSERT_TRUE(back.ok()) << back.status() << "\n" << yaml;
    EXPECT_EQ(*back, c) << yaml;
    EXPECT_EQ(back->ToYaml(), yaml);
  }
  // Every key is written, with its section, even at its default.
  const std::string yaml = Config{}.ToYaml();
  for (const char* key :
       {"version: 1", "model:", "  arch: gpt2", "  n_kv_head: 0", "  tie_embeddings: -1",
        "train:", "  seed: 1234", "  lr: 3e-04", "  lr_decay: cosine", "  metrics_file: \"\"",
        "data:", "  blend: []", "parallel:", "  sequence_parallel: false", "  schedule: 1f1b"}) {
    EXPECT_THAT(yaml, HasSubstr(key));
  }
}

TEST(ConfigTest, ToYamlRoundTripsUnusualFloats) {
  Config c;
  c.train.grad_clip = 1e-38f;  // near the bottom of the normal range
  c.train.lr = 0.1f + 0.2f;
  c.train.min_lr = 1.4e-45f;  // the smallest subnormal
  c.model.norm_eps = 3.4028235e38f;
  c.data.blend = {{1e300, "a"}, {5e-324, "b"}};
  absl::StatusOr<Config> back = ParseConfig(c.ToYaml(), {});
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, c);
}

TEST(ConfigTest, EveryPresetLoadsAndRoundTrips) {
  int presets = 0;
  for (const auto& entry : std::filesystem::directory_iterator(LATTICE_SOURCE_DIR "/configs")) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    ++presets;
    absl::StatusOr<Config> c = LoadConfig(entry.path().string(), {});
    ASSERT_TRUE(c.ok()) << c.status();
    absl::StatusOr<Config> back = ParseConfig(c->ToYaml(), {});
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, *c);
  }
  EXPECT_GT(presets, 0);
}

// Mutates YAML text byte-wise and line-wise: parsing must never crash, and whatever parses
// must validate and survive a ToYaml() round trip.
TEST(ConfigTest, FuzzMutatedYamlNeverCrashes) {
  const std::vector<std::string> seeds = {
      NonDefaultConfig().ToYaml(),
      Config{}.ToYaml(),
      "model:\n  arch: llama\n  d_ff: 128\n  n_kv_head: 2\ntrain: {lr: 1e-3, steps: 10, "
      "warmup_steps: 2}\ndata:\n  blend: [[0.5, a], [0.5, b]]\nparallel: {pp: 2, vpp: 1}\n",
  };
  const std::string alphabet = " \n\t:-[]{},#&*!|>'\"%@`?.0123456789eE+-xyz_~\\";
  CounterRng rng(42, "config-fuzz");
  uint64_t draw = 0;
  auto next = [&](uint64_t n) { return rng.Bits(draw++) % n; };
  int parsed_ok = 0;
  constexpr int kIterations = 6000;
  for (int it = 0; it < kIterations; ++it) {
    std::string text = seeds[next(seeds.size())];
    const int edits = 1 + static_cast<int>(next(4));
    for (int e = 0; e < edits && !text.empty(); ++e) {
      const size_t pos = next(text.size());
      switch (next(6)) {
        case 0: text[pos] = alphabet[next(alphabet.size())]; break;
        case 1: text.insert(pos, 1, alphabet[next(alphabet.size())]); break;
        case 2: text.erase(pos, 1 + next(3)); break;
        case 3: text[pos] = static_cast<char>(next(256)); break;
        case 4: {  // duplicate a line
          const size_t begin = text.rfind('\n', pos);
          const size_t start = begin == std::string::npos ? 0 : begin + 1;
          const size_t end = text.find('\n', pos);
          const std::string line =
              text.substr(start, end == std::string::npos ? std::string::npos : end - start + 1);
          text.insert(start, line);
          break;
        }
        case 5: text.erase(pos, text.find('\n', pos) - pos); break;  // truncate a line
      }
    }
    absl::StatusOr<Config> c = ParseConfig(text, {}, "fuzz.yaml");
    if (!c.ok()) {
      EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
      EXPECT_FALSE(c.status().message().empty());
      continue;
    }
    ++parsed_ok;
    EXPECT_TRUE(c->Validate().ok());
    absl::StatusOr<Config> back = ParseConfig(c->ToYaml(), {});
    ASSERT_TRUE(back.ok()) << back.status() << "\nfrom:\n" << text;
    EXPECT_EQ(*back, *c) << text;
  }
  // The mutations are mild enough that a fair share still parses (so the round-trip check
  // above ran), and harsh enough that most do not.
  RecordProperty("parsed_ok", parsed_ok);
  EXPECT_GT(parsed_ok, kIterations / 20);
  EXPECT_LT(parsed_ok, kIterations);
}

TEST(ConfigTest, FuzzOverridesNeverCrash) {
  const std::vector<std::string> keys = {
      "model.arch", "model.n_layer", "model.d_model", "model.n_head", "model.n_kv_head",
      "model.tie_embeddings", "train.lr", "train.seed", "data.blend", "data.train",
      "parallel.tp", "parallel.pp", "parallel.vpp", "parallel.schedule", "version", "model",
      "nope", ""};
  const std::vector<std::string> values = {
      "", "0", "1", "-1", "2", "4", "9223372036854775807", "-9223372036854775808", "1e308",
      "nan", "llama", "true", "[[1, a]]", "[[1, a], [2]]", "[", "{a: 1}", "'x'", "\"", "~",
      "interleaved", "=", "1=2"};
  CounterRng rng(7, "override-fuzz");
  uint64_t draw = 0;
  auto next = [&](uint64_t n) { return rng.Bits(draw++) % n; };
  for (int it = 0; it < 3000; ++it) {
    std::vector<std::string> overrides;
    const int n = 1 + static_cast<int>(next(4));
    for (int i = 0; i < n; ++i) {
      overrides.push_back(keys[next(keys.size())] + (next(10) == 0 ? "" : "=") +
                          values[next(values.size())]);
    }
    absl::StatusOr<Config> c = ParseConfig("", overrides);
    if (c.ok()) {
      Config copy = *c;
      (void)copy.ValidateLayout(1 + static_cast<int64_t>(next(16)));
      absl::StatusOr<Config> back = ParseConfig(c->ToYaml(), {});
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_EQ(*back, *c);
    } else {
      EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

}  // namespace
}  // namespace lattice
