// `chord-worker`: one pipeline stage. Registers with the coordinator, loads
// the layer range it is assigned from the loader, runs steps until Shutdown,
// SIGTERM or SIGINT (exit 0).
#include <csignal>
#include <cstdio>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "common/base/log.h"
#include "common/base/systemd_notify.h"
#include "common/config/cluster_config.h"
#include "common/config/curve_flags.h"
#include "common/metrics/metrics_server.h"
#include "loader/client/loader_client.h"
#include "worker/nccl_link.h"
#include "worker/network_interface.h"
#include "worker/worker_service.h"

namespace {

chord::WorkerService* g_service = nullptr;

void OnSignal(int) {
  if (g_service != nullptr) g_service->Stop();  // an atomic store: async-signal-safe
}

int Fail(const absl::Status& status) {
  chord::log::Error("chord-worker: %s", status.ToString());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"chord-worker: runs a range of a model's layers for the coordinator"};
  chord::WorkerOptions o;
  std::string config_path, budget, gpu_budget, log_level = "info";
  int threads = 0;
  bool log_json = false;
  auto* coordinator =
      app.add_option("--coordinator", o.coordinator_endpoint, "e.g. tcp://127.0.0.1:5555");
  app.add_option("--id", o.worker_id, "this worker's unique id")->required();
  auto* data_bind =
      app.add_option("--data-bind", o.data_bind, "data PULL endpoint (port 0 or *: OS pick)");
  auto* memory =
      app.add_option("--memory-budget", budget, "bytes for weights, e.g. 2G; 0: unlimited");
  auto* gpu_memory = app.add_option(
      "--gpu-memory-budget", gpu_budget,
      "with --backend cuda: bytes for weights in GPU memory, e.g. 40G; 0: unlimited. Layers "
      "beyond it stream from host memory (pinned, within --memory-budget) each step");
  app.add_option("--prefetch-depth", o.prefetch_depth,
                 "layers fetched ahead when the range is over the budget; 0: off; -1: derived "
                 "from measured fetch and compute times")
      ->check(CLI::Range(-1, 64));
  auto* threads_flag = app.add_option("--threads", threads, "compute threads; 0: one per core");
  auto* backend =
      app.add_option("--backend", o.backend, "compute backend: cpu, or cuda (an NVIDIA GPU)")
          ->check(CLI::IsMember({"cpu", "cuda"}));
  auto* device = app.add_option("--device", o.device, "CUDA device ordinal (with --backend cuda)")
                     ->check(CLI::NonNegativeNumber);
  std::string nccl_interface;
  auto* nccl =
      app.add_flag("--nccl,!--no-nccl", o.nccl,
                   "with --backend cuda: pass activations to and from neighbouring GPU stages over "
                   "NCCL (default on; ZeroMQ otherwise)");
  app.add_option(
         "--nccl-min-rows", o.nccl_min_rows,
         "with NCCL links: steps of fewer rows (tokens) send their activations over ZeroMQ, "
         "which is faster for small ones")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  auto* nccl_interface_flag =
      app.add_option("--nccl-interface", nccl_interface,
                     "network interface for NCCL's bootstrap and socket traffic (default: the one "
                     "holding the data-bind address)");
  int busy_poll_us = -1;
  app.add_option("--busy-poll-us", busy_poll_us,
                 "after each step, poll for the next one without blocking for this long (a core "
                 "busy meanwhile; no wake-up per step); 0: off; -1: 20000 with --backend cuda, "
                 "else off")
      ->check(CLI::Range(-1, 1000000))
      ->capture_default_str();
  app.add_option("--max-kv-slots", o.max_kv_slots, "largest kv_slots accepted; 0: no limit");
  app.add_option("--max-ctx", o.max_n_ctx, "largest n_ctx accepted; 0: no limit");
  app.add_option("--config", config_path, "cluster YAML (its coordinator: and workers: sections)")
      ->check(CLI::ExistingFile);
  chord::LoaderClientOptions loader_options;
  app.add_option("--loader-local-reads", loader_options.local_reads,
                 "with an ipc:// loader (same host), copy weights from its mapped file and take "
                 "only checksums over the socket")
      ->capture_default_str();
  int metrics_port = -1;
  std::string metrics_host = "127.0.0.1";
  app.add_option("--metrics-port", metrics_port,
                 "Prometheus GET /metrics port (0: OS pick; -1: off)")
      ->check(CLI::Range(-1, 65535));
  app.add_option("--metrics-host", metrics_host, "address the metrics server binds");
  app.add_option("--log-level", log_level, "debug, info, warn or error");
  app.add_flag("--log-json", log_json, "write log lines as JSON objects");
  const chord::CurveFlags curve_flags(app);
  CLI11_PARSE(app, argc, argv);
  o.busy_poll_us = busy_poll_us;
  chord::log::Level level;
  if (!chord::log::ParseLevel(log_level, &level)) {
    std::fprintf(stderr, "chord-worker: unknown --log-level '%s'\n", log_level.c_str());
    return 2;
  }
  chord::log::Init(level, log_json);

