#include "worker/shard/shard_cache.h"

#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/model/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/thread_pool.h"
#include "worker/kv_cache.h"

namespace chord {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The default model's layers (stories260K: 5 layers of 77,536 bytes each),
// fetched from the mapped file the way the worker fetches them from a loader.
class ShardCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(CHORD_DEFAULT_MODEL))
      GTEST_SKIP() << "no model at " << CHORD_DEFAULT_MODEL;
    auto file = gguf::GgufFile::Open(CHORD_DEFAULT_MODEL);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = *std::move(file);
    auto config = ReadModelConfig(*file_);
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    for (int64_t l = 0; l < config_.n_layer; ++l) {
      auto bytes = FetchedTensors::BytesNeeded(*file_, LlamaStage::LayerTensorNames(l));
      ASSERT_TRUE(bytes.ok());
      layer_bytes_.push_back(*bytes);
    }
    layer_ = layer_bytes_[0];
  }

  // Fetches from the file; `fail(layer, attempt)` may make a fetch fail.
  ShardCache::FetchFn FromFile(std::function<bool(int64_t, int)> fail = nullptr) {
    return
        [this, fail](int64_t layer,
                     const std::atomic<bool>&) -> absl::StatusOr<std::unique_ptr<FetchedTensors>> {
          int attempt;
          {
            std::lock_guard<std::mutex> lock(mutex_);
            fetch_order_.push_back(layer);
            attempt = ++attempts_[layer];
          }
          if (fail && fail(layer, attempt)) return absl::DataLossError("chunk fails its checksum");
          return FetchedTensors::Fetch(*file_, LlamaStage::LayerTensorNames(layer),
                                       [this](const gguf::TensorInfo& info, uint8_t* out) {
                                         std::memcpy(out, file_->FindTensor(info.name)->data,
                                                     info.n_bytes);
                                         return absl::OkStatus();
                                       });
        };
  }

  std::unique_ptr<ShardCache> MakeCache(uint64_t capacity, int depth,
                                        ShardCache::FetchFn fetch = nullptr) {
    ShardCacheOptions options;
    options.capacity_bytes = capacity;
    options.prefetch_depth = depth;
    auto cache = ShardCache::Create({0, config_.n_layer}, layer_bytes_, options,
                                    fetch ? std::move(fetch) : FromFile());
    EXPECT_TRUE(cache.ok()) << cache.status();
    return cache.ok() ? *std::move(cache) : nullptr;
  }

  // Runs `steps` passes over the layers as a stage does, checking each
  // acquired layer's bytes against the file.
  void Scan(ShardCache& cache, int steps) {
    for (int step = 0; step < steps; ++step) {
      for (int64_t l = 0; l < config_.n_layer; ++l) {
        auto tensors = cache.Acquire(l);
        ASSERT_TRUE(tensors.ok()) << tensors.status();
        const std::string name = LayerTensorName(l, "ffn_down");
        const gguf::TensorInfo* got = (*tensors)->Find(name);
        ASSERT_NE(got, nullptr);
        ASSERT_EQ(std::memcmp(got->data, file_->FindTensor(name)->data, got->n_bytes), 0);
        const ShardCacheStats stats = cache.Stats();
        ASSERT_LE(stats.bytes_reserved, capacity_);
        cache.Release(l);
      }
    }
  }
  uint64_t capacity_ = 0;
  std::unique_ptr<gguf::GgufFile> file_;
  ModelConfig config_;
  std::vector<uint64_t> layer_bytes_;
  uint64_t layer_ = 0;
  std::mutex mutex_;
  std::vector<int64_t> fetch_order_;
  std::map<int64_t, int> attempts_;
};

TEST_F(ShardCacheTest, RefusesACapacityBelowOneLayer) {
  ShardCacheOptions options;
  options.capacity_bytes = layer_ - 1;
  auto cache = ShardCache::Create({0, config_.n_layer}, layer_bytes_, options, FromFile());
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cache.status().message(), HasSubstr("cannot hold one layer"));
}

TEST_F(ShardCacheTest, NeverExceedsItsBudgetAndServesTheRightBytes) {
  for (const int depth : {0, 1, 2, -1}) {
    for (const uint64_t layers : {1, 2, 3, 4}) {
      capacity_ = layers * layer_ + layer_ / 2;  // room left over that fits no layer
      auto cache = MakeCache(capacity_, depth);
      ASSERT_NE(cache, nullptr);
      Scan(*cache, 4);
      const ShardCacheStats stats = cache->Stats();
      EXPECT_LE(stats.peak_bytes_reserved, capacity_) << "depth " << depth << ", " << layers;
      EXPECT_EQ(stats.hits + stats.misses, 4u * config_.n_layer);
    }
  }
}

