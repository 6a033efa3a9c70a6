// `chord-loader`: maps one GGUF model and serves its metadata and tensor bytes
// to the coordinator and the workers (proto/PROTOCOL.md, "Loader").
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "common/base/log.h"
#include "common/base/systemd_notify.h"
#include "common/config/cluster_config.h"
#include "common/config/curve_flags.h"
#include "common/gguf/gguf_file.h"
#include "common/metrics/chord_metrics.h"
#include "common/metrics/metrics_server.h"
#include "loader/weight_service.h"
#include "zmq.hpp"

namespace {

struct Flags {
  std::string model;
  std::string bind = "tcp://127.0.0.1:5556";
  std::string config;
  std::string max_bandwidth = "0";  // bytes per second, e.g. 500M; 0: unlimited
  int metrics_port = -1;            // -1: no metrics server
  std::string metrics_host = "127.0.0.1";
  std::string log_level = "info";
  bool log_json = false;
};

int Fail(const std::string& message) {
  chord::log::Error("chord-loader: %s", message);
  return 1;
}

// SIGTERM/SIGINT are taken by one thread (sigwait): blocked here, before ZeroMQ
// starts its threads, which inherit the mask.
sigset_t BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

absl::Status ServeUntilSignal(chord::loader::WeightService& service, const sigset_t& signals) {
  std::thread signal_thread([&signals, &service] {
    int received = 0;
    sigwait(&signals, &received);
    chord::NotifySystemdOrWarn("STOPPING=1");
    service.RequestStop();
  });
  const absl::Status served = service.Run();
  pthread_kill(signal_thread.native_handle(), SIGTERM);  // wakes it if no signal came
  signal_thread.join();
  return served;
}

// The file's loader: section fills what the command line left unset.
bool ApplyConfig(const CLI::App& app, Flags& flags, std::optional<chord::ClusterConfig>* loaded) {
  if (flags.config.empty()) return true;
  absl::StatusOr<chord::ClusterConfig> config = chord::LoadClusterConfig(flags.config);
  if (!config.ok()) {
    std::fprintf(stderr, "chord-loader: %s\n", std::string(config.status().message()).c_str());
    return false;
  }
  if (app.count("--model") == 0) flags.model = config->loader.model;
  if (app.count("--bind") == 0) {
    flags.bind = "tcp://" + config->loader.host + ":" + std::to_string(config->loader.port);
  }
  *loaded = std::move(*config);
  return true;
}

// Scrapes copy the service's own per-peer totals into the counters.
absl::StatusOr<std::unique_ptr<chord::metrics::MetricsServer>> StartMetrics(
    const Flags& flags, const chord::loader::WeightService& service,
    chord::metrics::Registry& registry, chord::metrics::LoaderMetrics& metrics) {
  registry.AddCollectHook([&service, &metrics] {
    double bytes = 0, served = 0, dropped = 0;
    for (const auto& [peer, stats] : service.Stats()) {
      bytes += static_cast<double>(stats.bytes_sent);
      served += static_cast<double>(stats.requests);
      dropped += static_cast<double>(stats.dropped);
    }
    chord::metrics::Counter& served_counter = metrics.requests.With({"served"});
    chord::metrics::Counter& dropped_counter = metrics.requests.With({"dropped"});
    metrics.bytes_sent.Increment(std::max(0.0, bytes - metrics.bytes_sent.value()));
    served_counter.Increment(std::max(0.0, served - served_counter.value()));
    dropped_counter.Increment(std::max(0.0, dropped - dropped_counter.value()));
  });
  return chord::metrics::MetricsServer::StartUnlessOff(registry, flags.metrics_host,
                                                       flags.metrics_port);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"chord-loader: serves a GGUF model's weights to chord's coordinator and workers"};
  Flags flags;
  app.add_option("--model", flags.model, "GGUF model file to serve");
  app.add_option("--bind", flags.bind, "ROUTER endpoint; port 0 or * lets the OS pick")
      ->capture_default_str();
  app.add_option("--config", flags.config, "cluster YAML (its loader: section)")
      ->check(CLI::ExistingFile);
  app.add_option("--max-bandwidth", flags.max_bandwidth,
                 "pace weight chunks to this many bytes/s over all peers, e.g. 500M, to play a "
                 "slow disk or network; 0: unlimited")
      ->capture_default_str();
  app.add_option("--metrics-port", flags.metrics_port,
                 "serve Prometheus GET /metrics on this port (0: OS pick; -1: off)")
      ->check(CLI::Range(-1, 65535));
  app.add_option("--metrics-host", flags.metrics_host, "address the metrics server binds")
      ->capture_default_str();
  app.add_option("--log-level", flags.log_level, "debug, info, warn or error")
      ->capture_default_str();
  app.add_flag("--log-json", flags.log_json, "write log lines as JSON objects");
  const chord::CurveFlags curve_flags(app);
  CLI11_PARSE(app, argc, argv);

