// `chord-coordinator`: the gRPC front end. Learns the model from the loader,
// plans layer ranges over the workers that register, schedules requests.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "common/base/systemd_notify.h"
#include "common/config/cluster_config.h"
#include "common/config/coordinator_flags.h"
#include "common/config/curve_flags.h"
#include "common/metrics/chord_metrics.h"
#include "common/metrics/metrics_server.h"
#include "common/model/kv_pages.h"
#include "coordinator/api_security.h"
#include "coordinator/http/front_door.h"
#include "coordinator/server.h"
#include "loader/client/loader_client.h"

namespace {

int Fail(const absl::Status& status) {
  chord::log::Error("chord-coordinator: %s", status.ToString());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"chord-coordinator: serves chord.v1.Inference over gRPC"};
  std::string loader, config_path, control_bind, log_level = "info";
  bool log_json = false;
  int prefill_chunk = 256, replan_timeout_ms = 60000, busy_poll_us = -1;
  auto* loader_flag = app.add_option(
      "--loader", loader, "the loader's endpoint, e.g. tcp://127.0.0.1:5556 (default: --config's loader:)")
      ->envname("CHORD_LOADER");
  app.add_option("--config", config_path, "cluster YAML (its coordinator: section)")->check(CLI::ExistingFile);
  auto* control = app.add_option("--control-bind", control_bind, "control ROUTER endpoint (port 0: OS pick)");
  chord::CoordinatorFlags flags(app);
  app.add_option("--prefill-chunk", prefill_chunk, "prompt tokens per sequence per step")
      ->check(CLI::Range(int64_t{1}, chord::wire::kMaxStepTokens));
  app.add_option("--replan-timeout-ms", replan_timeout_ms,
                 "how long requests wait for a re-plan's stages to load")
      ->check(CLI::Range(100, 3600000));
  app.add_option("--busy-poll-us", busy_poll_us,
                 "while steps are out, poll for their answers without blocking for this long "
                 "after each launch or answer (a core busy meanwhile; no wake-up per answer); "
                 "0: off; -1: 20000 when every stage runs on a GPU, else off")
      ->check(CLI::Range(-1, 1000000))
      ->capture_default_str();
  app.add_option("--log-level", log_level, "debug, info, warn or error");
  app.add_flag("--log-json", log_json, "write log lines as JSON objects");
  int metrics_port = -1;
  std::string metrics_host = "127.0.0.1";
  app.add_option("--metrics-port", metrics_port, "Prometheus GET /metrics port (0: OS pick; -1: off)")
      ->check(CLI::Range(-1, 65535))
      ->envname("CHORD_METRICS_PORT");
  app.add_option("--metrics-host", metrics_host, "address the metrics server binds")
      ->envname("CHORD_METRICS_HOST");
  const chord::CurveFlags curve_flags(app);
  CLI11_PARSE(app, argc, argv);
  chord::log::Level level;
  if (!chord::log::ParseLevel(log_level, &level)) {
    std::fprintf(stderr, "chord-coordinator: unknown --log-level '%s'\n", log_level.c_str());
    return 2;
  }
  chord::log::Init(level, log_json);

  chord::CoordinatorSection s;  // the file's values, then the flags given
  std::optional<chord::ClusterConfig> config;
  if (!config_path.empty()) {
    absl::StatusOr<chord::ClusterConfig> loaded = chord::LoadClusterConfig(config_path);
    if (!loaded.ok()) return Fail(loaded.status());
    config = std::move(*loaded);
    s = config->coordinator;
    if (!loader_flag->count())
      loader = "tcp://" + config->loader.host + ":" + std::to_string(config->loader.port);
  }
  if (loader.empty()) return Fail(absl::InvalidArgumentError("--loader (or --config) is required"));
  s = flags.Apply(std::move(s));
  absl::StatusOr<chord::wire::CurveSetup> curve =
      chord::wire::LoadCurveSetup(curve_flags.Resolve(config ? &*config : nullptr, s.curve_key));
  if (!curve.ok()) return Fail(curve.status());
  if (absl::Status needed = chord::wire::RequireLoaderKey(*curve); !needed.ok()) return Fail(needed);
  chord::ClusterConfig effective = config.value_or(chord::ClusterConfig{});
  effective.coordinator = s;
  chord::log::Info("effective config (file, then variables and flags):\n%s", effective.ToYaml());
  if (absl::Status valid = chord::ValidateCoordinatorSection(s); !valid.ok()) return Fail(valid);
  absl::StatusOr<std::string> api_key = chord::coordinator::ResolveApiKey(s.api_key_file, std::getenv("CHORD_API_KEY"));
  if (!api_key.ok()) return Fail(api_key.status());
  if (!control->count()) control_bind = "tcp://" + s.host + ":" + std::to_string(s.control_port);
  chord::log::Info("chord-coordinator: loader %s, grpc %s:%d, control %s, min_workers %d, kv_slots %d, "
                   "ctx_size %d, kv_type %s, exact %s, max_queue %d, prefill_chunk %d, worker_timeout %d ms, "
                   "grace %d ms, step_timeout %d ms, chained steps %s, auth %s, tls %s, links %s",
                   loader, s.host, s.grpc_port, control_bind, s.min_workers, s.kv_slots, s.ctx_size,
                   s.kv_type, s.exact ? "on" : "off", s.max_queue, prefill_chunk, s.worker_timeout_ms, s.grace_ms,
                   s.step_timeout_ms, s.chain_steps ? "on" : "off", api_key->empty() ? "off" : "bearer",
                   s.tls_cert.empty() ? "off" : s.tls_client_ca.empty() ? "on" : "mutual",
                   curve->enabled() ? "CURVE" : "plaintext");