TEST_F(ShardCacheTest, KeepsAFixedSetResidentAndStreamsTheRest) {
  // 3 layers fit; the window takes 2 (the layer computing and one ahead), so
  // one slot keeps a layer that is not streamed in that pass.
  capacity_ = 3 * layer_;
  auto cache = MakeCache(capacity_, 1);
  ASSERT_TRUE(cache->Fill(nullptr).ok());
  Scan(*cache, 1);
  const ShardCacheStats first = cache->Stats();
  Scan(*cache, 10);
  const ShardCacheStats later = cache->Stats();
  EXPECT_EQ(later.hits + later.misses - first.hits - first.misses, 10u * config_.n_layer);
  // At most n_layer - 1 fetches per pass (LRU would fetch all n_layer), at
  // least n_layer - 3 (only 3 fit).
  EXPECT_LE(later.fetches - first.fetches, 10u * (config_.n_layer - 1));
  EXPECT_GE(later.fetches - first.fetches, 10u * (config_.n_layer - 3));
  EXPECT_LE(later.peak_bytes_reserved, capacity_);
}

TEST_F(ShardCacheTest, PrefetchesAcrossTheWrapFromTheLastLayerToTheFirst) {
  capacity_ = 2 * layer_;
  auto cache = MakeCache(capacity_, 1);
  const int64_t last = config_.n_layer - 1;
  for (int64_t l = 0; l <= last; ++l) {
    ASSERT_TRUE(cache->Acquire(l).ok());
    cache->Release(l);
  }
  // Acquiring the last layer asked for the first one of the next step.
  for (int i = 0; i < 200 && cache->Stats().fetches < static_cast<uint64_t>(last + 2); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ASSERT_FALSE(fetch_order_.empty());
    EXPECT_EQ(fetch_order_.back(), 0);
  }
  const ShardCacheStats before = cache->Stats();
  ASSERT_TRUE(cache->Acquire(0).ok());
  cache->Release(0);
  EXPECT_EQ(cache->Stats().hits, before.hits + 1);
  EXPECT_EQ(cache->Stats().sync_loads, before.sync_loads);
}

TEST_F(ShardCacheTest, PrefetchOffLoadsEveryAbsentLayerOnDemand) {
  capacity_ = 2 * layer_;
  auto cache = MakeCache(capacity_, 0);
  Scan(*cache, 3);
  const ShardCacheStats stats = cache->Stats();
  EXPECT_EQ(stats.prefetch_depth, 0);
  EXPECT_EQ(stats.sync_loads, stats.misses);
  EXPECT_EQ(stats.fetches, stats.misses);  // nothing fetched that was not asked for
  // One layer stays: the furthest-next-use victim is always the one just used.
  EXPECT_GE(stats.hits, 2u);
}

TEST_F(ShardCacheTest, FillLoadsLayersInOrderWhileTheyFitAndReportsProgress) {
  capacity_ = 3 * layer_ + 7;
  auto cache = MakeCache(capacity_, 1);
  std::vector<int64_t> progress;
  ASSERT_TRUE(cache
                  ->Fill([&](int64_t done, int64_t total) {
                    EXPECT_EQ(total, 3);
                    progress.push_back(done);
                  })
                  .ok());
  EXPECT_THAT(progress, ElementsAre(1, 2, 3));
  std::lock_guard<std::mutex> lock(mutex_);
  EXPECT_THAT(fetch_order_, ElementsAre(0, 1, 2));
}

TEST_F(ShardCacheTest, AFailedFetchIsAskedAgain) {
  capacity_ = 2 * layer_;
  auto cache = MakeCache(capacity_, 1, FromFile([](int64_t layer, int attempt) {
                           return layer == 2 && attempt <= 2;  // fails twice, then works
                         }));
  Scan(*cache, 2);
  const ShardCacheStats stats = cache->Stats();
  EXPECT_EQ(stats.failed_fetches, 2u);
  EXPECT_LE(stats.peak_bytes_reserved, capacity_);
}

