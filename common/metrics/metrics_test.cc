#include "common/metrics/metrics.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "common/metrics/chord_metrics.h"
#include "gtest/gtest.h"

namespace chord::metrics {
namespace {

TEST(MetricsTest, RendersTextExpositionFormat) {
  Registry registry;
  Family<Counter>& done =
      registry.AddCounter("chord_test_done_total", "Done\nrequests.", {"finished_reason"});
  done.With({"stop"}).Increment(3);
  done.With({"length"}).Increment();
  registry.AddGauge("chord_test_running", "Running.").With({}).Set(2.5);
  Histogram& latency = registry.AddHistogram("chord_test_seconds", "Latency.", {0.1, 1.0}).With({});
  latency.Observe(0.05);
  latency.Observe(0.1);  // bounds are inclusive
  latency.Observe(7.0);

  EXPECT_EQ(registry.Render(),
            "# HELP chord_test_done_total Done\\nrequests.\n"
            "# TYPE chord_test_done_total counter\n"
            "chord_test_done_total{finished_reason=\"length\"} 1\n"
            "chord_test_done_total{finished_reason=\"stop\"} 3\n"
            "# HELP chord_test_running Running.\n"
            "# TYPE chord_test_running gauge\n"
            "chord_test_running 2.5\n"
            "# HELP chord_test_seconds Latency.\n"
            "# TYPE chord_test_seconds histogram\n"
            "chord_test_seconds_bucket{le=\"0.1\"} 2\n"
            "chord_test_seconds_bucket{le=\"1\"} 2\n"
            "chord_test_seconds_bucket{le=\"+Inf\"} 3\n"
            "chord_test_seconds_sum 7.15\n"
            "chord_test_seconds_count 3\n");
}

TEST(MetricsTest, HistogramMatchesCountingReferenceOnRandomData) {
  std::mt19937 rng(1234);
  std::exponential_distribution<double> dist(4.0);
  const std::vector<double> bounds = ExponentialBuckets(0.01, 2.0, 8);
  Histogram histogram(bounds);
  std::vector<double> values(5000);
  for (double& value : values) {
    value = dist(rng);
    histogram.Observe(value);
  }
  const Histogram::Snapshot snapshot = histogram.snapshot();
  ASSERT_EQ(snapshot.cumulative.size(), bounds.size() + 1);
  double sum = 0.0;
  for (double value : values) sum += value;
  for (size_t i = 0; i < bounds.size(); ++i) {
    uint64_t expected = 0;
    for (double value : values) expected += value <= bounds[i] ? 1 : 0;
    EXPECT_EQ(snapshot.cumulative[i], expected) << "le " << bounds[i];
  }
  EXPECT_EQ(snapshot.cumulative.back(), values.size());
  EXPECT_EQ(snapshot.count, values.size());
  EXPECT_NEAR(snapshot.sum, sum, 1e-9 * sum);
}

TEST(MetricsTest, ConcurrentUpdatesAreNotLost) {
  Registry registry;
  Family<Counter>& family = registry.AddCounter("chord_test_events_total", "Events.", {"kind"});
  Gauge& gauge = registry.AddGauge("chord_test_level", "Level.").With({});
  Histogram& histogram = registry.AddHistogram("chord_test_h", "H.", {0.5}).With({});
  constexpr int kThreads = 4;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        family.With({t % 2 == 0 ? "even" : "odd"}).Increment();
        gauge.Add(1.0);
        histogram.Observe(i % 2 == 0 ? 0.25 : 0.75);
        if (i % 1000 == 0) registry.Render();  // scrapes race with updates
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(family.With({"even"}).value(), 2.0 * kPerThread);
  EXPECT_EQ(family.With({"odd"}).value(), 2.0 * kPerThread);
  EXPECT_EQ(gauge.value(), kThreads * kPerThread);
  EXPECT_EQ(histogram.snapshot().count, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_EQ(histogram.snapshot().cumulative[0], static_cast<uint64_t>(kThreads * kPerThread / 2));
}

TEST(MetricsTest, CollectHooksRunAtEveryRender) {
  Registry registry;
  Counter& sent = registry.AddCounter("chord_test_sent_total", "Sent.").With({});
  uint64_t external_total = 0;
  registry.AddCollectHook(
      [&] { sent.Increment(static_cast<double>(external_total) - sent.value()); });
  external_total = 1000;
  EXPECT_NE(registry.Render().find("chord_test_sent_total 1000\n"), std::string::npos);
  external_total = 1500;
  EXPECT_NE(registry.Render().find("chord_test_sent_total 1500\n"), std::string::npos);
}

TEST(MetricsTest, EscapingNamesAndValues) {
  EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(FormatValue(1.0), "1");
  EXPECT_EQ(FormatValue(0.25), "0.25");
  EXPECT_EQ(FormatValue(1e-7), "1e-07");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::quiet_NaN()), "NaN");
  EXPECT_TRUE(IsValidMetricName("chord_x:y_total"));
  EXPECT_FALSE(IsValidMetricName("9chord"));
  EXPECT_FALSE(IsValidMetricName("chord-x"));
  EXPECT_TRUE(IsValidLabelName("phase"));
  EXPECT_FALSE(IsValidLabelName("__reserved"));
  EXPECT_FALSE(IsValidLabelName("a:b"));

