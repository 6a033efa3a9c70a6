#include "worker/kv_cache.h"

#include <cstring>
#include <random>
#include <vector>

#include "common/quant/quant.h"
#include "gtest/gtest.h"

namespace chord {
namespace {

KvCacheShape Shape(int64_t kv_tokens, DType type = DType::kF32) {
  KvCacheShape shape;
  shape.n_layers = 3;
  shape.n_slots = 4;
  shape.n_ctx = 40;
  shape.n_embd_kv = 8;  // 2 kv heads of 4
  shape.type = type;
  shape.kv_tokens = kv_tokens;
  shape.page_size = 8;
  return shape;
}

std::vector<float> RandomRow(std::mt19937& rng, int64_t n) {
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  std::vector<float> row(static_cast<size_t>(n));
  for (float& v : row) v = uniform(rng);
  return row;
}

TEST(KvCacheTest, PoolSizeFollowsKvTokensInWholePages) {
  auto full = KvCache::Create(Shape(0));
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->total_pages(), 4 * 5);  // 4 slots x ceil(40 / 8)
  auto shared = KvCache::Create(Shape(44));
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ(shared->total_pages(), 6);
  EXPECT_EQ(shared->bytes(), 6u * 3 * 2 * 8 * 8 * 4);  // pages x layers x (K, V) x rows x row bytes
  EXPECT_EQ(KvCache::Create(Shape(32)).status().code(), absl::StatusCode::kInvalidArgument)
      << "a pool below one context";
  KvCacheShape odd = Shape(0);
  odd.page_size = 12;
  EXPECT_EQ(KvCache::Create(odd).status().code(), absl::StatusCode::kInvalidArgument);
}

// Rows written through interleaved, growing slots read back from the right
// place, for every layer, slot and position, in both cache types.
TEST(KvCacheTest, PagedRowsReadBackWhatWasStored) {
  for (DType type : {DType::kF32, DType::kF16}) {
    auto cache = KvCache::Create(Shape(4 * 40, type));
    ASSERT_TRUE(cache.ok());
    std::mt19937 rng(11);
    // keys[layer][slot][position]
    std::vector<std::vector<std::vector<std::vector<float>>>> keys(3), values(3);
    for (int l = 0; l < 3; ++l) {
      keys[l].resize(4);
      values[l].resize(4);
    }
    // Slots grow in turns by different amounts, so their pages interleave in the pool.
    const int64_t grow[4] = {3, 9, 1, 5};
    std::vector<int64_t> length(4, 0);
    for (int round = 0; round < 4; ++round) {
      for (int64_t slot = 0; slot < 4; ++slot) {
        const SlotExtent extent{slot, false, length[slot] + grow[slot]};
        ASSERT_TRUE(cache->Reserve({&extent, 1}).ok());
        for (int64_t p = length[slot]; p < extent.end; ++p) {
          for (int l = 0; l < 3; ++l) {
            keys[l][slot].push_back(RandomRow(rng, 8));
            values[l][slot].push_back(RandomRow(rng, 8));
            cache->Store(l, slot, p, keys[l][slot].back().data(), values[l][slot].back().data());
          }
        }
        length[slot] = extent.end;
      }
    }
    for (int l = 0; l < 3; ++l) {
      for (int64_t slot = 0; slot < 4; ++slot) {
        const kernels::KvView k = cache->Keys(l, slot);
        const kernels::KvView v = cache->Values(l, slot);
        for (int64_t p = 0; p < length[slot]; ++p) {
          for (int i = 0; i < 8; ++i) {
            float key, value;
            if (type == DType::kF32) {
              std::memcpy(&key, k.Row(p) + 4 * i, 4);
              std::memcpy(&value, v.Row(p) + 4 * i, 4);
              ASSERT_EQ(key, keys[l][slot][p][i]);
              ASSERT_EQ(value, values[l][slot][p][i]);
            } else {
              uint16_t half_key, half_value;
              std::memcpy(&half_key, k.Row(p) + 2 * i, 2);
              std::memcpy(&half_value, v.Row(p) + 2 * i, 2);
              ASSERT_EQ(half_key, quant::FloatToHalf(keys[l][slot][p][i]));
              ASSERT_EQ(half_value, quant::FloatToHalf(values[l][slot][p][i]));
            }
          }
        }
      }
    }
  }
}

TEST(KvCacheTest, ReserveIsAllOrNothingAndRestartsGiveTheirPagesBack) {
  auto cache = KvCache::Create(Shape(48));  // 6 pages of 8
  ASSERT_TRUE(cache.ok());
  const SlotExtent first[] = {{0, false, 24}, {1, false, 9}};  // 3 + 2 pages
  ASSERT_TRUE(cache->Reserve(first).ok());
  EXPECT_EQ(cache->free_pages(), 1);
  // 1 more page for slot 1 and 1 for slot 2: one too many; nothing changes.
  const SlotExtent too_many[] = {{1, false, 17}, {2, false, 1}};
  EXPECT_EQ(cache->Reserve(too_many).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache->free_pages(), 1);
  EXPECT_EQ(cache->slot_pages(1), 2);
  EXPECT_EQ(cache->slot_pages(2), 0);
  // Restarting slot 0 (a new sequence there) returns its 3 pages first.
  const SlotExtent restart[] = {{0, true, 8}, {2, false, 24}};
  ASSERT_TRUE(cache->Reserve(restart).ok());
  EXPECT_EQ(cache->slot_pages(0), 1);
  EXPECT_EQ(cache->slot_pages(2), 3);
  EXPECT_EQ(cache->free_pages(), 0);
  cache->Release(2);
  EXPECT_EQ(cache->free_pages(), 3);
  // Reserving fewer positions than held keeps the pages.
  const SlotExtent shrink{1, false, 1};
  ASSERT_TRUE(cache->Reserve({&shrink, 1}).ok());
  EXPECT_EQ(cache->slot_pages(1), 2);
  EXPECT_EQ(cache->ReserveAll().code(), absl::StatusCode::kResourceExhausted);
}

// Attention reads a paged cache exactly as it reads the same rows stored contiguously.
TEST(KvCacheTest, AttentionOverPagesEqualsAttentionOverContiguousRows) {
  KvCacheShape shape = Shape(4 * 40);
  shape.n_layers = 1;
  auto cache = KvCache::Create(shape);
  ASSERT_TRUE(cache.ok());
  std::mt19937 rng(5);
  // Slot 1 takes pages between slot 3's, so its pages are not in order in the pool.
  std::vector<float> contiguous_k, contiguous_v;
  for (int64_t p = 0; p < 37; ++p) {
    for (int64_t slot : {3, 1}) {
      const SlotExtent extent{slot, false, p + 1};
      ASSERT_TRUE(cache->Reserve({&extent, 1}).ok());
      const std::vector<float> k = RandomRow(rng, 8), v = RandomRow(rng, 8);
      cache->Store(0, slot, p, k.data(), v.data());
      if (slot == 1) {
        contiguous_k.insert(contiguous_k.end(), k.begin(), k.end());
        contiguous_v.insert(contiguous_v.end(), v.begin(), v.end());
      }
    }
  }
  const kernels::AttentionShape attention{4, 2, 4};
  const std::vector<float> q = RandomRow(rng, 16);
  const kernels::KvView flat_k{DType::kF32, reinterpret_cast<const uint8_t*>(contiguous_k.data()), 32};
  const kernels::KvView flat_v{DType::kF32, reinterpret_cast<const uint8_t*>(contiguous_v.data()), 32};
  for (int64_t n_kv : {1, 8, 9, 37}) {
    std::vector<float> paged(16, 0.0f), flat(16, 0.0f), scores(40);
    for (int head = 0; head < 4; ++head) {
      kernels::AttendOneToken(attention, q.data(), cache->Keys(0, 1), cache->Values(0, 1), n_kv, head,
                              scores.data(), paged.data());
      kernels::AttendOneToken(attention, q.data(), flat_k, flat_v, n_kv, head, scores.data(), flat.data());
    }
    EXPECT_EQ(paged, flat) << n_kv << " positions";
  }
}

}  // namespace
}  // namespace chord