  chord::log::Level level;
  if (!chord::log::ParseLevel(flags.log_level, &level)) {
    std::fprintf(stderr, "chord-loader: unknown --log-level '%s'\n", flags.log_level.c_str());
    return 2;
  }
  chord::log::Init(level, flags.log_json);
  std::optional<chord::ClusterConfig> config;
  if (!ApplyConfig(app, flags, &config)) return 2;
  absl::StatusOr<chord::wire::CurveSetup> curve = chord::wire::LoadCurveSetup(
      curve_flags.Resolve(config ? &*config : nullptr, config ? config->loader.curve_key : ""));
  if (!curve.ok()) return Fail(std::string(curve.status().message()));
  chord::ClusterConfig effective = config.value_or(chord::ClusterConfig{});
  effective.loader.model = flags.model;
  chord::log::Info("effective config (file, then flags; this loader binds %s):\n%s", flags.bind,
                   effective.ToYaml());
  if (flags.model.empty()) {
    std::fprintf(stderr, "chord-loader: --model (or loader.model in --config) is required\n");
    return 2;
  }
  absl::StatusOr<uint64_t> max_bandwidth = chord::ParseByteSize(flags.max_bandwidth);
  if (!max_bandwidth.ok()) {
    std::fprintf(stderr, "chord-loader: --max-bandwidth: %s\n",
                 std::string(max_bandwidth.status().message()).c_str());
    return 2;
  }
  chord::log::Info(
      "chord-loader: model %s, bind %s, config %s, max bandwidth %s, links %s", flags.model,
      flags.bind, flags.config.empty() ? "(none)" : flags.config,
      *max_bandwidth == 0 ? "unlimited" : flags.max_bandwidth + " bytes/s",
      curve->enabled()
          ? absl::StrCat("CURVE (", curve->allowed.size(), " keys allowed)")
          : std::string("plaintext"));

  absl::StatusOr<std::unique_ptr<chord::gguf::GgufFile>> file =
      chord::gguf::GgufFile::Open(flags.model);
  if (!file.ok()) return Fail(std::string(file.status().message()));
  const auto started = std::chrono::steady_clock::now();
  absl::StatusOr<std::string> sha256 = chord::loader::Sha256Hex((*file)->bytes());
  if (!sha256.ok()) return Fail(std::string(sha256.status().message()));
  chord::log::Info(
      "chord-loader: sha256 %s of %d bytes in %.3f s", *sha256, (*file)->file_size(),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());

  const sigset_t signals = BlockStopSignals();

  // Declared after the file: payload frames borrow its mapping until the context closes.
  zmq::context_t context(1);
  // Declared after the context: it owns a socket of it and must close first.
  absl::StatusOr<std::unique_ptr<chord::wire::ZapHandler>> zap =
      chord::wire::ZapHandler::StartFor(context, *curve);
  if (!zap.ok()) return Fail(std::string(zap.status().message()));
  chord::loader::WeightServiceOptions options;
  options.curve = *curve;
  options.bind = flags.bind;
  options.max_bytes_per_second = *max_bandwidth;
  options.file_path = std::filesystem::absolute(flags.model).string();
  absl::StatusOr<std::unique_ptr<chord::loader::WeightService>> service =
      chord::loader::WeightService::Create(context, **file, *sha256,
                                           std::filesystem::path(flags.model).filename().string(),
                                           options);
  if (!service.ok()) return Fail(std::string(service.status().message()));
  chord::metrics::Registry registry;
  chord::metrics::LoaderMetrics loader_metrics(registry);
  absl::StatusOr<std::unique_ptr<chord::metrics::MetricsServer>> metrics_server =
      StartMetrics(flags, **service, registry, loader_metrics);
  if (!metrics_server.ok()) return Fail(std::string(metrics_server.status().message()));
  std::printf("chord-loader listening on %s\n", (*service)->endpoint().c_str());
  std::fflush(stdout);
  chord::NotifySystemdOrWarn("READY=1");

  const absl::Status served = ServeUntilSignal(**service, signals);
  if (!served.ok()) return Fail(std::string(served.message()));
  chord::log::Info("chord-loader: stopped");
  return 0;
}
