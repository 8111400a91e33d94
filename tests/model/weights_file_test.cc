#include "model/weights_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/config.h"
#include "runtime/io/safetensors.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

class WeightsFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("lattice_weights_file_", ::getpid());
    std::filesystem::create_directories(dir_);
    auto cfg = LoadConfig(std::string(LATTICE_SOURCE_DIR) + "/configs/tiny-gpt2.yaml", {});
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    config_ = cfg->model;
    auto model = Decoder::Create(config_, 1);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    model_->InitializeWeights(3);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // The model's parameters as (name, tensor) pairs, each a copy that a test may corrupt.
  std::vector<std::pair<std::string, Tensor>> Tensors() const {
    std::vector<std::pair<std::string, Tensor>> out;
    for (const Parameter& p : model_->params().params()) out.emplace_back(p.name, p.value.Clone());
    return out;
  }

  std::filesystem::path dir_;
  ModelConfig config_;
  std::unique_ptr<Decoder> model_;
};

TEST_F(WeightsFileTest, RoundTripsAndRecordsTheArchitecture) {
  ASSERT_TRUE(SaveWeights(*model_, Path("w.safetensors")).ok());
  auto file = SafetensorsFile::Open(Path("w.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("arch"), "gpt2");
  EXPECT_EQ((*file)->metadata().at("vocab_size"), "257");
  EXPECT_EQ((*file)->metadata().at("padded_vocab"), std::to_string(config_.padded_vocab()));
  auto read = ReadWeights(config_, Path("w.safetensors"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->size(), model_->params().params().size());
  EXPECT_TRUE(LoadWeights(*model_, Path("w.safetensors")).ok());
}

// `lattice eval` on weights holding a NaN printed "loss": null and exited 0. Both readers now
// refuse them, naming the file, the tensor and the first bad element.
TEST_F(WeightsFileTest, NonFiniteValuesAreRejected) {
  const std::string path = Path("nan.safetensors");
  auto tensors = Tensors();
  const std::string name = tensors[1].first;
  Tensor& t = tensors[1].second;
  ASSERT_GE(t.numel(), 8);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    SCOPED_TRACE(bad);
    t.f32()[5] = bad;
    ASSERT_TRUE(SaveWeights(config_, tensors, path).ok());
    const std::string what = std::isnan(bad) ? "NaN" : bad > 0 ? "+Inf" : "-Inf";
    const Tensor before = model_->params().params()[1].value.Clone();
    for (const absl::Status& s :
         {ReadWeights(config_, path).status(), LoadWeights(*model_, path)}) {
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
      EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(path, ": tensor '", name, "' holds ", what,
                                                      " at element 5 (index [")));
    }
    // The failed load changed nothing.
    EXPECT_EQ(std::memcmp(before.raw(), model_->params().params()[1].value.raw(), before.nbytes()),
              0);
  }
  // A bf16 file is checked too (after conversion: the bad value survives it).
  tensors = Tensors();
  std::vector<std::pair<std::string, Tensor>> bf16;
  for (auto& [n, f] : tensors) {
    Tensor h = Tensor::Zeros(f.shape(), DType::kBF16);
    if (n == name) f.f32()[f.numel() - 1] = std::numeric_limits<float>::quiet_NaN();
    ASSERT_TRUE(ConvertInto(f, h).ok());
    bf16.emplace_back(n, h);
  }
  ASSERT_TRUE(SaveWeights(config_, bf16, path).ok());
  const absl::Status s = LoadWeights(*model_, path);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("'", name, "' holds NaN at element ",
                                                  tensors[1].second.numel() - 1)))
      << s;
}

TEST_F(WeightsFileTest, MetadataOfAnotherModelIsRejectedNamingBothValues) {
  ModelConfig llama = config_;
  llama.arch = Arch::kLlama;
  ASSERT_TRUE(SaveWeights(llama, Tensors(), Path("arch.safetensors")).ok());
  absl::Status s = LoadWeights(*model_, Path("arch.safetensors"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(Path("arch.safetensors") +
                                     ": the weights were saved for arch = llama (__metadata__) "
                                     "but model.arch is gpt2"));

  ModelConfig vocab = config_;
  vocab.vocab_size = 300;  // the same padded shapes (320, a multiple of 64), another vocabulary
  ASSERT_EQ(vocab.padded_vocab(), config_.padded_vocab());
  ASSERT_TRUE(SaveWeights(vocab, Tensors(), Path("vocab.safetensors")).ok());
  s = ReadWeights(config_, Path("vocab.safetensors")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("saved for vocab_size = 300 (__metadata__) but "
                                     "model.vocab_size is 257"));

  // A file from a newer lattice is refused rather than misread.
  std::map<std::string, std::string> meta = {{"lattice_format_version", "2"}};
  ASSERT_TRUE(WriteSafetensors(Path("v2.safetensors"), Tensors(), meta).ok());
  s = LoadWeights(*model_, Path("v2.safetensors"));
  EXPECT_THAT(s.message(), HasSubstr("lattice_format_version 2 in __metadata__; this build reads "
                                     "version 1"));
}

// Files without lattice's metadata (safetensors.torch.save_file, other tools) load when the
// shapes match: only the keys that are present are compared.
TEST_F(WeightsFileTest, FilesWithoutLatticeMetadataLoad) {
  ASSERT_TRUE(WriteSafetensors(Path("plain.safetensors"), Tensors()).ok());
  auto file = SafetensorsFile::Open(Path("plain.safetensors"));
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata().count("arch"), 0u);
  EXPECT_TRUE(LoadWeights(*model_, Path("plain.safetensors")).ok());
  EXPECT_TRUE(ReadWeights(config_, Path("plain.safetensors")).ok());
}

}  // namespace
}  // namespace lattice
