// The CPU stage's answer to a logits request: every row's logits, and the
// greedy token of each row the caller does not sample itself (rows marked
// `full` are skipped); requests whose entries are not one a row are refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "common/gguf/gguf_file.h"
#include "common/model/model_config.h"
#include "kernels/cpu/thread_pool.h"
#include "worker/models/tensor_source.h"
#include "worker/sampler.h"
#include "worker/stage_compute.h"

namespace chord {
namespace {

TEST(CpuStageComputeTest, GreedyTokensForTheRowsTheCallerDoesNotSample) {
  if (!std::filesystem::exists(CHORD_DEFAULT_MODEL)) {
    GTEST_SKIP() << "no model at " << CHORD_DEFAULT_MODEL;
  }
  auto file = gguf::GgufFile::Open(CHORD_DEFAULT_MODEL);
  ASSERT_TRUE(file.ok()) << file.status();
  auto config = ReadModelConfig(**file);
  ASSERT_TRUE(config.ok()) << config.status();
  const GgufTensorSource tensors(**file);
  ThreadPool pool(2);
  StageComputeOptions options;
  options.range = {0, config->n_layer};
  options.kv = {config->n_layer, 1, 16, config->n_embd_kv(), DType::kF32};
  auto compute = MakeCpuStageCompute(tensors, *config, options, pool, nullptr);
  ASSERT_TRUE(compute.ok()) << compute.status();

  const int64_t n_rows = 3, n_embd = config->n_embd;
  const auto n_vocab = static_cast<size_t>(config->n_vocab);
  std::vector<float> x(static_cast<size_t>(n_rows * n_embd));
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : x) v = dist(rng);
  std::vector<float> logits(static_cast<size_t>(n_rows) * n_vocab);
  const std::vector<uint8_t> full = {0, 1, 0};  // row 1: the caller samples it
  constexpr int32_t kUntouched = -7;
  std::vector<int32_t> greedy(static_cast<size_t>(n_rows), kUntouched);
  ASSERT_TRUE((*compute)->Logits(x.data(), n_rows, {logits.data(), full, greedy}).ok());
  for (int64_t r = 0; r < n_rows; ++r) {
    const std::span<const float> row(logits.data() + r * n_vocab, n_vocab);
    if (full[static_cast<size_t>(r)] != 0) {
      EXPECT_EQ(greedy[static_cast<size_t>(r)], kUntouched) << r;
    } else {
      EXPECT_EQ(greedy[static_cast<size_t>(r)], Sampler::GreedyToken(row)) << r;
    }
  }
  // Without `full`, every row's greedy token.
  std::vector<int32_t> all(static_cast<size_t>(n_rows), kUntouched);
  ASSERT_TRUE((*compute)->Logits(x.data(), n_rows, {logits.data(), {}, all}).ok());
  EXPECT_EQ(all[1], Sampler::GreedyToken({logits.data() + n_vocab, n_vocab}));

  const std::vector<uint8_t> short_full = {0, 1};
  EXPECT_EQ((*compute)->Logits(x.data(), n_rows, {logits.data(), short_full, greedy}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*compute)
                ->Logits(x.data(), n_rows, {logits.data(), full, std::span(greedy).first(2)})
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chord