  Registry registry;
  registry.AddCounter("chord_test_paths_total", "Paths.", {"path"})
      .With({"C:\\dir \"quoted\""})
      .Increment();
  EXPECT_NE(registry.Render().find("{path=\"C:\\\\dir \\\"quoted\\\"\"} 1\n"), std::string::npos);
}

TEST(MetricsDeathTest, BadDefinitionsAreBugs) {
  Registry registry;
  EXPECT_DEATH(registry.AddCounter("chord_no_suffix", "x"), "");
  EXPECT_DEATH(registry.AddGauge("chord bad", "x"), "");
  registry.AddGauge("chord_twice", "x");
  EXPECT_DEATH(registry.AddGauge("chord_twice", "x"), "");
  Family<Gauge>& family = registry.AddGauge("chord_labelled", "x", {"a", "b"});
  EXPECT_DEATH(family.With({"only-one"}), "");
  EXPECT_DEATH(Histogram({1.0, 0.5}), "");
}

// Every chord metric, populated as a busy cluster would be.
std::string ChordMetricsText() {
  Registry registry;
  CoordinatorMetrics coordinator(registry);
  WorkerMetrics worker(registry);
  LoaderMetrics loader(registry);
  coordinator.request_success.With({"stop"}).Increment(5);
  coordinator.request_success.With({"length"}).Increment(2);
  coordinator.time_to_first_token.Observe(0.031);
  coordinator.inter_token_latency.Observe(0.012);
  coordinator.e2e_request_latency.Observe(1.7);
  coordinator.num_requests_running.Set(3);
  coordinator.num_requests_waiting.Set(1);
  coordinator.prompt_tokens.Increment(120);
  coordinator.generation_tokens.Increment(64);
  coordinator.num_workers.Set(2);
  coordinator.num_preemptions.Increment(3);
  worker.stage_step_seconds.With({"prefill"}).Observe(0.02);
  worker.stage_step_seconds.With({"decode"}).Observe(0.002);
  worker.kv_cache_usage_perc.Set(0.4);
  worker.shard_cache_hits.Increment(10);
  worker.shard_cache_misses.Increment(2);
  worker.shard_cache_stall_seconds.Increment(0.3);
  loader.bytes_sent.Increment(1 << 20);
  loader.requests.With({"served"}).Increment(16);
  return registry.Render();
}

TEST(ChordMetricsTest, NamesFollowVllmWithChordPrefix) {
  const std::string text = ChordMetricsText();
  for (const char* name :
       {"chord_request_success_total", "chord_time_to_first_token_seconds",
        "chord_inter_token_latency_seconds", "chord_e2e_request_latency_seconds",
        "chord_num_requests_running", "chord_num_requests_waiting", "chord_prompt_tokens_total",
        "chord_generation_tokens_total", "chord_stage_step_seconds", "chord_kv_cache_usage_perc",
        "chord_shard_cache_hits_total", "chord_shard_cache_misses_total",
        "chord_shard_cache_stall_seconds_total", "chord_loader_bytes_sent_total",
        "chord_num_preemptions_total"}) {
    EXPECT_NE(text.find(std::string("# TYPE ") + name + " "), std::string::npos) << name;
  }
  EXPECT_NE(text.find("chord_stage_step_seconds_count{phase=\"decode\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("chord_loader_bytes_sent_total 1048576\n"), std::string::npos);
}

// The exposition grammar, line by line: what Prometheus's parser accepts.
bool IsNameAt(const std::string& line, size_t* at, bool label) {
  const size_t start = *at;
  while (*at < line.size() && (std::isalnum(static_cast<unsigned char>(line[*at])) ||
                               line[*at] == '_' || (!label && line[*at] == ':'))) {
    ++*at;
  }
  return *at > start && !std::isdigit(static_cast<unsigned char>(line[start]));
}

bool IsValidSampleLine(const std::string& line) {
  size_t at = 0;
  if (!IsNameAt(line, &at, /*label=*/false)) return false;
  if (at < line.size() && line[at] == '{') {
    do {
      ++at;  // past '{' or ','
      if (!IsNameAt(line, &at, /*label=*/true) || line.compare(at, 2, "=\"") != 0) return false;
      for (at += 2; at < line.size() && line[at] != '"'; ++at) {
        if (line[at] == '\\' &&
            (++at >= line.size() || std::string("\\\"n").find(line[at]) == std::string::npos)) {
          return false;
        }
      }
      if (at++ >= line.size()) return false;  // past the closing quote
    } while (at < line.size() && line[at] == ',');
    if (at >= line.size() || line[at++] != '}') return false;
  }
  if (at >= line.size() || line[at++] != ' ') return false;
  const std::string value = line.substr(at);
  if (value == "+Inf" || value == "-Inf" || value == "NaN") return true;
  char* end = nullptr;
  std::strtod(value.c_str(), &end);
  return !value.empty() && end == value.c_str() + value.size();
}

bool IsValidCommentLine(const std::string& line) {
  const bool help = line.starts_with("# HELP ");
  if (!help && !line.starts_with("# TYPE ")) return false;
  size_t at = 7;
  if (!IsNameAt(line, &at, /*label=*/false) || at >= line.size() || line[at] != ' ') return false;
  if (help) return true;
  const std::string type = line.substr(at + 1);
  return type == "counter" || type == "gauge" || type == "histogram";
}

TEST(ChordMetricsTest, EveryLineIsValidExposition) {
  EXPECT_TRUE(IsValidSampleLine("a_b{x=\"1\\\"\",le=\"+Inf\"} 2.5e-07"));
  EXPECT_FALSE(IsValidSampleLine("a_b{x=\"1\"} two"));
  EXPECT_FALSE(IsValidSampleLine("a-b 1"));
  EXPECT_FALSE(IsValidSampleLine("a{x=\"\\q\"} 1"));
  std::istringstream lines(ChordMetricsText());
  std::string line;
  int samples = 0;
  while (std::getline(lines, line)) {
    if (line.starts_with("#")) {
      EXPECT_TRUE(IsValidCommentLine(line)) << line;
    } else {
      EXPECT_TRUE(IsValidSampleLine(line)) << line;
      ++samples;
    }
  }
  EXPECT_GT(samples, 50);
}

// The naming rules `promtool check metrics` lints, for machines without it.
TEST(ChordMetricsTest, NamesPassPrometheusLintRules) {
  const std::set<std::string> abbreviations = {"s",  "ms", "us", "ns", "sec", "b", "kb",
                                               "mb", "gb", "tb", "pb", "m",   "h", "d"};
  const std::set<std::string> type_words = {"counter", "gauge", "histogram", "summary"};
  std::istringstream lines(ChordMetricsText());
  std::string line;
  int families = 0;
  while (std::getline(lines, line)) {
    if (!line.starts_with("# TYPE ")) continue;
    ++families;
    std::istringstream fields(line.substr(7));
    std::string name, type;
    fields >> name >> type;
    EXPECT_EQ(type == "counter", name.ends_with("_total")) << name;
    EXPECT_EQ(name.find(':'), std::string::npos) << name;
    std::istringstream parts(name);
    for (std::string part; std::getline(parts, part, '_');) {
      EXPECT_FALSE(abbreviations.contains(part)) << name << ": abbreviated unit " << part;
      EXPECT_FALSE(type_words.contains(part)) << name << ": type in the name";
      EXPECT_FALSE(part == "milliseconds" || part == "minutes" || part == "bits") << name;
    }
  }
  EXPECT_GE(families, 14);
}

TEST(ChordMetricsTest, PromtoolAcceptsTheOutput) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "promtool not installed (Debian package prometheus); "
                    "EveryLineIsValidExposition still checks the grammar";
  }
  const std::filesystem::path path = std::filesystem::temp_directory_path() /
                                     ("chord_metrics_" + std::to_string(::getpid()) + ".prom");
  std::ofstream(path) << ChordMetricsText();
  const std::string command = "promtool check metrics < " + path.string() + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[512];
  while (std::fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  const int status = ::pclose(pipe);
  std::filesystem::remove(path);
  EXPECT_EQ(status, 0) << output;
  EXPECT_EQ(output, "") << "promtool lint findings";
}

}  // namespace
}  // namespace chord::metrics
