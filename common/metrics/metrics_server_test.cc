#include "common/metrics/metrics_server.h"

#include <httplib.h>

#include "gtest/gtest.h"

namespace chord::metrics {
namespace {

TEST(MetricsServerTest, ServesTheRegistryOnGetMetrics) {
  Registry registry;
  Counter& tokens = registry.AddCounter("chord_test_tokens_total", "Tokens.").With({});
  tokens.Increment(41);
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start(registry, "127.0.0.1", 0);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);

  httplib::Client client("127.0.0.1", (*server)->port());
  httplib::Result first = client.Get("/metrics");
  ASSERT_TRUE(first) << httplib::to_string(first.error());
  EXPECT_EQ(first->status, 200);
  EXPECT_NE(first->get_header_value("Content-Type").find("text/plain; version=0.0.4"),
            std::string::npos);
  EXPECT_EQ(first->body, registry.Render());
  EXPECT_NE(first->body.find("chord_test_tokens_total 41\n"), std::string::npos);

  tokens.Increment();  // each scrape sees the values of its time
  httplib::Result second = client.Get("/metrics");
  ASSERT_TRUE(second);
  EXPECT_NE(second->body.find("chord_test_tokens_total 42\n"), std::string::npos);

  httplib::Result other = client.Get("/other");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
}

TEST(MetricsServerTest, BusyPortIsUnavailableAndBadPortInvalid) {
  Registry registry;
  absl::StatusOr<std::unique_ptr<MetricsServer>> first =
      MetricsServer::Start(registry, "127.0.0.1", 0);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<MetricsServer>> second =
      MetricsServer::Start(registry, "127.0.0.1", (*first)->port());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(MetricsServer::Start(registry, "127.0.0.1", 70000).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MetricsServerTest, StopsPromptlyRightAfterStart) {
  Registry registry;
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> server =
        MetricsServer::Start(registry, "127.0.0.1", 0);
    ASSERT_TRUE(server.ok()) << server.status();
  }
}

}  // namespace
}  // namespace chord::metrics
