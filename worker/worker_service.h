// The worker process's service: one pipeline stage, driven by the coordinator
// (proto/PROTOCOL.md). It binds a PULL data socket, keeps a DEALER to the
// coordinator's control socket (Hello, RegisterWorker, heartbeats; it says
// Hello and registers again whenever the coordinator has been silent for
// `coordinator_timeout`, e.g. after a coordinator restart), loads the layer
// range it is assigned from the loader, and runs micro-batch steps inline,
// forwarding activations to the next stage or, on the last stage, sending the
// sampled tokens to the coordinator.
//
// Concurrency: Run() is one thread that polls the control and data sockets
// together and computes steps inline on the ThreadPool. Loading a stage runs
// on a second thread (one per assignment, never per step) so that heartbeats
// are answered while weights arrive; it owns its loader connection and hands
// the built stage back to Run()'s thread.
//
// Errors: nothing a peer sends crashes the worker. A step that cannot run is
// answered with StepResult{step_id, status} on the control socket and dropped,
// as is a step that arrives after its deadline (DEADLINE_EXCEEDED, not run);
// a failed assignment is answered with StageReady{status}.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/metrics/chord_metrics.h"
#include "common/wire/curve.h"
#include "common/wire/handshake.h"
#include "common/wire/wire.h"
#include "kernels/cpu/thread_pool.h"
#include "loader/client/loader_client.h"
#include "worker/stage_executor.h"

namespace chord {

struct WorkerOptions {
  std::string worker_id;                        // required; also the DEALER identity
  std::string coordinator_endpoint;             // required, e.g. tcp://127.0.0.1:5555
  std::string data_bind = "tcp://127.0.0.1:0";  // port 0 or *: the OS picks one
  uint64_t memory_budget_bytes = 0;             // for weights; 0: unlimited
  // cuda: for weights in GPU memory; 0: unlimited. Layers beyond it stream
  // from host memory (the memory budget's) each step.
  uint64_t gpu_memory_budget_bytes = 0;
  int prefetch_depth = -1;  // layers fetched ahead when the range streams; 0: off; -1: derived
  std::string backend = "cpu";
  int device = 0;
  uint32_t max_kv_slots = 0;             // largest kv_slots accepted; 0: no limit
  uint32_t max_n_ctx = 0;                // largest n_ctx accepted; 0: no limit
  double weight_bytes_per_second = 0.0;  // 0: measured at start-up
  std::chrono::milliseconds hello_retry{500};
  std::chrono::milliseconds coordinator_timeout{2000};
  // Waiting for the next stage to take a step. The coordinator keeps at most
  // n_stages steps in flight, far below the high-water mark, so a stage that
  // takes none is gone (or not connected yet); short, because the control loop
  // (heartbeats) waits meanwhile, and the coordinator replays a step that
  // failed this way.
  std::chrono::milliseconds forward_timeout{250};
  int high_water_mark = 64;  // messages queued per socket
  // For this many microseconds after a step, the worker waits for the next
  // message by polling without blocking (wire/poll.h): the next step of a
  // busy pipeline is taken without a thread's wake-up, at the price of a core
  // meanwhile. 0: always block; negative: wire::kAutoBusyPoll on the cuda
  // backend (its host cores idle while the GPU runs), else 0.
  int64_t busy_poll_us = -1;
  metrics::WorkerMetrics* metrics = nullptr;  // optional; must outlive the service
  // CURVE when enabled: the data socket is a server (the context's ZAP handler
  // admits peers); control and next-stage links are clients of the keys the
  // setup and the plan name.
  wire::CurveSetup curve;
  // NCCL links to neighbouring GPU stages (a CUDA worker built with NCCL):
  // registered as `nccl`, the coordinator groups it with them. Bounded waits:
  // forming the group once this stage is loaded, and any one transfer.
  bool nccl = true;
  // Steps of fewer rows than this send their activations over ZeroMQ even
  // when a link exists. 1: every step takes the link. The receiving stage
  // queues its layers behind the receive while the sender still computes, so
  // even a one-token step's hop costs no host round trip (two H200 stages,
  // llama2-7b: 2.59 ms a token with one-token steps over ZeroMQ, 2.46 over
  // the link, against 2.39 on one GPU; BENCHMARKS.md, "Serving").
  int64_t nccl_min_rows = 1;
  std::chrono::milliseconds nccl_connect_timeout{45000};
  std::chrono::milliseconds nccl_transfer_timeout{10000};
};

// The NCCL group of one assignment, shared by the control loop (which gets
// the group's unique id: made here on rank 0, relayed by the coordinator to
// the others) and the loading thread (which waits for it, then joins).
struct NcclRendezvous {
  uint64_t plan_version = 0;
  int rank = 0;
  int n_ranks = 0;
  std::mutex mutex;
  std::condition_variable arrived;
  std::optional<std::string> unique_id;  // guarded by mutex
  std::atomic<bool> cancelled{false};    // a newer plan came
};

// Connects to a loader; LoaderClient::Connect in production, a fake in tests.
using LoaderConnector = std::function<absl::StatusOr<std::unique_ptr<LoaderClient>>(
    zmq::context_t& context, const std::string& endpoint,
    const std::string& expected_model_sha256)>;

class WorkerService {
 public:
  // Binds the data socket. INVALID_ARGUMENT for missing options,
  // UNAVAILABLE when the data endpoint cannot be bound.
  static absl::StatusOr<std::unique_ptr<WorkerService>> Create(zmq::context_t& context,
                                                               const WorkerOptions& options,
                                                               ThreadPool& pool,
                                                               LoaderConnector connect_loader);
  ~WorkerService();

