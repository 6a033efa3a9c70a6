#include "coordinator/worker_pool.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/log.h"
#include "coordinator/planner.h"

namespace chord::coordinator {
namespace {

wire::pb::Envelope ReplyHello(const std::string& model_sha256, const absl::Status& status) {
  wire::pb::Envelope envelope;
  *envelope.mutable_hello() = wire::MakeHello("coordinator", "coordinator", model_sha256);
  if (!status.ok()) *envelope.mutable_hello()->mutable_status() = wire::ToProto(status, "coordinator");
  return envelope;
}

wire::pb::Envelope RegisterReply(const absl::Status& status) {
  wire::pb::Envelope envelope;
  if (!status.ok()) {
    *envelope.mutable_register_reply()->mutable_status() = wire::ToProto(status, "coordinator");
  } else {
    envelope.mutable_register_reply();
  }
  return envelope;
}

// A registration the pool could act on: a plan sends other workers to
// `data_endpoint` and weighs the worker by its speed, so a nonsensical one
// (from a broken or hostile peer) is refused instead of stalling every request
// until the bogus stage times out.
absl::Status CheckRegistration(const wire::pb::RegisterWorker& r) {
  constexpr size_t kMaxIdBytes = 256;
  constexpr size_t kMaxEndpointBytes = 1024;
  if (r.worker_id().empty() || r.worker_id().size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker_id must have 1 to ", kMaxIdBytes, " bytes"));
  }
  const std::string& endpoint = r.data_endpoint();
  const bool tcp = endpoint.rfind("tcp://", 0) == 0 && endpoint.size() > 6;
  const bool ipc = endpoint.rfind("ipc://", 0) == 0 && endpoint.size() > 6;
  if ((!tcp && !ipc) || endpoint.size() > kMaxEndpointBytes) {
    return absl::InvalidArgumentError("data_endpoint must be a tcp:// or ipc:// address");
  }
  if (r.gpu_uuid().size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("gpu_uuid must have at most ", kMaxIdBytes, " bytes"));
  }
  if (!std::isfinite(r.weight_bytes_per_second()) || r.weight_bytes_per_second() < 0) {
    return absl::InvalidArgumentError("weight_bytes_per_second must be finite and >= 0");
  }
  return absl::OkStatus();
}

}  // namespace

WorkerPool::WorkerPool(WorkerPoolOptions options, const ModelContext& model)
    : options_(std::move(options)), model_(model) {}

std::vector<OutgoingControl> WorkerPool::OnMessage(const std::string& identity,
                                                   const wire::pb::Envelope& envelope,
                                                   Clock::time_point now) {
  std::vector<OutgoingControl> out;
  switch (envelope.body_case()) {
    case wire::pb::Envelope::kHello: {
      const absl::Status status = wire::CheckHello(envelope.hello(), model_.sha256);
      if (!status.ok()) log::Warn("refusing peer %s: %s", identity, status.ToString());
      out.push_back({identity, ReplyHello(model_.sha256, status)});
      if (status.ok()) {
        Worker& worker = workers_[identity];
        // A worker says Hello when it starts (or after the coordinator went
        // silent): one that is registered and alive here is a new process
        // under the same id, and the old one's stage and KV cache are gone.
        if (worker.registered && worker.alive && Lose(identity, worker, "it said Hello again")) {
          Replan(&out);
        }
        worker.hello = true;
        worker.last_seen = now;
      }
      break;
    }
    case wire::pb::Envelope::kRegisterWorker:
      OnRegister(identity, envelope.register_worker(), now, &out);
      break;
    case wire::pb::Envelope::kStageReady:
      OnStageReady(identity, envelope.stage_ready());
      break;
    case wire::pb::Envelope::kNcclUniqueId:
      OnNcclUniqueId(identity, envelope.nccl_unique_id(), &out);
      break;
    case wire::pb::Envelope::kHeartbeat:
    case wire::pb::Envelope::kStatus:
    case wire::pb::Envelope::BODY_NOT_SET:  // a StepResult, handled by the scheduler
      break;
    default:
      log::Warn("unexpected control message %d from %s", static_cast<int>(envelope.body_case()), identity);
      break;
  }
  auto it = workers_.find(identity);
  if (it != workers_.end() && it->second.alive) it->second.last_seen = now;
  return out;
}

