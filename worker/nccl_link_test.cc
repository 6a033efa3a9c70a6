// What of the NCCL link runs without a GPU: which steps go over a link, the
// environment it sets for NCCL and the checks Connect makes before any NCCL
// call. Joining a group and the
// transfers run on GPU hosts (tests/gpu/cuda_worker_test.sh, two GPUs).
#include "worker/nccl_link.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

namespace chord {
namespace {

// A link that records nothing: rank, group size and whether it broke.
class FakeLink final : public NcclLink {
 public:
  FakeLink(int rank, int n_ranks, bool broken) : NcclLink(rank, n_ranks), broken_(broken) {}
  bool broken() const override { return broken_; }
  absl::Status Send(const float*, int64_t, void*) override { return absl::OkStatus(); }
  absl::Status Receive(float*, int64_t, void*) override { return absl::OkStatus(); }
  absl::Status ReceiveQueued(float*, int64_t, void*) override { return absl::OkStatus(); }
  absl::Status WaitFor(void*) override { return absl::OkStatus(); }

 private:
  bool broken_;
};

TEST(NcclLinkTest, OnlyStepsOfEnoughRowsGoOverAWorkingLinkToANextRank) {
  const FakeLink first(0, 2, false), last(1, 2, false), broken(0, 2, true);
  EXPECT_TRUE(SendsOverLink(&first, 16, 16));
  EXPECT_TRUE(SendsOverLink(&first, 64, 16));
  EXPECT_FALSE(SendsOverLink(&first, 1, 16));  // a decode step: ZeroMQ
  EXPECT_FALSE(SendsOverLink(&first, 15, 16));
  EXPECT_TRUE(SendsOverLink(&first, 1, 1));
  EXPECT_FALSE(SendsOverLink(&last, 64, 1));    // nobody to send to
  EXPECT_FALSE(SendsOverLink(&broken, 64, 1));  // fell back to ZeroMQ
  EXPECT_FALSE(SendsOverLink(nullptr, 64, 1));
}

TEST(NcclLinkTest, EnvironmentKeepsMulticastOffAndNamesTheInterface) {
  setenv("NCCL_NVLS_ENABLE", "1", 1);
  unsetenv("NCCL_SOCKET_IFNAME");
  SetNcclEnvironment("");
  EXPECT_STREQ(std::getenv("NCCL_NVLS_ENABLE"), "0");
  if (NcclBuilt()) {
    EXPECT_EQ(std::getenv("NCCL_SOCKET_IFNAME"), nullptr);  // none named: NCCL's own choice
    SetNcclEnvironment("lo");
    ASSERT_NE(std::getenv("NCCL_SOCKET_IFNAME"), nullptr);
    EXPECT_STREQ(std::getenv("NCCL_SOCKET_IFNAME"), "lo");
  }
}

TEST(NcclLinkTest, ConnectRefusesAPlaceOutsideTheGroupOrABadId) {
  if (!NcclBuilt()) {
    EXPECT_TRUE(absl::IsUnimplemented(NcclLink::Connect({}).status()));
    GTEST_SKIP() << "built without NCCL";
  }
  NcclLinkOptions options;
  options.unique_id = std::string(128, 'x');
  options.n_ranks = 1;  // a group of one links nothing
  EXPECT_TRUE(absl::IsInvalidArgument(NcclLink::Connect(options).status()));
  options.n_ranks = 2;
  options.rank = 2;
  EXPECT_TRUE(absl::IsInvalidArgument(NcclLink::Connect(options).status()));
  options.rank = 1;
  options.unique_id = "short";
  const absl::Status status = NcclLink::Connect(options).status();
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_NE(status.message().find("128"), std::string::npos) << status;
}

}  // namespace
}  // namespace chord
