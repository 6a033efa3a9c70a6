#include "worker/fetched_tensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/model/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/thread_pool.h"
#include "worker/kv_cache.h"
#include "worker/models/llama.h"

namespace chord {
namespace {

using ::testing::HasSubstr;

class FetchedTensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(CHORD_DEFAULT_MODEL))
      GTEST_SKIP() << "no model at " << CHORD_DEFAULT_MODEL;
    auto file = gguf::GgufFile::Open(CHORD_DEFAULT_MODEL);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = *std::move(file);
    const auto bytes = file_->bytes().first(file_->data_offset());
    auto header = gguf::GgufFile::ParseHeader(std::string(bytes.begin(), bytes.end()));
    ASSERT_TRUE(header.ok()) << header.status();
    header_ = *std::move(header);
    auto config = ReadModelConfig(*header_);
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
  }

  // Reads tensor bytes from the mapped file, as the loader would send them.
  FetchedTensors::FetchFn FromFile() {
    return [this](const gguf::TensorInfo& info, uint8_t* out) {
      const gguf::TensorInfo* stored = file_->FindTensor(info.name);
      if (stored == nullptr) return absl::NotFoundError(info.name);
      std::memcpy(out, stored->data, stored->n_bytes);
      ++fetched_;
      return absl::OkStatus();
    };
  }

  std::unique_ptr<gguf::GgufFile> file_;
  std::unique_ptr<gguf::GgufFile> header_;
  ModelConfig config_;
  int fetched_ = 0;
};

TEST_F(FetchedTensorsTest, HoldsAlignedCopiesOfTheNamedTensors) {
  const std::vector<std::string> names = LlamaStage::TensorNames(config_, {1, 3});
  auto tensors = FetchedTensors::Fetch(*header_, names, FromFile());
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_EQ(fetched_, static_cast<int>(names.size()));
  EXPECT_EQ((*tensors)->size(), names.size());
  uint64_t sum = 0;
  for (const std::string& name : names) {
    const gguf::TensorInfo* got = (*tensors)->Find(name);
    const gguf::TensorInfo* want = file_->FindTensor(name);
    ASSERT_NE(got, nullptr) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got->data) % FetchedTensors::kAlignment, 0u) << name;
    EXPECT_EQ(got->type, want->type);
    EXPECT_EQ(got->dims, want->dims);
    ASSERT_EQ(got->n_bytes, want->n_bytes);
    EXPECT_EQ(std::memcmp(got->data, want->data, want->n_bytes), 0) << name;
    sum += want->n_bytes;
  }
  EXPECT_GE((*tensors)->bytes(), sum);
  EXPECT_LT((*tensors)->bytes(), sum + names.size() * FetchedTensors::kAlignment);
  auto needed = FetchedTensors::BytesNeeded(*header_, names);
  ASSERT_TRUE(needed.ok());
  EXPECT_EQ(*needed, (*tensors)->bytes());
  EXPECT_EQ((*tensors)->Find("blk.0.attn_q.weight"), nullptr);  // not in the range
  EXPECT_EQ((*tensors)->Find("no such tensor"), nullptr);
}

TEST_F(FetchedTensorsTest, ReportsUnknownNamesAndFetchErrors) {
  const std::vector<std::string> unknown = {"token_embd.weight", "blk.99.attn_q.weight"};
  auto missing = FetchedTensors::Fetch(*header_, unknown, FromFile());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("blk.99.attn_q.weight"));
  EXPECT_EQ(FetchedTensors::BytesNeeded(*header_, unknown).status().code(),
            absl::StatusCode::kNotFound);

  const std::vector<std::string> names = LlamaStage::TensorNames(config_, {0, 1});
  auto failed = FetchedTensors::Fetch(*header_, names, [](const gguf::TensorInfo&, uint8_t*) {
    return absl::DataLossError("checksum keeps failing");
  });
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kDataLoss);
}

// Records what it is asked to pin (the CUDA build's pinner page-locks it).
class RecordingPinner final : public MemoryPinner {
 public:
  absl::Status Pin(void* data, uint64_t bytes) const override {
    if (fail) return absl::ResourceExhaustedError("cannot lock that much memory");
    pinned.emplace_back(data, bytes);
    return absl::OkStatus();
  }
  void Unpin(void* data) const override { unpinned.push_back(data); }