void WorkerPool::OnRegister(const std::string& identity, const wire::pb::RegisterWorker& registration,
                            Clock::time_point now, std::vector<OutgoingControl>* out) {
  auto it = workers_.find(identity);
  if (it == workers_.end() || !it->second.hello) {
    out->push_back({identity, RegisterReply(absl::FailedPreconditionError("send Hello first"))});
    return;
  }
  if (const absl::Status valid = CheckRegistration(registration); !valid.ok()) {
    log::Warn("refusing the registration of peer %s: %s", absl::CHexEscape(identity), valid.message());
    out->push_back({identity, RegisterReply(valid)});
    return;
  }
  for (const auto& [other_identity, other] : workers_) {
    if (other_identity != identity && other.alive &&
        other.registration.worker_id() == registration.worker_id()) {
      out->push_back({identity, RegisterReply(absl::AlreadyExistsError(
                                    "a live worker with id " + registration.worker_id() + " exists"))});
      return;
    }
  }
  Worker& worker = it->second;
  if (worker.alive && worker.registered) {
    out->push_back({identity, RegisterReply(absl::AlreadyExistsError("already registered"))});
    return;
  }
  worker.registered = worker.alive = true;
  worker.ready = false;
  worker.registration = registration;
  worker.last_seen = now;
  log::Info("worker %s registered (data %s, %.3g bytes/s)", registration.worker_id(),
            registration.data_endpoint(), registration.weight_bytes_per_second());
  out->push_back({identity, RegisterReply(absl::OkStatus())});
  Replan(out);
}

void WorkerPool::OnStageReady(const std::string& identity, const wire::pb::StageReady& ready) {
  auto it = workers_.find(identity);
  if (it == workers_.end() || !it->second.alive || ready.plan_version() != plan_version_) return;
  if (ready.has_status() && ready.status().code() != 0) {
    log::Error("worker %s failed to load its stage: %s", identity, ready.status().message());
    plan_error_ = "worker " + identity + " failed to load its layers: " + ready.status().message();
    return;
  }
  if (it->second.ready) {
    // Again, from the last stage: its link to stage 0 came up after it was ready.
    if (ready.first_stage_linked() && !it->second.first_stage_linked) {
      log::Info("worker %s (the last stage) reaches stage 0's data port now: steps are chained", identity);
    }
    it->second.first_stage_linked = ready.first_stage_linked();
    return;
  }
  it->second.ready = true;
  it->second.first_stage_linked = ready.first_stage_linked();
  log::Info("worker %s ready for plan %d (%d weight bytes)%s", identity, plan_version_, ready.weight_bytes(),
            it->second.nccl.ranks == 0 ? ""
            : ready.nccl_linked()      ? ", NCCL linked"
                                       : ", NCCL not linked: its GPU neighbours use ZeroMQ");
  if (n_stages_ > 1 && it->second.stage_index == n_stages_ - 1 && !ready.first_stage_linked()) {
    log::Warn("worker %s (the last stage) does not reach stage 0's data port %s (yet): steps are not chained",
              identity, stage0_endpoint_);
  }
}

void WorkerPool::OnNcclUniqueId(const std::string& identity, const wire::pb::NcclUniqueId& id,
                                std::vector<OutgoingControl>* out) {
  auto it = workers_.find(identity);
  if (it == workers_.end() || !it->second.alive || id.plan_version() != plan_version_) return;
  const Worker& sender = it->second;
  if (sender.nccl.ranks < 2 || sender.nccl.rank != 0 ||
      id.first_stage() != static_cast<uint32_t>(sender.stage_index) ||
      id.unique_id().size() != kNcclUniqueIdBytes) {
    log::Warn("ignoring an NCCL unique id from %s: not rank 0 of an NCCL group of plan %d, or not %d bytes",
              identity, plan_version_, kNcclUniqueIdBytes);
    return;
  }
  wire::pb::Envelope envelope;
  *envelope.mutable_nccl_unique_id() = id;
  for (const auto& [other_identity, other] : workers_) {
    if (other_identity == identity || !other.alive || other.stage_index < 0 || other.nccl.ranks == 0 ||
        other.nccl.first_stage != id.first_stage()) {
      continue;
    }
    out->push_back({other_identity, envelope});
  }
}