  // The endpoint the data socket is bound to (the port the OS chose).
  const std::string& data_endpoint() const { return data_endpoint_; }
  double weight_bytes_per_second() const { return options_.weight_bytes_per_second; }

  // Runs until a Shutdown message or Stop(). OK on a clean stop.
  absl::Status Run();

  // Asks Run() to return; callable from any thread and from a signal handler.
  void Stop() { stop_.store(true, std::memory_order_relaxed); }

 private:
  enum class Link { kHello, kRegister, kRegistered };
  using Clock = std::chrono::steady_clock;
  struct Loaded {
    wire::pb::AssignLayers assignment;
    absl::StatusOr<std::unique_ptr<StageExecutor>> executor;
  };

  WorkerService(zmq::context_t& context, const WorkerOptions& options, ThreadPool& pool,
                LoaderConnector connect_loader)
      : context_(context),
        options_(options),
        pool_(pool),
        connect_loader_(std::move(connect_loader)) {}

  void ConnectControl();
  void SendControl(const wire::pb::Envelope& envelope);
  void KeepLink();
  void HandleControl(const wire::Message& message);
  void HandleHello(const wire::pb::Hello& hello);
  void HandleRegisterReply(const wire::pb::RegisterReply& reply);
  void HandleAssign(const wire::pb::AssignLayers& assignment);
  // Sets up nccl_ for the assignment (rank 0 makes and announces the id).
  void PrepareNccl(const wire::pb::AssignLayers& assignment);
  void HandleNcclUniqueId(const wire::pb::NcclUniqueId& id);
  bool nccl_capable() const;  // and registered as such
  void StartLoad(const wire::pb::AssignLayers& assignment);
  void FinishLoad();
  absl::Status InstallStage(const wire::pb::AssignLayers& assignment,
                            std::unique_ptr<StageExecutor> executor);
  // A PUSH socket to another stage's data endpoint (`peer` names it in errors),
  // watched for its handshake by `watch` when given.
  absl::Status ConnectData(const std::string& endpoint, const std::string& public_key,
                           const char* peer, std::optional<zmq::socket_t>* socket,
                           std::optional<wire::HandshakeWatch>* watch = nullptr);
  // The last of several stages: once its link to stage 0 completes its
  // handshake, says so to the coordinator (StageReady again), which then
  // chains steps.
  void WatchFirstStageLink();
  void SendStageReady(uint64_t plan_version, const absl::Status& status);
  // Runs while a step waits for weights: answers heartbeats, keeps every
  // other control message for after the step.
  void ServiceControlDuringStep();
  void LogShardCacheStats(bool summary);
  void HandleData();
  // The tokens a step sampled, for a step chained to it.
  struct Sampled {
    uint64_t step_id = 0;
    std::vector<std::pair<uint64_t, uint32_t>> tokens;  // (sequence id, token)
  };
  absl::Status RunStep(const wire::Message& message);
  // A chained step (StepHeader.follows_step_id) with its pending tokens
  // filled in from the tokens in `sampled` (sampled_ entry). INVALID_ARGUMENT
  // when one is missing.
  absl::StatusOr<wire::Message> FillChainedStep(const wire::Message& message,
                                                const Sampled& sampled) const;
  // Stage 0: where the tokens of the step a chained step follows are, if
  // known (one-stage pipelines: sampled here; else the last stage's
  // StepResult on the data socket).
  const Sampled* SampledBy(uint64_t step_id) const;
  // Keeps a step's sampled tokens in sampled_.
  void Remember(const wire::pb::StepResult& result);
  // Stage 0: a StepResult from the last stage (the tokens of a step that a
  // chained step may follow); runs the held steps it completes.
  void HandleSampledTokens(const wire::pb::StepResult& result);
  // Stage 0: held chained steps whose tokens are in, in arrival order; those
  // past their deadline are dropped with DEADLINE_EXCEEDED.
  void RunHeldSteps();
  // Runs a received step, and handles its outcome (timing, metrics, errors).
  void RunReceivedStep(const wire::Message& message, int64_t arrived_unix_micros);
  absl::Status Forward(const wire::Message& message);
  void SendStepError(uint64_t plan_version, uint64_t step_id, const absl::Status& status);
  void LogDroppedStep(uint64_t step_id, const absl::Status& status);
  // At debug level, one line a step run here: when it arrived (Unix
  // microseconds, so that the lines of every process on a host line up into
  // the pipeline's timeline) and when its phases ended, from its start.
  void LogStepTiming(const wire::pb::StepHeader& step, int64_t arrived_unix_micros,
                     Clock::time_point started, Clock::time_point ended);

