// A small Prometheus registry: counters, gauges and histograms, each a family
// with fixed label names, rendered in the text exposition format (0.0.4) that
// Prometheus scrapes from GET /metrics (see metrics_server.h).
//
// Usage:
//   Registry registry;
//   Family<Counter>& done = registry.AddCounter("chord_request_success_total",
//                                               "Finished requests", {"finished_reason"});
//   done.With({"stop"}).Increment();
//
// Names are code constants, so a bad name, a duplicate family, a counter not
// ending in _total or a wrong number of label values is a bug: CHORD_CHECK.
// Thread-safety: everything is thread-safe. References returned by Add* and
// With() stay valid for the registry's lifetime; updating a metric takes no
// lock (counters, gauges) or one per-metric lock (histograms).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace chord::metrics {

class Counter {
 public:
  void Increment(double amount = 1.0);  // amount >= 0 (CHORD_CHECK)
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double amount) { value_.fetch_add(amount, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  // `bounds`: finite, strictly increasing upper bounds; +Inf is implied.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // per bound, then +Inf
    double sum = 0.0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative), last is +Inf
  double sum_ = 0.0;
};

// Bounds growing by `factor` from `start`: the usual latency buckets.
std::vector<double> ExponentialBuckets(double start, double factor, int count);

class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  virtual void Render(std::string* out) const = 0;
};

template <typename Metric>
class Family final : public FamilyBase {
 public:
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::vector<double> bounds);

  // The metric for these label values (in label_names order), created at zero.
  Metric& With(const std::vector<std::string>& label_values);
  void Render(std::string* out) const override;

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;  // histograms only
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Metric>> metrics_;
};

class Registry {
 public:
  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names = {});
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          std::vector<std::string> label_names = {});
  Family<Histogram>& AddHistogram(const std::string& name, const std::string& help,
                                  std::vector<double> bounds,
                                  std::vector<std::string> label_names = {});

  // Runs `hook` at the start of every Render(): for values another component
  // already counts (e.g. bytes a service has sent), copied in at scrape time.
  // Hooks may update this registry's metrics but not add families.
  void AddCollectHook(std::function<void()> hook);

  // The whole registry in the text exposition format, families in the order added.
  std::string Render() const;

 private:
  template <typename Metric>
  Family<Metric>& AddFamily(const std::string& name, const std::string& help,
                            std::vector<std::string> label_names, std::vector<double> bounds);

  mutable std::mutex mu_;
  std::vector<std::function<void()>> hooks_;
  std::vector<std::string> names_;
  std::vector<std::unique_ptr<FamilyBase>> families_;
};

// Text-format helpers, exposed for the tests.
std::string FormatValue(double value);                   // "1", "0.25", "+Inf", "NaN"
std::string EscapeLabelValue(const std::string& value);  // \\, \" and \n
bool IsValidMetricName(const std::string& name);
bool IsValidLabelName(const std::string& name);

}  // namespace chord::metrics