void WorkerPool::Replan(std::vector<OutgoingControl>* out) {
  std::vector<PlannerWorker> planned;
  std::vector<std::string> identities;
  for (const auto& [identity, worker] : workers_) {
    if (!worker.alive) continue;
    planned.push_back({worker.registration.worker_id(), worker.registration.weight_bytes_per_second()});
    identities.push_back(identity);
  }
  // min_workers holds back the first plan only; later ones use whoever is left.
  if (plan_version_ == 0 && static_cast<int>(planned.size()) < options_.min_workers) return;
  if (planned.empty()) {
    log::Error("no live worker is left to hold the model's layers");
    return;
  }
  auto plan = PlanLayers(model_.layer_bytes, model_.head_bytes, planned);
  if (!plan.ok()) {
    log::Error("cannot plan: %s", plan.status().ToString());
    return;
  }
  ++plan_version_;
  disrupted_ = true;
  plan_error_.clear();
  n_stages_ = plan->n_stages();
  // Stages in pipeline order: by first layer.
  std::vector<size_t> order;
  for (size_t i = 0; i < identities.size(); ++i) {
    if (plan->ranges[i].end_layer > plan->ranges[i].first_layer) order.push_back(i);
  }
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return plan->ranges[a].first_layer < plan->ranges[b].first_layer; });
  for (auto& [identity, worker] : workers_) {
    worker.first_layer = worker.end_layer = 0;
    worker.stage_index = -1;
    worker.ready = false;
  }
  for (size_t i = 0; i < identities.size(); ++i) {
    Worker& worker = workers_[identities[i]];
    worker.first_layer = plan->ranges[i].first_layer;
    worker.end_layer = plan->ranges[i].end_layer;
  }
  for (size_t s = 0; s < order.size(); ++s) workers_[identities[order[s]]].stage_index = static_cast<int>(s);
  std::vector<std::string> nccl_gpus;  // empty: cannot link
  stages_on_gpus_ = true;
  for (const size_t i : order) {
    const wire::pb::RegisterWorker& r = workers_[identities[i]].registration;
    stages_on_gpus_ &= r.backend() == "cuda";
    const bool capable = r.nccl() && r.backend() == "cuda" && !r.gpu_uuid().empty();
    nccl_gpus.push_back(capable ? r.gpu_uuid() : "");
  }
  const std::vector<NcclPlace> nccl = PlanNcclGroups(nccl_gpus);
  for (auto& [identity, worker] : workers_) worker.nccl = {};
  for (size_t s = 0; s < order.size(); ++s) workers_[identities[order[s]]].nccl = nccl[s];
  stage0_endpoint_ = workers_[identities[order.front()]].registration.data_endpoint();
  stage0_public_key_ = workers_[identities[order.front()]].registration.curve_public_key();
  for (size_t i = 0; i < identities.size(); ++i) {
    const Worker& worker = workers_[identities[i]];
    wire::pb::Envelope envelope;
    wire::pb::AssignLayers& assign = *envelope.mutable_assign_layers();
    assign.set_plan_version(plan_version_);
    assign.set_stage_index(worker.stage_index < 0 ? 0 : static_cast<uint32_t>(worker.stage_index));
    assign.set_n_stages(static_cast<uint32_t>(n_stages_));
    assign.set_first_layer(static_cast<uint32_t>(worker.first_layer));
    assign.set_end_layer(static_cast<uint32_t>(worker.end_layer));
    const size_t next = static_cast<size_t>(worker.stage_index + 1);
    if (worker.stage_index >= 0 && next < order.size()) {
      const wire::pb::RegisterWorker& next_stage = workers_[identities[order[next]]].registration;
      assign.set_next_data_endpoint(next_stage.data_endpoint());
      assign.set_next_data_public_key(next_stage.curve_public_key());
    } else if (worker.stage_index > 0) {
      // The last of several stages: its tokens also go to stage 0, for chained steps.
      assign.set_first_data_endpoint(stage0_endpoint_);
      assign.set_first_data_public_key(stage0_public_key_);
    }
    assign.set_loader_endpoint(options_.loader_endpoint);
    assign.set_kv_slots(static_cast<uint32_t>(options_.kv_slots));
    assign.set_n_ctx(static_cast<uint32_t>(options_.n_ctx));
    assign.set_kv_type(options_.kv_type);
    assign.set_exact(options_.exact);
    assign.set_kv_tokens(static_cast<uint32_t>(options_.kv_tokens));
    assign.set_kv_page_size(static_cast<uint32_t>(options_.kv_page_size));
    assign.set_nccl_rank(worker.nccl.rank);
    assign.set_nccl_ranks(worker.nccl.ranks);
    log::Info("plan %d: %s holds layers [%d, %d)%s", plan_version_, identities[i], worker.first_layer,
              worker.end_layer,
              worker.nccl.ranks == 0
                  ? ""
                  : absl::StrFormat(", NCCL rank %d of %d", worker.nccl.rank, worker.nccl.ranks));
    out->push_back({identities[i], std::move(envelope)});
  }
}