  zmq::context_t& context_;
  WorkerOptions options_;
  ThreadPool& pool_;
  LoaderConnector connect_loader_;
  std::atomic<bool> stop_{false};
  bool shutdown_ = false;

  std::optional<zmq::socket_t> control_;
  std::optional<zmq::socket_t> data_;
  std::optional<zmq::socket_t> next_;  // PUSH to the next stage
  std::string data_endpoint_;
  std::string gpu_uuid_;  // CUDA workers: their GPU's
  Link link_ = Link::kHello;
  Clock::time_point last_sent_{};
  Clock::time_point last_heard_{};
  // Hellos go unanswered since then (zero: answered); warned about every
  // kUnansweredWarning, since a refused CURVE key looks like silence.
  static constexpr std::chrono::seconds kUnansweredWarning{10};
  Clock::time_point hello_unanswered_since_{};
  Clock::time_point last_unanswered_warning_{};
  std::string model_sha256_;  // from the coordinator's Hello

  std::unique_ptr<StageExecutor> executor_;
  std::shared_ptr<NcclRendezvous> nccl_;  // of the latest assignment in an NCCL group
  uint64_t plan_version_ = 0;             // of the stage held (or being loaded)
  std::future<Loaded> loading_;
  std::optional<wire::pb::AssignLayers> queued_;  // arrived while loading
  std::vector<float> activations_;
  wire::pb::Envelope forwarded_;  // a step's header as forwarded, when it differs
  // The tokens of the last steps sampled (stage 0 of a one-stage pipeline)
  // or handed over by the last stage, for the steps chained to them; the
  // newest kMaxSampled steps are kept.
  static constexpr size_t kMaxSampled = 64;
  std::deque<Sampled> sampled_;
  // Stage 0 of several: chained steps whose tokens have not come yet, with
  // when they arrived (Unix microseconds); at most kMaxHeld (a coordinator
  // has at most one behind each step out).
  static constexpr size_t kMaxHeld = 256;
  std::vector<std::pair<wire::Message, int64_t>> held_;
  // Stage 0 of several: the slots released by held chained steps, which go
  // with the next step that runs here instead (the steps after a held one may
  // count on those KV pages, here and at the later stages).
  wire::pb::FreeSlots released_ahead_;
  // The last of several stages: PUSH to stage 0, watched until its handshake
  // (first_watch_, destroyed before first_), and whether that came.
  std::optional<zmq::socket_t> first_;
  std::optional<wire::HandshakeWatch> first_watch_;
  bool first_linked_ = false;
  std::vector<wire::Message> deferred_control_;  // arrived during a step
  // Steps dropped for arriving after their deadline are logged at most once
  // per interval.
  static constexpr std::chrono::seconds kLateStepLogInterval{1};
  Clock::time_point late_step_logged_{};
  Clock::time_point last_step_{};  // when the last step's handling ended (busy_poll)
  int64_t late_steps_unlogged_ = 0;
  ShardCacheStats reported_cache_stats_;  // what the metrics have counted
  Clock::time_point cache_stats_logged_{};
};

}  // namespace chord
