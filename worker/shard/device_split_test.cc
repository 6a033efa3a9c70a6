#include "worker/shard/device_split.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord {
namespace {

using ::testing::HasSubstr;

TEST(DeviceSplitTest, NothingStreamsWhenTheBudgetHoldsEverythingOrIsUnlimited) {
  const std::vector<uint64_t> layers = {100, 120, 100, 110};
  for (const uint64_t budget : {0ull, 430ull + 7ull, 1000ull}) {
    auto split = SplitForDevice({4, 8}, 7, layers, budget);
    ASSERT_TRUE(split.ok()) << split.status();
    EXPECT_EQ(split->streamed_first, 8) << budget;
    EXPECT_EQ(split->buffer_bytes, 0u);
    EXPECT_EQ(split->device_bytes, 437u);
  }
}

TEST(DeviceSplitTest, KeepsTheMostLeadingLayersThatFitBesideTwoBuffers) {
  // 10 stage bytes; layers of 100, 120, 100, 110, 90, 100.
  const std::vector<uint64_t> layers = {100, 120, 100, 110, 90, 100};
  struct Case {
    uint64_t budget;
    int64_t streamed_first;
    uint64_t buffer;
    uint64_t device;
  };
  for (const Case& c : {
           // Everything streams: two buffers of the largest (120) plus the stage tensors.
           Case{250, 0, 120, 250},
           Case{349, 0, 120, 250},
           // Layer 0 resident (100); the buffers are still sized by layer 1 (120).
           Case{350, 1, 120, 350},
           Case{449, 1, 120, 350},
           // Layers 0-1 resident (220): the largest streamed layer is now 110.
           Case{450, 2, 110, 450},
           Case{549, 2, 110, 450},
           // Layers 0-2 (320) + 2 x 110; one byte short of the whole model (630).
           Case{550, 3, 110, 550},
           Case{629, 3, 110, 550},
       }) {
    auto split = SplitForDevice({0, 6}, 10, layers, c.budget);
    ASSERT_TRUE(split.ok()) << c.budget << ": " << split.status();
    EXPECT_EQ(split->streamed_first, c.streamed_first) << c.budget;
    EXPECT_EQ(split->buffer_bytes, c.buffer) << c.budget;
    EXPECT_EQ(split->device_bytes, c.device) << c.budget;
    EXPECT_LE(split->device_bytes, c.budget);
  }
}

TEST(DeviceSplitTest, ABudgetBelowTwoBuffersNamesTheMinimum) {
  const std::vector<uint64_t> layers = {100, 120, 100};
  auto split = SplitForDevice({0, 3}, 10, layers, 249);
  EXPECT_EQ(split.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(split.status().message(), HasSubstr("at least 250 bytes"));
  EXPECT_EQ(SplitForDevice({0, 2}, 10, layers, 249).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chord
