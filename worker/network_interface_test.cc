#include "worker/network_interface.h"

#include <gtest/gtest.h>

namespace chord {
namespace {

TEST(NetworkInterfaceTest, LoopbackHoldsTheLoopbackAddress) {
  absl::StatusOr<std::string> name = InterfaceHolding("127.0.0.1");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, "lo");
}

TEST(NetworkInterfaceTest, AddressesNoInterfaceHoldsAreNotFound) {
  EXPECT_TRUE(absl::IsNotFound(InterfaceHolding("*").status()));
  EXPECT_TRUE(absl::IsNotFound(InterfaceHolding("0.0.0.0").status()));
  EXPECT_TRUE(absl::IsNotFound(InterfaceHolding("203.0.113.77").status()));  // TEST-NET-3
  EXPECT_TRUE(absl::IsNotFound(InterfaceHolding("not an address").status()));
}

TEST(NetworkInterfaceTest, EndpointHost) {
  EXPECT_EQ(EndpointHost("tcp://10.0.0.2:5600"), "10.0.0.2");
  EXPECT_EQ(EndpointHost("tcp://127.0.0.1:0"), "127.0.0.1");
  EXPECT_EQ(EndpointHost("ipc:///tmp/x"), "");
}

}  // namespace
}  // namespace chord