std::vector<OutgoingControl> WorkerPool::Tick(Clock::time_point now) {
  std::vector<OutgoingControl> out;
  bool stage_lost = false;
  for (auto& [identity, worker] : workers_) {
    if (worker.alive && now - worker.last_seen > options_.worker_timeout) {
      stage_lost |= Lose(identity, worker, "silent for longer than the worker timeout");
    }
  }
  if (stage_lost) Replan(&out);
  if (now - last_heartbeat_ >= options_.heartbeat_interval) {
    last_heartbeat_ = now;
    wire::pb::Envelope envelope;
    envelope.mutable_heartbeat()->set_plan_version(plan_version_);
    envelope.mutable_heartbeat()->set_sent_unix_micros(
        static_cast<uint64_t>(wire::UnixMicrosNow()));
    std::vector<OutgoingControl> beats = Broadcast(envelope);
    out.insert(out.end(), beats.begin(), beats.end());
  }
  return out;
}

std::vector<OutgoingControl> WorkerPool::Broadcast(const wire::pb::Envelope& envelope) const {
  std::vector<OutgoingControl> out;
  for (const auto& [identity, worker] : workers_) {
    if (worker.alive && worker.registered) out.push_back({identity, envelope});
  }
  return out;
}

bool WorkerPool::serving() const {
  if (plan_version_ == 0 || n_stages_ == 0) return false;
  int ready_stages = 0;
  for (const auto& [identity, worker] : workers_) {
    if (worker.stage_index < 0) continue;
    if (!worker.alive || !worker.ready) return false;
    ++ready_stages;
  }
  return ready_stages == n_stages_;
}

bool WorkerPool::tokens_reach_first_stage() const {
  if (n_stages_ <= 1) return true;
  for (const auto& [identity, worker] : workers_) {
    if (worker.stage_index == n_stages_ - 1) return worker.alive && worker.ready && worker.first_stage_linked;
  }
  return false;
}

bool WorkerPool::Lose(const std::string& identity, Worker& worker, const char* why) {
  log::Warn("worker %s lost: %s (%d ms timeout)", identity, why, options_.worker_timeout.count());
  worker.alive = worker.ready = false;
  if (worker.stage_index < 0) return false;  // a spare: the plan stands
  disrupted_ = true;
  return true;
}

absl::Status WorkerPool::Capacity() const {
  if (plan_version_ == 0) {
    return absl::UnavailableError("the model is not loaded on every stage yet");
  }
  if (!plan_error_.empty()) return absl::UnavailableError(plan_error_);
  int alive = 0, lost = 0;
  for (const auto& [identity, worker] : workers_) {
    if (!worker.registered) continue;
    (worker.alive ? alive : lost) += 1;
  }
  for (const auto& [identity, worker] : workers_) {
    if (worker.stage_index >= 0 && !worker.alive) {
      return absl::UnavailableError(absl::StrCat("no worker is left to hold layers [",
                                                 worker.first_layer, ", ", worker.end_layer, ") (",
                                                 lost, " of ", alive + lost, " workers lost)"));
    }
  }
  return absl::OkStatus();
}

bool WorkerPool::TakePlanDisrupted() { return std::exchange(disrupted_, false); }

void WorkerPool::FillServerInfo(chord::v1::ServerInfo* info) const {
  info->set_plan_version(plan_version_);
  for (const auto& [identity, worker] : workers_) {
    if (!worker.registered) continue;
    chord::v1::WorkerInfo& out = *info->add_workers();
    out.set_worker_id(worker.registration.worker_id());
    out.set_address(worker.registration.data_endpoint());
    out.set_first_layer(static_cast<uint32_t>(worker.first_layer));
    out.set_end_layer(static_cast<uint32_t>(worker.end_layer));
    out.set_backend(worker.registration.backend());
    out.set_memory_budget_bytes(worker.registration.memory_budget_bytes());
    out.set_alive(worker.alive);
  }
}

}  // namespace chord::coordinator
