// What of the NCCL link runs without a GPU: the environment it sets for NCCL
// and the checks Connect makes before any NCCL call. Joining a group and the
// transfers run on GPU hosts (tests/gpu/cuda_worker_test.sh, two GPUs).
#include "worker/nccl_link.h"

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

namespace chord {
namespace {

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
