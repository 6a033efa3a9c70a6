#include "common/metrics/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "common/base/status.h"

namespace chord::metrics {
namespace {

bool IsNameChar(char c, bool first, bool colon_ok) {
  const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  return letter || (colon_ok && c == ':') || (!first && c >= '0' && c <= '9');
}

bool IsValidName(const std::string& name, bool colon_ok) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, colon_ok)) return false;
  }
  return true;
}

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The text format's escapes: backslash and newline, and in label values the quote.
std::string Escape(const std::string& text, bool quote) {
  std::string out;
  for (char c : text) {
    if (c == '\\' || (quote && c == '"')) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// `{a="x",b="y"}` with an optional extra pair (a histogram's le), or "" when empty.
std::string LabelText(const std::vector<std::string>& names, const std::vector<std::string>& values,
                      const std::string& extra_name = "", const std::string& extra_value = "") {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    out += out.empty() ? "{" : ",";
    out += names[i] + "=\"" + EscapeLabelValue(values[i]) + "\"";
  }
  if (!extra_name.empty()) {
    out += out.empty() ? "{" : ",";
    out += extra_name + "=\"" + extra_value + "\"";
  }
  if (!out.empty()) out += "}";
  return out;
}

void RenderHeader(const std::string& name, const std::string& help, const char* type,
                  std::string* out) {
  *out += "# HELP " + name + " " + Escape(help, /*quote=*/false) + "\n";
  *out += "# TYPE " + name + " " + type + "\n";
}

void RenderSample(const std::string& name, const std::string& labels, double value,
                  std::string* out) {
  *out += name + labels + " " + FormatValue(value) + "\n";
}

template <typename Metric>
const char* TypeName();
template <>
const char* TypeName<Counter>() {
  return "counter";
}
template <>
const char* TypeName<Gauge>() {
  return "gauge";
}
template <>
const char* TypeName<Histogram>() {
  return "histogram";
}

template <typename Metric>
std::unique_ptr<Metric> MakeMetric(const std::vector<double>& bounds) {
  if constexpr (std::is_same_v<Metric, Histogram>) {
    return std::make_unique<Histogram>(bounds);
  } else {
    return std::make_unique<Metric>();
  }
}

}  // namespace

void Counter::Increment(double amount) {
  CHORD_CHECK(amount >= 0.0);
  value_.fetch_add(amount, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    CHORD_CHECK(std::isfinite(bounds_[i]));
    CHORD_CHECK(i == 0 || bounds_[i] > bounds_[i - 1]);
  }
}

void Histogram::Observe(double value) {
  // Buckets are "less than or equal": the first bound >= value.
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[bucket];
  sum_ += value;
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot snapshot;
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t running = 0;
  for (uint64_t count : counts_) {
    running += count;
    snapshot.cumulative.push_back(running);
  }
  snapshot.count = running;
  snapshot.sum = sum_;
  return snapshot;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  CHORD_CHECK(start > 0.0 && factor > 1.0 && count > 0);
  std::vector<double> bounds;
  double bound = start;
  for (int i = 0; i < count; ++i, bound *= factor) bounds.push_back(bound);
  return bounds;
}

template <typename Metric>
Family<Metric>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                       std::vector<double> bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      label_names_(std::move(label_names)),
      bounds_(std::move(bounds)) {}

template <typename Metric>
Metric& Family<Metric>::With(const std::vector<std::string>& label_values) {
  CHORD_CHECK(label_values.size() == label_names_.size());
  std::lock_guard<std::mutex> lock(mu_);
  std::unique_ptr<Metric>& metric = metrics_[label_values];
  if (metric == nullptr) metric = MakeMetric<Metric>(bounds_);
  return *metric;
}

template <typename Metric>
void Family<Metric>::Render(std::string* out) const {
  RenderHeader(name_, help_, TypeName<Metric>(), out);
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [values, metric] : metrics_) {
    if constexpr (std::is_same_v<Metric, Histogram>) {
      const Histogram::Snapshot snapshot = metric->snapshot();
      for (size_t i = 0; i < snapshot.cumulative.size(); ++i) {
        const std::string le = i < bounds_.size() ? FormatValue(bounds_[i]) : "+Inf";
        RenderSample(name_ + "_bucket", LabelText(label_names_, values, "le", le),
                     static_cast<double>(snapshot.cumulative[i]), out);
      }
      RenderSample(name_ + "_sum", LabelText(label_names_, values), snapshot.sum, out);
      RenderSample(name_ + "_count", LabelText(label_names_, values),
                   static_cast<double>(snapshot.count), out);
    } else {
      RenderSample(name_, LabelText(label_names_, values), metric->value(), out);
    }
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

template <typename Metric>
Family<Metric>& Registry::AddFamily(const std::string& name, const std::string& help,
                                    std::vector<std::string> label_names,
                                    std::vector<double> bounds) {
  CHORD_CHECK(IsValidMetricName(name));
  for (const std::string& label : label_names) CHORD_CHECK(IsValidLabelName(label));
  std::lock_guard<std::mutex> lock(mu_);
  CHORD_CHECK(std::find(names_.begin(), names_.end(), name) == names_.end());
  names_.push_back(name);
  auto family =
      std::make_unique<Family<Metric>>(name, help, std::move(label_names), std::move(bounds));
  Family<Metric>& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

Family<Counter>& Registry::AddCounter(const std::string& name, const std::string& help,
                                      std::vector<std::string> label_names) {
  CHORD_CHECK(EndsWith(name, "_total"));  // Prometheus naming: counters end in _total
  return AddFamily<Counter>(name, help, std::move(label_names), {});
}

Family<Gauge>& Registry::AddGauge(const std::string& name, const std::string& help,
                                  std::vector<std::string> label_names) {
  return AddFamily<Gauge>(name, help, std::move(label_names), {});
}

Family<Histogram>& Registry::AddHistogram(const std::string& name, const std::string& help,
                                          std::vector<double> bounds,
                                          std::vector<std::string> label_names) {
  CHORD_CHECK(std::find(label_names.begin(), label_names.end(), "le") == label_names.end());
  return AddFamily<Histogram>(name, help, std::move(label_names), std::move(bounds));
}

void Registry::AddCollectHook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  hooks_.push_back(std::move(hook));
}

std::string Registry::Render() const {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    hooks = hooks_;
  }
  for (const auto& hook : hooks) hook();  // unlocked: hooks update metrics
  std::string out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& family : families_) family->Render(&out);
  return out;
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  // Shortest text that reads back as the same double.
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

std::string EscapeLabelValue(const std::string& value) { return Escape(value, /*quote=*/true); }

bool IsValidMetricName(const std::string& name) { return IsValidName(name, /*colon_ok=*/true); }

bool IsValidLabelName(const std::string& name) {
  return IsValidName(name, /*colon_ok=*/false) && name.rfind("__", 0) != 0;
}

}  // namespace chord::metrics