  // The file's values first, then the flags given.
  std::optional<chord::ClusterConfig> config;
  std::string curve_key;  // the worker's own section names its secret key
  if (!config_path.empty()) {
    absl::StatusOr<chord::ClusterConfig> loaded = chord::LoadClusterConfig(config_path);
    if (!loaded.ok()) return Fail(loaded.status());
    config = std::move(*loaded);
    const chord::CoordinatorSection& c = config->coordinator;
    if (!coordinator->count())
      o.coordinator_endpoint = "tcp://" + c.host + ":" + std::to_string(c.control_port);
    if (const chord::WorkerSection* w = config->FindWorker(o.worker_id); w != nullptr) {
      if (!data_bind->count())
        o.data_bind = "tcp://" + w->host + ":" + std::to_string(w->data_port);
      if (!memory->count()) o.memory_budget_bytes = w->memory_budget;
      if (!gpu_memory->count()) o.gpu_memory_budget_bytes = w->gpu_memory_budget;
      if (!threads_flag->count()) threads = w->threads;
      if (!backend->count()) o.backend = w->backend;
      if (!device->count()) o.device = w->device;
      if (!nccl->count()) o.nccl = w->nccl;
      if (!nccl_interface_flag->count()) nccl_interface = w->nccl_interface;
      curve_key = w->curve_key;
    }
  }
  absl::StatusOr<chord::wire::CurveSetup> curve =
      chord::wire::LoadCurveSetup(curve_flags.Resolve(config ? &*config : nullptr, curve_key));
  if (!curve.ok()) return Fail(curve.status());
  if (absl::Status needed = chord::wire::RequireLoaderKey(*curve); !needed.ok())
    return Fail(needed);
  o.curve = *curve;
  loader_options.curve = *curve;
  if (memory->count()) {
    absl::StatusOr<uint64_t> bytes = chord::ParseByteSize(budget);
    if (!bytes.ok())
      return Fail(
          absl::InvalidArgumentError(absl::StrCat("--memory-budget: ", bytes.status().message())));
    o.memory_budget_bytes = *bytes;
  }
  if (gpu_memory->count()) {
    absl::StatusOr<uint64_t> bytes = chord::ParseByteSize(gpu_budget);
    if (!bytes.ok()) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--gpu-memory-budget: ", bytes.status().message())));
    }
    o.gpu_memory_budget_bytes = *bytes;
  }
  chord::ClusterConfig effective = config.value_or(chord::ClusterConfig{});
  if (effective.FindWorker(o.worker_id) == nullptr)
    effective.workers.push_back({.id = o.worker_id});
  for (chord::WorkerSection& w : effective.workers) {
    if (w.id != o.worker_id) continue;
    w.memory_budget = o.memory_budget_bytes;
    w.gpu_memory_budget = o.gpu_memory_budget_bytes;
    w.backend = o.backend;
    w.device = o.device;
    w.threads = threads;
    w.nccl = o.nccl;
    w.nccl_interface = nccl_interface;
  }
  chord::log::Info("effective config (file, then flags; this worker binds %s):\n%s", o.data_bind,
                   effective.ToYaml());
  if (o.coordinator_endpoint.empty())
    return Fail(absl::InvalidArgumentError("--coordinator (or --config) is required"));
  if (o.backend == "cuda" && !chord::CudaBackendBuilt()) {
    return Fail(
        absl::UnimplementedError("this chord-worker was built without CUDA (nvcc was not found)"));
  }
  if (nccl_interface.empty()) {
    // NCCL's own traffic stays on the interface of the address this worker serves on.
    if (absl::StatusOr<std::string> held =
            chord::InterfaceHolding(chord::EndpointHost(o.data_bind));
        held.ok()) {
      nccl_interface = *held;
    }
  }
  chord::SetNcclEnvironment(nccl_interface);
  if (o.backend == "cuda" && o.nccl && chord::NcclBuilt()) {
    chord::log::Info("chord-worker %s: NCCL links on, NCCL traffic on interface %s", o.worker_id,
                     nccl_interface.empty() ? "(NCCL's choice)" : nccl_interface);
  }
  chord::log::Info(
      "chord-worker %s: coordinator %s, data bind %s, memory budget %d bytes, GPU memory budget %d "
      "bytes, backend %s, threads %d, links %s",
      o.worker_id, o.coordinator_endpoint, o.data_bind, o.memory_budget_bytes,
      o.gpu_memory_budget_bytes, o.backend, threads, o.curve.enabled() ? "CURVE" : "plaintext");

  chord::metrics::Registry registry;
  chord::metrics::WorkerMetrics worker_metrics(registry);
  auto metrics_server =
      chord::metrics::MetricsServer::StartUnlessOff(registry, metrics_host, metrics_port);
  if (!metrics_server.ok()) return Fail(metrics_server.status());
  if (*metrics_server != nullptr) o.metrics = &worker_metrics;
  zmq::context_t context(1);
  // After the context: it owns a socket of it and must close first.
  absl::StatusOr<std::unique_ptr<chord::wire::ZapHandler>> zap =
      chord::wire::ZapHandler::StartFor(context, o.curve);
  if (!zap.ok()) return Fail(zap.status());
  chord::ThreadPool pool(threads);
  loader_options.node_id = o.worker_id;
  chord::LoaderConnector connect =
      [loader_options](zmq::context_t& ctx, const std::string& endpoint, const std::string& sha) {
        return chord::LoaderClient::Connect(ctx, endpoint, sha, loader_options);
      };
  absl::StatusOr<std::unique_ptr<chord::WorkerService>> service =
      chord::WorkerService::Create(context, o, pool, connect);
  if (!service.ok()) return Fail(service.status());
  g_service = service->get();
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  chord::NotifySystemdOrWarn("READY=1");  // the data socket is bound; registration follows
  const absl::Status status = (*service)->Run();
  chord::NotifySystemdOrWarn("STOPPING=1");
  g_service = nullptr;
  return status.ok() ? 0 : Fail(status);
}