  sigset_t signals;  // taken by sigwait below; blocked before any thread starts
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  chord::metrics::Registry registry;
  chord::metrics::CoordinatorMetrics coordinator_metrics(registry);
  auto metrics_server =
      chord::metrics::MetricsServer::StartUnlessOff(registry, metrics_host, metrics_port);
  if (!metrics_server.ok()) return Fail(metrics_server.status());

  zmq::context_t context(1);
  // After the context: it owns a socket of it and must close first.
  auto zap = chord::wire::ZapHandler::StartFor(context, *curve);
  if (!zap.ok()) return Fail(zap.status());
  chord::LoaderClientOptions loader_options;
  loader_options.node_id = "coordinator";
  loader_options.role = "coordinator";
  loader_options.curve = *curve;
  auto client = chord::LoaderClient::Connect(context, loader, "", loader_options);
  if (!client.ok()) return Fail(client.status());
  auto info = (*client)->FetchModelInfo();
  if (!info.ok()) return Fail(info.status());
  auto model = chord::coordinator::MakeModelContext(info->model_sha256, info->file_name, std::move(info->header));
  if (!model.ok()) return Fail(model.status());
  const int64_t n_ctx = s.ctx_size > 0 ? s.ctx_size : (*model)->config.n_ctx_train;
  chord::log::Info("model %s (%s), %d layers, context %d", (*model)->file_name, (*model)->sha256,
                   (*model)->config.n_layer, n_ctx);

  chord::coordinator::ServerOptions options;
  options.grpc_host = s.host;
  options.grpc_port = s.grpc_port;
  options.scheduler.control_bind = control_bind;
  options.scheduler.max_queue = s.max_queue;
  options.scheduler.prefill_chunk = prefill_chunk;
  options.scheduler.replan_timeout = std::chrono::milliseconds(replan_timeout_ms);
  options.scheduler.step_timeout = std::chrono::milliseconds(s.step_timeout_ms);
  options.scheduler.busy_poll = std::chrono::microseconds(busy_poll_us);
  options.scheduler.chain_steps = s.chain_steps;
  options.scheduler.curve = *curve;
  if (*metrics_server != nullptr) options.scheduler.metrics = &coordinator_metrics;
  options.scheduler.pool = {s.min_workers, s.kv_slots, static_cast<int>(n_ctx), s.kv_type, loader};
  options.scheduler.pool.worker_timeout = std::chrono::milliseconds(s.worker_timeout_ms);
  options.scheduler.pool.exact = s.exact;
  // KV memory is shared by the sequences in pages; by default it holds four
  // full contexts, not a context per slot, and the newest sequence is
  // preempted (and recomputed later) when running ones outgrow it.
  options.scheduler.pool.kv_tokens =
      s.kv_tokens > 0 ? s.kv_tokens : std::min<int64_t>(s.kv_slots, 4) * n_ctx;
  if (auto pages = chord::KvPageCount(options.scheduler.pool.kv_tokens, s.kv_slots, n_ctx,
                                      options.scheduler.pool.kv_page_size);
      !pages.ok()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("kv_tokens: ", pages.status().message())));
  }
  chord::log::Info("KV cache: %d positions per stage in pages of %d, for up to %d sequences",
                   options.scheduler.pool.kv_tokens, options.scheduler.pool.kv_page_size, s.kv_slots);
  options.scheduler.pool.heartbeat_interval =  // several chances to answer before the timeout
      std::min(options.scheduler.pool.heartbeat_interval,
               options.scheduler.pool.worker_timeout / 4);
  options.limits.n_ctx = static_cast<int>(n_ctx);
  options.limits.max_tokens_limit = static_cast<int>(n_ctx);
  options.chat_template = s.chat_template;
  options.api_key = *api_key;
  options.tls = {s.tls_cert, s.tls_key, s.tls_client_ca};
  if (!options.api_key.empty() && !options.tls.enabled() && s.host != "127.0.0.1" && s.host != "localhost") {
    chord::log::Warn("grpc: the API key crosses the network in clear text; configure --tls-cert and --tls-key");
  }
  auto server = chord::coordinator::CoordinatorServer::Start(context, options, **model);
  if (!server.ok()) return Fail(server.status());
  std::printf("chord-coordinator serving gRPC on %s\n", (*server)->grpc_address().c_str());
  std::printf("chord-coordinator control on %s\n", (*server)->control_endpoint().c_str());
  const chord::coordinator::http::FrontDoorOptions http{s.http_port, s.http_bind_host(), s.chat_template,
                                                       options.api_key, options.tls};
  auto front_door = chord::coordinator::http::FrontDoor::Start(http, **model, (*server)->scheduler(),
                                                               options.limits);
  if (!front_door.ok()) return Fail(front_door.status());
  if (*front_door != nullptr) std::printf("chord-coordinator serving HTTP on %s\n", (*front_door)->address().c_str());
  if (*metrics_server != nullptr) {
    std::printf("chord-coordinator metrics on %s:%d\n", metrics_host.c_str(), (*metrics_server)->port());
  }
  std::fflush(stdout);
  chord::NotifySystemdOrWarn("READY=1");  // serving requests (health says when the plan is ready)

  int received = 0;
  sigwait(&signals, &received);
  chord::NotifySystemdOrWarn("STOPPING=1");
  chord::log::Info("chord-coordinator: signal %d, draining", received);
  // HTTP streams end with the scheduler.
  (*server)->Shutdown(std::chrono::milliseconds(s.grace_ms));
  front_door->reset();
  // The workers got their Shutdown from the scheduler; the loader gets its own.
  if (absl::Status asked = (*client)->RequestShutdown("the coordinator is shutting down");
      !asked.ok()) {
    chord::log::Warn("chord-coordinator: could not ask the loader to stop: %s", asked.ToString());
  }
  return 0;
}