TEST_F(ShardCacheTest, AcquireFailsOnceALayerKeepsFailing) {
  capacity_ = 2 * layer_;
  auto cache = MakeCache(capacity_, 1, FromFile([](int64_t layer, int) { return layer == 3; }));
  for (int64_t l = 0; l < 3; ++l) {
    ASSERT_TRUE(cache->Acquire(l).ok());
    cache->Release(l);
  }
  auto failed = cache->Acquire(3);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(failed.status().message(), HasSubstr("layer 3"));
  EXPECT_THAT(failed.status().message(), HasSubstr("after 3 attempts"));
  // The rest of the shard still works, and the budget held throughout.
  ASSERT_TRUE(cache->Acquire(4).ok());
  cache->Release(4);
  EXPECT_LE(cache->Stats().peak_bytes_reserved, capacity_);
  EXPECT_EQ(cache->Stats().bytes_reserved <= capacity_, true);
}

TEST_F(ShardCacheTest, MovingTheWindowOrClosingCancelsFetchesNoLongerNeeded) {
  capacity_ = 2 * layer_;
  ShardCache::FetchFn from_file = FromFile();
  std::atomic<int> blocked{0};
  // Layers 1 and 4 hang until cancelled; the others come from the file.
  auto cache = MakeCache(
      capacity_, 1,
      [&](int64_t layer,
          const std::atomic<bool>& cancel) -> absl::StatusOr<std::unique_ptr<FetchedTensors>> {
        if (layer != 1 && layer != 4) return from_file(layer, cancel);
        ++blocked;
        while (!cancel.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return absl::CancelledError("not needed now");
      });
  ASSERT_TRUE(cache->Acquire(0).ok());  // the window {0, 1} starts fetching layer 1
  cache->Release(0);
  while (blocked < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const auto begin = std::chrono::steady_clock::now();
  ASSERT_TRUE(cache->Acquire(3).ok());  // {3, 4}: layer 1 is cancelled, 4 starts
  cache->Release(3);
  EXPECT_EQ(cache->Stats().failed_fetches, 0u);  // a cancel is not a failure
  while (blocked < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  cache.reset();  // cancels layer 4's fetch and joins the fetch thread
  EXPECT_LT(std::chrono::steady_clock::now() - begin, std::chrono::seconds(5));
}

// A stage whose layers stream through the cache computes exactly what the
// resident stage computes.
TEST_F(ShardCacheTest, StreamedStageMatchesTheResidentStageBitForBit) {
  ThreadPool pool(2);
  const LayerRange all{0, config_.n_layer};
  GgufTensorSource source(*file_);
  auto resident = LlamaStage::Load(source, config_, all, pool);
  ASSERT_TRUE(resident.ok()) << resident.status();
  capacity_ = 2 * layer_;
  auto cache = MakeCache(capacity_, 1);
  auto streamed = LlamaStage::Load(source, config_, all, pool, cache.get());
  ASSERT_TRUE(streamed.ok()) << streamed.status();

  KvCacheShape shape{config_.n_layer, 2, 32, config_.n_embd_kv(), DType::kF32};
  auto kv_a = KvCache::Create(shape);
  auto kv_b = KvCache::Create(shape);
  ASSERT_TRUE(kv_a.ok() && kv_b.ok());
  ASSERT_TRUE(kv_a->ReserveAll().ok() && kv_b->ReserveAll().ok());
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(3, config_.n_vocab - 1);
  for (int64_t position = 0; position < 6; ++position) {
    const std::vector<int32_t> tokens = {token(rng), token(rng)};
    const std::vector<BatchToken> batch = {{0, position}, {1, position}};
    std::vector<float> xa(2 * config_.n_embd), xb(2 * config_.n_embd);
    ASSERT_TRUE((*resident)->Embed(tokens, xa.data()).ok());
    ASSERT_TRUE((*streamed)->Embed(tokens, xb.data()).ok());
    ASSERT_TRUE((*resident)->RunLayers(batch, xa.data(), *kv_a).ok());
    ASSERT_TRUE((*streamed)->RunLayers(batch, xb.data(), *kv_b).ok());
    std::vector<float> la(2 * config_.n_vocab), lb(2 * config_.n_vocab);
    ASSERT_TRUE((*resident)->Logits(xa.data(), 2, la.data()).ok());
    ASSERT_TRUE((*streamed)->Logits(xb.data(), 2, lb.data()).ok());
    ASSERT_EQ(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)), 0)
        << "position " << position;
  }
  EXPECT_GT(cache->Stats().fetches, 0u);
}

}  // namespace
}  // namespace chord
