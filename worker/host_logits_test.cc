#include "worker/host_logits.h"

#include <gtest/gtest.h>

#include <map>

namespace chord {
namespace {

// Records what is pinned; refuses when told to (as cudaHostRegister can).
class RecordingPinner final : public MemoryPinner {
 public:
  absl::Status Pin(void* data, uint64_t bytes) const override {
    if (refuse) return absl::ResourceExhaustedError("no page-locked memory left");
    pinned[data] = bytes;
    return absl::OkStatus();
  }
  void Unpin(void* data) const override { pinned.erase(data); }

  bool refuse = false;
  mutable std::map<void*, uint64_t> pinned;
};

TEST(HostLogitsTest, GrowsAndKeepsOnePinnedAllocation) {
  RecordingPinner pinner;
  {
    HostLogits logits(&pinner);
    float* first = logits.Reserve(1000);
    ASSERT_NE(first, nullptr);
    EXPECT_TRUE(logits.pinned());
    EXPECT_EQ(pinner.pinned.at(first), 1000 * sizeof(float));
    for (int i = 0; i < 1000; ++i) first[i] = static_cast<float>(i);
    EXPECT_EQ(logits.Reserve(600), first);  // smaller: the same memory
    float* grown = logits.Reserve(5000);
    grown[4999] = 1.0f;
    ASSERT_EQ(pinner.pinned.size(), 1u);  // the old one unpinned before it was freed
    EXPECT_EQ(pinner.pinned.at(grown), 5000 * sizeof(float));
    EXPECT_EQ(logits.data(), grown);
  }
  EXPECT_TRUE(pinner.pinned.empty());
}

TEST(HostLogitsTest, StaysPageableWhenPinningIsRefusedOrAbsent) {
  RecordingPinner pinner;
  pinner.refuse = true;
  HostLogits refused(&pinner);
  float* data = refused.Reserve(100);
  ASSERT_NE(data, nullptr);
  data[99] = 2.0f;
  EXPECT_FALSE(refused.pinned());
  HostLogits plain;
  ASSERT_NE(plain.Reserve(100), nullptr);
  EXPECT_FALSE(plain.pinned());
}

}  // namespace
}  // namespace chord