  bool fail = false;
  mutable std::vector<std::pair<void*, uint64_t>> pinned;
  mutable std::vector<void*> unpinned;
};

TEST_F(FetchedTensorsTest, PinsItsMemoryBeforeFillingItAndUnpinsBeforeFreeing) {
  const std::vector<std::string> names = LlamaStage::LayerTensorNames(1);
  RecordingPinner pinner;
  const auto fetch = [&](std::span<const gguf::TensorRead> reads) {
    EXPECT_EQ(pinner.pinned.size(), 1u) << "filled before it was pinned";
    for (const gguf::TensorRead& read : reads) {
      std::memcpy(read.out, file_->FindTensor(read.info->name)->data, read.info->n_bytes);
    }
    return absl::OkStatus();
  };
  auto tensors = FetchedTensors::FetchBatch(*header_, names, fetch, &pinner);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_TRUE((*tensors)->pinned());
  ASSERT_EQ(pinner.pinned.size(), 1u);
  EXPECT_EQ(pinner.pinned[0].first, (*tensors)->Find(names[0])->data);
  EXPECT_EQ(pinner.pinned[0].second, (*tensors)->bytes());
  EXPECT_TRUE(pinner.unpinned.empty());
  void* memory = pinner.pinned[0].first;
  tensors->reset();
  EXPECT_EQ(pinner.unpinned, std::vector<void*>{memory});
}

TEST_F(FetchedTensorsTest, APinningFailureIsTheFetchsError) {
  RecordingPinner pinner;
  pinner.fail = true;
  bool fetched = false;
  auto tensors = FetchedTensors::FetchBatch(
      *header_, LlamaStage::LayerTensorNames(0),
      [&](std::span<const gguf::TensorRead>) {
        fetched = true;
        return absl::OkStatus();
      },
      &pinner);
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(fetched);
  EXPECT_TRUE(pinner.unpinned.empty());
}

// A stage built over fetched tensors computes the same bits as one over the mapped file.
TEST_F(FetchedTensorsTest, AStageOverFetchedTensorsMatchesTheMappedFile) {
  const LayerRange all{0, config_.n_layer};
  auto fetched = FetchedTensors::Fetch(*header_, LlamaStage::TensorNames(config_, all), FromFile());
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  ThreadPool pool(2);
  const GgufTensorSource mapped(*file_);
  std::vector<float> logits[2];
  std::mt19937 rng(7);
  std::vector<int32_t> tokens(6);
  for (int32_t& t : tokens)
    t = static_cast<int32_t>(rng() % static_cast<uint32_t>(config_.n_vocab));
  const TensorSource* sources[2] = {fetched->get(), &mapped};
  for (int s = 0; s < 2; ++s) {
    auto stage = LlamaStage::Load(*sources[s], config_, all, pool);
    ASSERT_TRUE(stage.ok()) << stage.status();
    auto cache = KvCache::Create({config_.n_layer, 1, 16, config_.n_embd_kv(), DType::kF32});
    ASSERT_TRUE(cache.ok());
    ASSERT_TRUE(cache->ReserveAll().ok());
    std::vector<float> x(tokens.size() * static_cast<size_t>(config_.n_embd));
    std::vector<BatchToken> batch;
    for (size_t i = 0; i < tokens.size(); ++i) batch.push_back({0, static_cast<int64_t>(i)});
    ASSERT_TRUE((*stage)->Embed(tokens, x.data()).ok());
    ASSERT_TRUE((*stage)->RunLayers(batch, x.data(), *cache).ok());
    logits[s].resize(static_cast<size_t>(config_.n_vocab));
    ASSERT_TRUE((*stage)
                    ->Logits(x.data() + (tokens.size() - 1) * config_.n_embd, 1, logits[s].data())
                    .ok());
  }
  ASSERT_EQ(logits[0].size(), logits[1].size());
  EXPECT_EQ(std::memcmp(logits[0].data(), logits[1].data(), logits[0].size() * sizeof(float)), 0);
  float spread = 0.0f;
  for (float v : logits[0]) spread = std::max(spread, std::abs(v - logits[0][0]));
  EXPECT_GT(spread, 0.0f);  // real logits, not a constant
}

}  // namespace
}  // namespace chord
