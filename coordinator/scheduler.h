// The coordinator's scheduler: one thread that owns the ZeroMQ sockets (the
// control ROUTER the workers connect to, and a PUSH to stage 0) and every
// running sequence.
//
// gRPC handler threads Submit() validated requests and Abort()/Cancel() them;
// those calls only post commands to the scheduler thread (waking it through an
// eventfd in its poll set) and return at once. Each accepted request gets a
// RequestStream the handler reads events from.
//
// Continuous batching: requests are admitted while a KV slot (ids
// 0..kv_slots-1, the same on every worker) and the KV pages for their prompt
// are free. Each micro-batch holds every sequence that has tokens to feed and
// is not already in flight: a prompt in chunks of at most prefill_chunk tokens
// (sampling after the last one), then one token per decode step. Up to
// n_stages micro-batches are in flight. A sequence that needs a page when none
// is free preempts the newest running sequence (proto/PROTOCOL.md, "KV pages
// and preemption"), which is recomputed from its journal when readmitted.
//
// Worker loss: when the plan changes (a stage's worker was lost, restarted or
// a worker joined), the steps in flight are dropped (their tokens were never
// sent to a client, and late answers carry an old plan_version) and every
// running sequence is rewound: once every stage of the new plan is ready, its
// journal (prompt plus every token already streamed) is fed again from
// position 0 as a prefill, which rebuilds the KV caches and gives the last
// stage the same token history, so the next token is the one an undisturbed
// run would have sampled. A step a stage could not forward (UNAVAILABLE) is
// retried the same way after worker_timeout, by when a lost stage has been
// replaced. Every step carries a deadline, step_timeout after its launch:
// stages drop a step that arrives later (DEADLINE_EXCEEDED), and a step with
// no StepResult by then is given up; both are replayed like UNAVAILABLE.
// Requests end with UNAVAILABLE when no live worker can take the layers, when
// the new plan is not ready within replan_timeout, when a sequence's steps
// failed that way too often, or when a step fails for another reason.
//
// Thread-safety: the public methods are thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <set>
#include <vector>

#include "absl/status/statusor.h"
#include "chord/v1/inference.pb.h"
#include "common/metrics/chord_metrics.h"
#include "common/wire/curve.h"
#include "coordinator/model_context.h"
#include "coordinator/request_stream.h"
#include "coordinator/request_validation.h"
#include "coordinator/worker_pool.h"
#include "zmq.hpp"

namespace chord::coordinator {

struct SchedulerOptions {
  WorkerPoolOptions pool;
  std::string control_bind = "tcp://127.0.0.1:0";
  int max_queue = 256;
  int prefill_chunk = 256;
  std::chrono::milliseconds tick{20};  // liveness / heartbeat resolution
  // How long running and queued requests wait for a new plan's stages to be
  // ready (weights fetched) after a re-plan before they end with UNAVAILABLE.
  std::chrono::milliseconds replan_timeout{60000};
  // A step's deadline, from its launch: stages drop it past then, and the
  // scheduler replays its sequences when no StepResult came by then.
  std::chrono::milliseconds step_timeout{60000};
  // While steps are out, for this long after a launch or an answer, the
  // scheduler waits for the next message by polling without blocking
  // (wire/poll.h): an answer is taken without a thread's wake-up, at the
  // price of a core meanwhile. 0: always block. Negative: kAutoBusyPoll when
  // every stage of the plan runs on a GPU, else 0 (CPU stages need the cores).
  std::chrono::microseconds busy_poll{-1};
  // While a step runs, its sampling sequences' next step is already sent,
  // chained to it (PROTOCOL.md, "Chained steps"): stage 0 fills in the token
  // the step samples (its own, or the last stage's) and runs on, so the
  // coordinator's round trip is off the path from one token to the next. A
  // sequence that ends (a stop token, a stop string) leaves one extra token
  // computed and dropped.
  bool chain_steps = true;
  // CURVE when enabled: the control socket is a server (the context's ZAP
  // handler admits workers); the data link to stage 0 a client of its key.
  wire::CurveSetup curve;
  metrics::CoordinatorMetrics* metrics = nullptr;  // optional; must outlive the scheduler
};

class SchedulerCore;

class Scheduler {
 public:
  // Binds the control socket and starts the thread. UNAVAILABLE when the
  // endpoint cannot be bound. `model` must outlive the scheduler.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Start(zmq::context_t& context,
                                                          SchedulerOptions options,
                                                          const ModelContext& model);
  ~Scheduler();  // stops the thread (running requests end with UNAVAILABLE)

  const std::string& control_endpoint() const { return control_endpoint_; }

  // RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE when not serving
  // (except while a re-plan that can succeed is loading: the request waits) or
  // draining, ALREADY_EXISTS for a request id that is still running.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(ValidatedRequest request);
  // Ends the request with finish reason ABORT; false when it is not known.
  bool Abort(const std::string& request_id);

  bool serving() const { return serving_.load(); }
  // Called on the scheduler thread whenever serving() changes.
  void SetServingCallback(std::function<void(bool)> callback);
  chord::v1::ServerInfo ServerInfo() const;

  // Stops admitting, lets in-flight requests finish within `grace`, aborts the
  // rest, sends Shutdown to every worker and stops the thread.
  void Drain(std::chrono::milliseconds grace);

 private:
  friend class SchedulerCore;
  Scheduler() = default;

  struct Command {
    enum class Kind { kSubmit, kAbort, kShutdown } kind;
    std::string request_id;
    std::shared_ptr<RequestStream> stream;
    ValidatedRequest request;
    Clock::time_point accepted;
  };
  void Post(Command command);
  std::vector<Command> TakeCommands();

  std::string control_endpoint_;
  int wake_fd_ = -1;
  std::atomic<bool> serving_{false};
  std::atomic<bool> accepting_{false};  // serving, or recovering from a lost stage
  std::atomic<bool> draining_{false};
  std::atomic<int> queued_{0};
  std::atomic<int> running_{0};
  int max_queue_ = 0;

  mutable std::mutex mutex_;  // guards the members below
  std::vector<Command> commands_;
  std::set<std::string> live_ids_;  // accepted and not yet ended
  chord::v1::ServerInfo info_;
  std::function<void(bool)> serving_callback_;

  std::unique_ptr<SchedulerCore> core_;
  std::thread thread_;
};

}  // namespace chord::coordinator
