// `chord serve`: a whole deployment on this machine. Starts chord-loader,
// chord-coordinator and N chord-worker processes (from the directory of the
// `chord` binary) on loopback, waits for SERVING, restarts a child that dies,
// and on SIGINT/SIGTERM stops the coordinator first (it drains its requests
// for --grace-ms and tells the workers and the loader to stop), then the rest.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "cli/default_model.h"
#include "cli/serve/local_cluster.h"
#include "common/config/cluster_config.h"

namespace chord::cli {
namespace {

std::atomic<bool> g_stop_requested{false};

void OnStopSignal(int) { g_stop_requested.store(true); }

struct ServeFlags {
  std::string model;
  int workers = 2;
  int port = 50051;
  int http_port = -1;  // off
  std::string chat_template;
  std::string api_key_file;                        // passed to the coordinator
  std::string tls_cert, tls_key, tls_client_ca;    // passed to the coordinator
  std::string tls_ca;  // what the readiness probe trusts; empty: tls_cert itself
  int kv_slots = 0;
  int64_t ctx_size = -1;
  int threads = 0;
  std::string config;
  int64_t grace_ms = 10000;       // the coordinator's drain on stop
  int64_t worker_timeout_ms = 0;  // 0: the coordinator's (or the cluster file's)
  bool quiet = false;
  std::string worker_budget;        // per worker, e.g. 200M; empty: unlimited
  std::string gpu_budget;           // per CUDA worker, for weights in GPU memory; empty: unlimited
  int prefetch_depth = -1;          // -1: derived
  std::string loader_max_bandwidth;  // bytes/s, e.g. 500M; empty: unlimited
  std::string loader_transport = "shm";
  std::string backend;              // the workers' compute backend; empty: theirs (cpu)
  int64_t kv_tokens = 0;            // the coordinator's KV pool; 0: its default
  std::vector<int> devices;         // CUDA ordinals, dealt to the workers in turn
};

// Restart backoff per child: doubles from 0.5 s up to 10 s, and starts over
// once a child has stayed up for a minute.
struct Backoff {
  std::chrono::milliseconds delay{500};
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
};

void InstallStopHandlers() {
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

void SleepUnlessStopped(std::chrono::milliseconds duration) {
  const auto until = std::chrono::steady_clock::now() + duration;
  while (!g_stop_requested.load() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Watches the children until a stop signal; returns true if any died on its own.
bool Supervise(serve::LocalCluster& cluster) {
  bool any_died = false;
  std::vector<Backoff> backoff(cluster.size());
  while (!g_stop_requested.load()) {
    SleepUnlessStopped(std::chrono::milliseconds(200));
    for (size_t i = 0; i < cluster.size() && !g_stop_requested.load(); ++i) {
      std::optional<int> status = cluster.child(i).Poll();
      if (!status.has_value()) continue;
      any_died = true;
      const auto now = std::chrono::steady_clock::now();
      if (now - backoff[i].started > std::chrono::minutes(1)) backoff[i].delay = std::chrono::milliseconds(500);
      std::fprintf(stderr, "chord serve: %s %s; restarting in %lld ms\n", cluster.child(i).name().c_str(),
                   serve::DescribeWaitStatus(*status).c_str(), static_cast<long long>(backoff[i].delay.count()));
      SleepUnlessStopped(backoff[i].delay);
      if (g_stop_requested.load()) break;
      backoff[i].delay = std::min<std::chrono::milliseconds>(backoff[i].delay * 2, std::chrono::seconds(10));
      backoff[i].started = std::chrono::steady_clock::now();
      absl::Status restarted = cluster.Restart(i);
      if (!restarted.ok()) {
        std::fprintf(stderr, "chord serve: restarting %s: %s\n", cluster.child(i).name().c_str(),
                     restarted.ToString().c_str());
      }
    }
  }
  return any_died;
}

// Fills what the flags left unset from the cluster file, then the defaults.
absl::Status ResolveFlags(const CLI::App& app, ServeFlags& flags) {
  if (!flags.config.empty()) {
    absl::StatusOr<ClusterConfig> config = LoadClusterConfig(flags.config);
    if (!config.ok()) return config.status();
    if (flags.model.empty()) flags.model = config->loader.model;
    if (app.count("--grace-ms") == 0) flags.grace_ms = config->coordinator.grace_ms;
    if (app.count("--port") == 0) flags.port = config->coordinator.grpc_port;
    // The coordinator reads its TLS files from the same file; the probe needs them too.
    if (flags.tls_cert.empty()) flags.tls_cert = config->coordinator.tls_cert;
    if (flags.tls_key.empty()) flags.tls_key = config->coordinator.tls_key;
    if (flags.tls_client_ca.empty()) flags.tls_client_ca = config->coordinator.tls_client_ca;
    if (app.count("--workers") == 0 && !config->workers.empty()) {
      flags.workers = static_cast<int>(config->workers.size());
    }
  }
  if (flags.model.empty()) flags.model = DefaultModelPath();
  if (flags.threads == 0) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    flags.threads = std::max(1, cores / flags.workers);
  }
  return absl::OkStatus();
}

// Accepts what ParseByteSize accepts, with its error message.
CLI::Validator ByteSizeValidator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        absl::StatusOr<uint64_t> bytes = ParseByteSize(text);
        return bytes.ok() ? std::string() : std::string(bytes.status().message());
      },
      "SIZE");
}

int RunServe(const CLI::App& app, ServeFlags flags) {
  if (absl::Status resolved = ResolveFlags(app, flags); !resolved.ok()) {
    std::fprintf(stderr, "chord serve: %s\n", resolved.ToString().c_str());
    return 2;
  }
  InstallStopHandlers();
  auto output_mu = std::make_shared<std::mutex>();
  serve::LocalClusterOptions options;
  options.model = flags.model;
  options.config_path = flags.config;
  options.workers = flags.workers;
  options.grpc_port = flags.port;
  options.kv_slots = flags.kv_slots;
  options.ctx_size = flags.ctx_size;
  options.threads_per_worker = flags.threads;
  if (!flags.worker_budget.empty()) {
    options.worker_args = {"--memory-budget", flags.worker_budget, "--prefetch-depth",
                           std::to_string(flags.prefetch_depth)};
  }
  if (!flags.loader_max_bandwidth.empty()) options.loader_args = {"--max-bandwidth", flags.loader_max_bandwidth};
  options.loader_transport = flags.loader_transport == "tcp" ? "tcp" : "ipc";
  if (flags.loader_transport == "ipc") {
    options.worker_args.insert(options.worker_args.end(), {"--loader-local-reads", "false"});
  }
  if (!flags.backend.empty()) options.worker_args.insert(options.worker_args.end(), {"--backend", flags.backend});
  if (!flags.gpu_budget.empty()) {
    options.worker_args.insert(options.worker_args.end(), {"--gpu-memory-budget", flags.gpu_budget});
  }
  options.worker_devices = flags.devices;
  if (flags.http_port >= 0) options.coordinator_args = {"--http-port", std::to_string(flags.http_port)};
  options.coordinator_args.insert(options.coordinator_args.end(),
                                  {"--grace-ms", std::to_string(flags.grace_ms)});
  if (flags.kv_tokens > 0) {
    options.coordinator_args.insert(options.coordinator_args.end(),
                                    {"--kv-tokens", std::to_string(flags.kv_tokens)});
  }
  if (flags.worker_timeout_ms > 0) {
    options.coordinator_args.insert(
        options.coordinator_args.end(),
        {"--worker-timeout-ms", std::to_string(flags.worker_timeout_ms)});
  }
  for (const auto& [flag, value] : {std::pair<const char*, const std::string*>{"--chat-template", &flags.chat_template},
                                     {"--api-key-file", &flags.api_key_file},
                                     {"--tls-cert", &flags.tls_cert},
                                     {"--tls-key", &flags.tls_key},
                                     {"--tls-client-ca", &flags.tls_client_ca}}) {
    if (!value->empty()) options.coordinator_args.insert(options.coordinator_args.end(), {flag, *value});
  }
  // The probe trusts the served certificate (self-signed, for 127.0.0.1) unless
  // told the CA; under mutual TLS it shows the same certificate as its own.
  if (!flags.tls_cert.empty()) {
    options.probe_tls.ca_file = flags.tls_ca.empty() ? flags.tls_cert : flags.tls_ca;
    if (!flags.tls_client_ca.empty()) options.probe_tls = {options.probe_tls.ca_file, flags.tls_cert, flags.tls_key};
  }
  if (!flags.quiet) {
    options.on_line = [output_mu](const std::string& child, std::string_view line) {
      std::lock_guard<std::mutex> lock(*output_mu);
      std::fprintf(stderr, "[%s] %.*s\n", child.c_str(), static_cast<int>(line.size()), line.data());
    };
  }
  absl::StatusOr<std::unique_ptr<serve::LocalCluster>> cluster = serve::LocalCluster::Start(options);
  if (!cluster.ok()) {
    std::fprintf(stderr, "chord serve: %s\n", cluster.status().ToString().c_str());
    return 1;
  }
  std::printf("chord serve: loader on %s, coordinator control on %s, %d workers x %d threads\n",
              (*cluster)->loader_endpoint().c_str(), (*cluster)->control_endpoint().c_str(), flags.workers,
              flags.threads);
  std::printf("chord serve: serving %s on %s\n", flags.model.c_str(), (*cluster)->grpc_address().c_str());
  std::fflush(stdout);

  const bool any_died = Supervise(**cluster);
  std::printf("chord serve: stopping\n");
  std::fflush(stdout);
  // The coordinator's drain, plus time to stop its servers and the other children.
  std::vector<std::string> unclean =
      (*cluster)->Stop(std::chrono::milliseconds(flags.grace_ms) + std::chrono::seconds(5));
  for (const std::string& line : unclean) std::fprintf(stderr, "chord serve: %s\n", line.c_str());
  std::printf("chord serve: stopped\n");
  std::fflush(stdout);
  return any_died || !unclean.empty() ? 1 : 0;
}

}  // namespace

