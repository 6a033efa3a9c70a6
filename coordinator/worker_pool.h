// The coordinator's view of its workers: the Hello/RegisterWorker handshake,
// the layer plan (made once min_workers have registered, remade over every live
// worker when one joins, restarts or is lost), StageReady tracking, heartbeats
// and liveness (a worker silent for worker_timeout is lost).
//
// A state machine without sockets: every call returns the control messages to
// send (to a ROUTER identity), so it is tested without ZeroMQ. Not thread-safe:
// owned by the scheduler thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "chord/v1/inference.pb.h"
#include "common/model/kv_pages.h"
#include "common/wire/wire.h"
#include "coordinator/model_context.h"
#include "coordinator/nccl_groups.h"

namespace chord::coordinator {

using Clock = std::chrono::steady_clock;

struct WorkerPoolOptions {
  int min_workers = 1;
  int kv_slots = 16;
  int n_ctx = 0;
  std::string kv_type = "f32";
  std::string loader_endpoint;
  bool exact = false;  // AssignLayers.exact
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds worker_timeout{2000};  // silence before a worker is declared lost
  int64_t kv_tokens = 0;  // every stage's KV pool (common/model/kv_pages.h); 0: kv_slots x n_ctx
  int64_t kv_page_size = kDefaultKvPageSize;
};

struct OutgoingControl {
  std::string identity;
  wire::pb::Envelope envelope;
};

class WorkerPool {
 public:
  WorkerPool(WorkerPoolOptions options, const ModelContext& model);

  // A control message (other than StepResult) from the peer `identity`.
  std::vector<OutgoingControl> OnMessage(const std::string& identity, const wire::pb::Envelope& envelope,
                                         Clock::time_point now);
  // Heartbeats when due; declares silent workers lost (and re-plans).
  std::vector<OutgoingControl> Tick(Clock::time_point now);
  // The same message to every registered live worker.
  std::vector<OutgoingControl> Broadcast(const wire::pb::Envelope& envelope) const;

  // Every stage of the current plan is held by a live, ready worker.
  bool serving() const;
  // The last stage's sampled tokens reach stage 0 (one stage, or the last of
  // several reported its link to stage 0 up): steps may be chained.
  bool tokens_reach_first_stage() const;
  // OK while the current plan can still become (or stay) serving: every stage
  // is held by a live worker and none failed to load. UNAVAILABLE, saying why,
  // when no plan was made yet or no live worker can take the layers.
  absl::Status Capacity() const;
  uint64_t plan_version() const { return plan_version_; }
  int n_stages() const { return n_stages_; }
  // Every stage of the current plan runs on a GPU (its host cores are then
  // free while a step runs).
  bool stages_on_gpus() const { return n_stages_ > 0 && stages_on_gpus_; }
  const std::string& stage0_endpoint() const { return stage0_endpoint_; }
  const std::string& stage0_public_key() const { return stage0_public_key_; }  // CURVE; may be empty
  // True once after the plan changed or a stage's worker was lost: sequences in
  // flight on the old plan cannot continue.
  bool TakePlanDisrupted();
  void FillServerInfo(chord::v1::ServerInfo* info) const;

 private:
  struct Worker {
    bool hello = false;
    bool registered = false;
    bool alive = false;
    bool ready = false;
    wire::pb::RegisterWorker registration;
    int first_layer = 0;
    int end_layer = 0;
    int stage_index = -1;
    NcclPlace nccl;  // its place in an NCCL group of the current plan
    bool first_stage_linked = false;  // StageReady.first_stage_linked
    Clock::time_point last_seen;
  };

  void OnRegister(const std::string& identity, const wire::pb::RegisterWorker& registration,
                  Clock::time_point now, std::vector<OutgoingControl>* out);
  void OnStageReady(const std::string& identity, const wire::pb::StageReady& ready);
  // Relays a group's unique id from its rank 0 to the group's other ranks.
  void OnNcclUniqueId(const std::string& identity, const wire::pb::NcclUniqueId& id,
                      std::vector<OutgoingControl>* out);
  void Replan(std::vector<OutgoingControl>* out);
  // Marks the worker lost; true when it held a stage (the plan must be remade).
  bool Lose(const std::string& identity, Worker& worker, const char* why);

  WorkerPoolOptions options_;
  const ModelContext& model_;
  std::map<std::string, Worker> workers_;  // by ROUTER identity; ordered for deterministic plans
  uint64_t plan_version_ = 0;
  int n_stages_ = 0;
  bool stages_on_gpus_ = false;
  std::string stage0_endpoint_;
  std::string stage0_public_key_;
  bool disrupted_ = false;
  std::string plan_error_;  // a stage of the current plan failed to load
  Clock::time_point last_heartbeat_{};
};

}  // namespace chord::coordinator