Subcommand AddServeCommand(CLI::App& parent) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* app = parent.add_subcommand(
      "serve", "Serve a model on this machine: loader, coordinator and workers as child processes");
  app->add_option("--model", flags->model, "GGUF model (default: the cluster file's, else the bundled stories260K)");
  app->add_option("--workers", flags->workers, "worker processes (pipeline stages)")
      ->capture_default_str()->check(CLI::Range(1, 64));
  app->add_option("--port", flags->port, "gRPC port on 127.0.0.1 (0: a free one)")
      ->capture_default_str()->check(CLI::Range(0, 65535));
  app->add_option("--http-port", flags->http_port, "OpenAI-compatible HTTP port on 127.0.0.1 (off unless given)")
      ->check(CLI::Range(0, 65535));
  app->add_option("--chat-template", flags->chat_template,
                  "chat format for /v1/chat/completions (default: recognized from the model)");
  app->add_option("--api-key-file", flags->api_key_file,
                  "file whose first line is the bearer token gRPC and HTTP clients must send (or set CHORD_API_KEY)")
      ->check(CLI::ExistingFile);
  app->add_option("--tls-cert", flags->tls_cert, "PEM certificate (for 127.0.0.1): serve gRPC and HTTP over TLS")
      ->check(CLI::ExistingFile);
  app->add_option("--tls-key", flags->tls_key, "PEM private key of --tls-cert")->check(CLI::ExistingFile);
  app->add_option("--tls-client-ca", flags->tls_client_ca, "PEM CA: require client certificates it signed")
      ->check(CLI::ExistingFile);
  app->add_option("--tls-ca", flags->tls_ca, "PEM CA that signed --tls-cert (default: --tls-cert, self-signed)")
      ->check(CLI::ExistingFile);
  app->add_option("--kv-slots", flags->kv_slots, "sequences live at once (0: the coordinator's default)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--ctx-size", flags->ctx_size, "positions per sequence (0: the model's)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--threads", flags->threads, "compute threads per worker (0: cores / workers)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--grace-ms", flags->grace_ms,
                  "on SIGINT/SIGTERM, time in-flight requests get to finish")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{3600000}));
  app->add_option("--worker-timeout-ms", flags->worker_timeout_ms,
                  "a worker silent this long is lost and its layers re-planned (0: 2000 or the "
                  "cluster file's)")
      ->check(CLI::Range(int64_t{0}, int64_t{3600000}));
  app->add_option("--config", flags->config, "cluster YAML, also given to every child")->check(CLI::ExistingFile);
  app->add_flag("--quiet", flags->quiet, "do not copy the children's log lines to stderr");
  app->add_option("--backend", flags->backend, "the workers' compute backend: cpu or cuda (default: cpu)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app->add_option("--devices", flags->devices,
                  "with --backend cuda: the GPUs, dealt to the workers in turn (e.g. --devices 0,1 with "
                  "--workers 2: one per GPU; neighbouring GPU stages exchange activations over NCCL)")
      ->delimiter(',')
      ->check(CLI::NonNegativeNumber);
  app->add_option("--kv-tokens", flags->kv_tokens,
                  "positions each stage's paged KV cache holds, shared by the sequences (0: the "
                  "coordinator's default, 4 full contexts)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 31));
  app->add_option("--worker-budget", flags->worker_budget,
                  "memory for each worker's weights, e.g. 300K, 200M, 4G; a layer range over it "
                  "streams from the loader through a shard cache (default: unlimited)")
      ->check(ByteSizeValidator());
  app->add_option("--gpu-budget", flags->gpu_budget,
                  "with --backend cuda: GPU memory for each worker's weights, e.g. 2G; layers over "
                  "it stream from host memory each step (default: unlimited)")
      ->check(ByteSizeValidator());
  app->add_option("--prefetch-depth", flags->prefetch_depth,
                  "layers fetched ahead when a range streams (0: off; -1: derived from measured "
                  "fetch and compute times)")
      ->capture_default_str()
      ->check(CLI::Range(-1, 64));
  app->add_option("--loader-max-bandwidth", flags->loader_max_bandwidth,
                  "pace the loader to this many bytes/s, e.g. 500M, to play a slow disk or network")
      ->check(ByteSizeValidator());
  app->add_option("--loader-transport", flags->loader_transport,
                  "how workers get weights from the loader: shm (they map its file and take "
                  "checksums over a Unix socket), ipc (bytes over a Unix socket) or tcp (loopback)")
      ->capture_default_str()
      ->check(CLI::IsMember({"shm", "ipc", "tcp"}));
  return {app, [flags, app] { return RunServe(*app, *flags); }};
}

}  // namespace chord::cli
