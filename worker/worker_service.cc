#include "worker/worker_service.h"

#include <algorithm>
#include <cerrno>
#include <span>

#include "common/base/log.h"
#include "common/base/status.h"
#include "common/model/model_config.h"
#include "common/wire/handshake.h"
#include "common/wire/poll.h"
#include "worker/fetched_tensors.h"
#include "worker/models/llama.h"
#include "worker/shard/stage_weights.h"
#include "worker/step_validation.h"

namespace chord {
namespace {

namespace pb = wire::pb;

// zmq binds "port 0" as "*".
std::string BindAddress(const std::string& endpoint) {
  if (endpoint.size() > 2 && endpoint.ends_with(":0"))
    return endpoint.substr(0, endpoint.size() - 1) + "*";
  return endpoint;
}

absl::StatusOr<DType> ParseKvType(const std::string& name) {
  if (name.empty() || name == "f32") return DType::kF32;
  if (name == "f16") return DType::kF16;
  return absl::InvalidArgumentError(absl::StrCat("kv_type must be f32 or f16, not '", name, "'"));
}

struct LoadContext {
  zmq::context_t& context;
  const LoaderConnector& connect;
  const WorkerOptions& options;
  std::string model_sha256;
  ThreadPool& pool;
  std::function<void()> wait_hook;       // for the shard cache; runs on the compute thread
  std::shared_ptr<NcclRendezvous> nccl;  // null: no NCCL group
};

absl::StatusOr<StagePlan> MakePlan(const pb::AssignLayers& a, const ModelConfig& config,
                                   const WorkerOptions& options) {
  StagePlan plan;
  plan.plan_version = a.plan_version();
  plan.range = {a.first_layer(), a.end_layer()};
  if (plan.range.first >= plan.range.end || plan.range.end > config.n_layer) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layers [%d, %d) are not a range of the model's %d", plan.range.first,
                        plan.range.end, config.n_layer));
  }
  if (plan.range.end == config.n_layer && !a.next_data_endpoint().empty()) {
    return absl::InvalidArgumentError("the stage holding the last layer cannot have a next stage");
  }
  if (plan.range.end < config.n_layer && a.next_data_endpoint().empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layers [%d, %d) need a next stage for layer %d", plan.range.first,
                        plan.range.end, plan.range.end));
  }
  plan.kv_slots = a.kv_slots();
  plan.n_ctx = a.n_ctx() > 0 ? a.n_ctx() : config.n_ctx_train;
  if ((options.max_kv_slots > 0 && plan.kv_slots > options.max_kv_slots) ||
      (options.max_n_ctx > 0 && plan.n_ctx > options.max_n_ctx)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("kv_slots %d x n_ctx %d exceed what this worker registered (%d x %d)",
                        plan.kv_slots, plan.n_ctx, options.max_kv_slots, options.max_n_ctx));
  }
  ASSIGN_OR_RETURN(plan.kv_type, ParseKvType(a.kv_type()));
  plan.kv_tokens = a.kv_tokens();
  plan.backend = options.backend;
  plan.device = options.device;
  plan.exact = a.exact();
  if (a.kv_page_size() != 0) plan.kv_page_size = a.kv_page_size();
  if (options.max_kv_slots > 0 && options.max_n_ctx > 0 &&
      plan.kv_tokens > int64_t{options.max_kv_slots} * options.max_n_ctx) {
    return absl::InvalidArgumentError(
        absl::StrFormat("kv_tokens %d exceed what this worker registered (%d x %d)", plan.kv_tokens,
                        options.max_kv_slots, options.max_n_ctx));
  }
  return plan;
}

// Runs on the loading thread once the stage is built: waits for the group's
// unique id, joins, and hands the link to the executor. Never fails the
// stage: without a link its activations go over ZeroMQ.
void JoinNcclGroup(const LoadContext& ctx, StageExecutor* executor) {
  NcclRendezvous& group = *ctx.nccl;
  const auto deadline = std::chrono::steady_clock::now() + ctx.options.nccl_connect_timeout;
  std::string unique_id;
  {
    std::unique_lock lock(group.mutex);
    group.arrived.wait_until(lock, deadline,
                             [&] { return group.unique_id.has_value() || group.cancelled.load(); });
    if (group.unique_id.has_value()) unique_id = *group.unique_id;
  }
  absl::StatusOr<std::unique_ptr<NcclLink>> link =
      absl::DeadlineExceededError("the NCCL group's unique id did not come");
  if (group.cancelled.load()) {
    link = absl::CancelledError("a new plan came");
  } else if (!unique_id.empty()) {
    NcclLinkOptions options;
    options.device = ctx.options.device;
    options.rank = group.rank;
    options.n_ranks = group.n_ranks;
    options.unique_id = unique_id;
    options.connect_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    options.transfer_timeout = ctx.options.nccl_transfer_timeout;
    options.cancelled = [&group] { return group.cancelled.load(); };
    link = NcclLink::Connect(options);
  }
  if (!link.ok()) {
    log::Warn("worker %s: plan %d: no NCCL link (rank %d of %d): %s; activations go over ZeroMQ",
              ctx.options.worker_id, group.plan_version, group.rank, group.n_ranks,
              link.status().ToString());
    return;
  }
  log::Info("worker %s: plan %d: NCCL link up (rank %d of %d)", ctx.options.worker_id,
            group.plan_version, group.rank, group.n_ranks);
  executor->set_link(*std::move(link), ctx.options.nccl_min_rows);
}

// Runs on the loading thread: everything it touches is its own or immutable.
absl::StatusOr<std::unique_ptr<StageExecutor>> LoadStage(const LoadContext& ctx,
                                                         const pb::AssignLayers& a) {
  ASSIGN_OR_RETURN(std::unique_ptr<LoaderClient> client,
                   ctx.connect(ctx.context, a.loader_endpoint(), ctx.model_sha256));
  ASSIGN_OR_RETURN(LoaderModelInfo info, client->FetchModelInfo());
  if (!ctx.model_sha256.empty() && info.model_sha256 != ctx.model_sha256) {
    return absl::FailedPreconditionError(absl::StrCat("the loader serves model ", info.model_sha256,
                                                      ", the coordinator's is ", ctx.model_sha256));
  }
  if (info.header == nullptr) return absl::DataLossError("the loader sent no model header");
  ASSIGN_OR_RETURN(const ModelConfig config, ReadModelConfig(*info.header));
  ASSIGN_OR_RETURN(const StagePlan plan, MakePlan(a, config, ctx.options));
  StageWeightsOptions options;
  options.label = absl::StrCat("worker ", ctx.options.worker_id);
  options.memory_budget_bytes = ctx.options.memory_budget_bytes;
  options.prefetch_depth = ctx.options.prefetch_depth;
  options.wait_hook = ctx.wait_hook;
  options.loader_endpoint = a.loader_endpoint();
  if (plan.backend == "cuda") {
    options.device_budget_bytes = ctx.options.gpu_memory_budget_bytes;
    options.pinner = CudaMemoryPinner();
  }
  ASSIGN_OR_RETURN(StageWeights weights,
                   FetchStageWeights(
                       config, std::move(info.header), plan.range, *client,
                       [&ctx, &a]() -> absl::StatusOr<std::unique_ptr<LoaderClient>> {
                         return ctx.connect(ctx.context, a.loader_endpoint(), ctx.model_sha256);
                       },
                       options));
  ASSIGN_OR_RETURN(std::unique_ptr<StageExecutor> executor,
                   StageExecutor::Create(config, plan, std::move(weights), ctx.pool));
  if (ctx.nccl != nullptr) JoinNcclGroup(ctx, executor.get());
  return executor;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerService>> WorkerService::Create(
    zmq::context_t& context, const WorkerOptions& options, ThreadPool& pool,
    LoaderConnector connect_loader) {
  if (options.worker_id.empty()) return absl::InvalidArgumentError("a worker needs an id");
  if (options.coordinator_endpoint.empty()) {
    return absl::InvalidArgumentError("a worker needs the coordinator's endpoint");
  }
  RETURN_IF_ERROR(wire::RequireCoordinatorKey(options.curve));
  std::unique_ptr<WorkerService> service(
      new WorkerService(context, options, pool, std::move(connect_loader)));
  try {
    service->data_.emplace(context, zmq::socket_type::pull);
    service->data_->set(zmq::sockopt::linger, 0);
    service->data_->set(zmq::sockopt::rcvhwm, options.high_water_mark);
    RETURN_IF_ERROR(wire::SecureServer(*service->data_, options.curve));
    service->data_->bind(BindAddress(options.data_bind));
    service->data_endpoint_ = service->data_->get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& error) {
    return absl::UnavailableError(
        absl::StrCat("cannot bind the data socket to ", options.data_bind, ": ", error.what()));
  }
  if (service->options_.weight_bytes_per_second <= 0.0) {
    ASSIGN_OR_RETURN(service->options_.weight_bytes_per_second,
                     options.backend == "cuda" ? MeasureCudaWeightThroughput(options.device)
                                               : MeasureWeightThroughput(pool));
  }
  if (options.backend == "cuda") {
    absl::StatusOr<std::string> uuid = CudaDeviceUuid(options.device);
    if (!uuid.ok()) return uuid.status();
    service->gpu_uuid_ = *uuid;
  }
  log::Info("worker %s: data socket bound at %s; %.3g weight bytes/s", options.worker_id,
            service->data_endpoint_, service->options_.weight_bytes_per_second);
  return service;
}

WorkerService::~WorkerService() {
  if (loading_.valid()) loading_.wait();
}

void WorkerService::ConnectControl() {
  control_.reset();
  control_.emplace(context_, zmq::socket_type::dealer);
  control_->set(zmq::sockopt::routing_id, options_.worker_id);
  control_->set(zmq::sockopt::linger, 0);
  control_->set(zmq::sockopt::immediate, 1);  // nothing queues for a coordinator that is not there
  control_->set(zmq::sockopt::sndhwm, options_.high_water_mark);
  control_->set(zmq::sockopt::rcvhwm, options_.high_water_mark);
  // Checked in Create(): the key is there whenever CURVE is on.
  const absl::Status secured =
      wire::SecureClient(*control_, options_.curve, options_.curve.coordinator_public_key);
  if (!secured.ok()) log::Error("worker %s: %s", options_.worker_id, secured.ToString());
  control_->connect(options_.coordinator_endpoint);
  link_ = Link::kHello;
  last_sent_ = Clock::time_point{};  // say Hello at once
}

void WorkerService::SendControl(const pb::Envelope& envelope) {
  const absl::Status status = wire::Send(*control_, envelope, {}, {}, /*dont_wait=*/true);
  if (!status.ok())
    log::Debug("worker %s: control message not sent: %s", options_.worker_id, status.ToString());
}

// Says Hello until the coordinator answers, and starts over when it goes silent.
void WorkerService::KeepLink() {
  const Clock::time_point now = Clock::now();
  if (link_ == Link::kRegistered) {
    if (now - last_heard_ <= options_.coordinator_timeout) return;
    // The socket stays: ZeroMQ reconnects it to a restarted coordinator by
    // itself, and a new socket with the same identity could be refused by a
    // ROUTER that still holds the old connection.
    log::Warn("worker %s: coordinator silent for %d ms; registering again", options_.worker_id,
              std::chrono::duration_cast<std::chrono::milliseconds>(now - last_heard_).count());
    link_ = Link::kHello;
    last_sent_ = Clock::time_point{};
  }
  if (now - last_sent_ < options_.hello_retry) return;
  if (link_ != Link::kHello || hello_unanswered_since_ == Clock::time_point{}) {
    hello_unanswered_since_ = now;
  }
  link_ = Link::kHello;
  if (now - hello_unanswered_since_ >= kUnansweredWarning &&
      now - last_unanswered_warning_ >= kUnansweredWarning) {
    last_unanswered_warning_ = now;
    log::Warn(
        "worker %s: no answer from the coordinator at %s for %d s (is it up? %s)",
        options_.worker_id, options_.coordinator_endpoint,
        std::chrono::duration_cast<std::chrono::seconds>(now - hello_unanswered_since_).count(),
        options_.curve.enabled()
            ? "with CURVE: is this worker's public key in the coordinator's allow-list?"
            : "plaintext: does the coordinator expect CURVE?");
  }
  pb::Envelope envelope;
  *envelope.mutable_hello() = wire::MakeHello("worker", options_.worker_id, model_sha256_);
  SendControl(envelope);
  last_sent_ = now;
}

void WorkerService::HandleHello(const pb::Hello& hello) {
  if (link_ != Link::kHello) return;  // an answer to a repeated Hello
  const absl::Status status = wire::CheckHello(hello, "");
  if (!status.ok()) {
    log::Error("worker %s: the coordinator refused the connection: %s", options_.worker_id,
               status.ToString());
    return;
  }
  model_sha256_ = hello.model_sha256();
  hello_unanswered_since_ = Clock::time_point{};
  pb::Envelope envelope;
  pb::RegisterWorker* r = envelope.mutable_register_worker();
  r->set_worker_id(options_.worker_id);
  r->set_data_endpoint(data_endpoint_);
  r->set_memory_budget_bytes(options_.memory_budget_bytes);
  r->set_backend(options_.backend);
  r->set_device(options_.device);
  r->set_weight_bytes_per_second(options_.weight_bytes_per_second);
  r->set_curve_public_key(options_.curve.own.public_key);
  r->set_kv_slots(options_.max_kv_slots);
  r->set_n_ctx(options_.max_n_ctx);
  r->set_nccl(nccl_capable());
  r->set_gpu_uuid(gpu_uuid_);
  SendControl(envelope);
  link_ = Link::kRegister;
  last_sent_ = Clock::now();
}

void WorkerService::HandleRegisterReply(const pb::RegisterReply& reply) {
  const absl::Status status = wire::FromProto(reply.status());
  // The identity is the worker id, so ALREADY_EXISTS means this very worker
  // is still registered (the coordinator was slow, not gone).
  if (status.ok() || absl::IsAlreadyExists(status)) {
    log::Info("worker %s: registered with %s", options_.worker_id, options_.coordinator_endpoint);
    link_ = Link::kRegistered;
    return;
  }
  log::Error("worker %s: registration refused: %s", options_.worker_id, status.ToString());
  link_ = Link::kHello;  // try again after hello_retry
}

void WorkerService::HandleControl(const wire::Message& message) {
  last_heard_ = Clock::now();
  const pb::Envelope& e = message.envelope;
  switch (e.body_case()) {
    case pb::Envelope::kHello:
      HandleHello(e.hello());
      break;
    case pb::Envelope::kRegisterReply:
      if (link_ == Link::kRegister) HandleRegisterReply(e.register_reply());
      break;
    case pb::Envelope::kHeartbeat: {
      pb::Envelope reply;
      reply.mutable_heartbeat()->set_plan_version(executor_ != nullptr ? plan_version_ : 0);
      reply.mutable_heartbeat()->set_sent_unix_micros(e.heartbeat().sent_unix_micros());
      SendControl(reply);
      break;
    }
    case pb::Envelope::kAssignLayers:
      HandleAssign(e.assign_layers());
      break;
    case pb::Envelope::kNcclUniqueId:
      HandleNcclUniqueId(e.nccl_unique_id());
      break;
    case pb::Envelope::kFreeSlots:
      if (executor_ != nullptr) {
        executor_->FreeSlots(
            std::span<const uint32_t>(e.free_slots().slots().data(), e.free_slots().slots_size()),
            std::span<const uint64_t>(e.free_slots().sequence_ids().data(),
                                      e.free_slots().sequence_ids_size()));
      }
      break;
    case pb::Envelope::kShutdown:
      log::Info("worker %s: shutdown asked: %s", options_.worker_id, e.shutdown().reason());
      shutdown_ = true;
      break;
    default:
      log::Warn("worker %s: unexpected control message (body %d) ignored", options_.worker_id,
                static_cast<int>(e.body_case()));
  }
}

void WorkerService::ServiceControlDuringStep() {
  try {
    for (int i = 0; i < 64; ++i) {
      absl::StatusOr<std::optional<wire::Message>> message = wire::Receive(*control_, false, true);
      if (!message.ok()) continue;
      if (!message->has_value()) break;
      if ((*message)->envelope.has_heartbeat()) {
        HandleControl(**message);  // answers at once: the coordinator must not think us lost
      } else {
        last_heard_ = Clock::now();
        deferred_control_.push_back(**std::move(message));
      }
    }
  } catch (const zmq::error_t& error) {
    log::Warn("worker %s: control socket: %s", options_.worker_id, error.what());
  }
}

void WorkerService::LogShardCacheStats(bool summary) {
  if (executor_ == nullptr || executor_->shard_cache() == nullptr) return;
  const ShardCacheStats stats = executor_->shard_cache()->Stats();
  if (options_.metrics != nullptr) {
    options_.metrics->shard_cache_hits.Increment(
        static_cast<double>(stats.hits - reported_cache_stats_.hits));
    options_.metrics->shard_cache_misses.Increment(
        static_cast<double>(stats.misses - reported_cache_stats_.misses));
    options_.metrics->shard_cache_stall_seconds.Increment(stats.stall_seconds -
                                                          reported_cache_stats_.stall_seconds);
  }
  reported_cache_stats_ = stats;
  const Clock::time_point now = Clock::now();
  if (!summary && now - cache_stats_logged_ < std::chrono::seconds(10)) return;
  cache_stats_logged_ = now;
  log::Info(
      "worker %s: shard cache%s: %d hits, %d misses (%d synchronous loads), stalled %.2fs, %d "
      "layers fetched (%s, %d failed), %d evictions, %s held (peak %d of %d bytes), prefetch "
      "depth %d, per layer fetch %.1f ms / compute %.1f ms",
      options_.worker_id, summary ? " summary" : "", stats.hits, stats.misses, stats.sync_loads,
      stats.stall_seconds, stats.fetches, Mib(stats.bytes_fetched), stats.failed_fetches,
      stats.evictions, Mib(stats.bytes_reserved), stats.peak_bytes_reserved,
      executor_->shard_cache()->capacity_bytes(), stats.prefetch_depth,
      stats.fetch_seconds_per_layer * 1e3, stats.compute_seconds_per_layer * 1e3);
}

void WorkerService::HandleAssign(const pb::AssignLayers& a) {
  log::Info("worker %s: plan %d assigns layers [%d, %d) (stage %d of %d), next %s",
            options_.worker_id, a.plan_version(), a.first_layer(), a.end_layer(), a.stage_index(),
            a.n_stages(), a.next_data_endpoint().empty() ? "coordinator" : a.next_data_endpoint());
  // The old stage goes first: its memory is needed for the new one, and its KV state is void.
  LogShardCacheStats(/*summary=*/true);
  executor_.reset();
  reported_cache_stats_ = {};
  next_.reset();
  first_watch_.reset();  // before the socket it watches
  first_.reset();
  first_linked_ = false;
  held_.clear();
  released_ahead_.Clear();
  sampled_.clear();
  plan_version_ = a.plan_version();
  PrepareNccl(a);
  if (loading_.valid()) {
    queued_ = a;  // started when the current load finishes
    return;
  }
  if (a.first_layer() == a.end_layer()) {
    SendStageReady(a.plan_version(), absl::OkStatus());  // a spare holds nothing
    return;
  }
  StartLoad(a);
}

bool WorkerService::nccl_capable() const {
  return options_.nccl && options_.backend == "cuda" && NcclBuilt() && !gpu_uuid_.empty();
}

void WorkerService::PrepareNccl(const pb::AssignLayers& a) {
  if (nccl_ != nullptr && nccl_->plan_version == a.plan_version()) return;  // a queued one, resumed
  if (nccl_ != nullptr) {
    std::lock_guard lock(nccl_->mutex);
    nccl_->cancelled = true;
    nccl_->arrived.notify_all();
  }
  nccl_.reset();
  if (a.nccl_ranks() < 2 || a.first_layer() == a.end_layer() || !nccl_capable()) return;
  if (a.nccl_rank() >= a.nccl_ranks()) {
    log::Warn("worker %s: plan %d names NCCL rank %d of %d; no link", options_.worker_id,
              a.plan_version(), a.nccl_rank(), a.nccl_ranks());
    return;
  }
  nccl_ = std::make_shared<NcclRendezvous>();
  nccl_->plan_version = a.plan_version();
  nccl_->rank = static_cast<int>(a.nccl_rank());
  nccl_->n_ranks = static_cast<int>(a.nccl_ranks());
  if (nccl_->rank != 0) return;  // the id comes from rank 0 through the coordinator
  absl::StatusOr<std::string> id = NewNcclUniqueId();
  if (!id.ok()) {
    // The others wait for an id that never comes, then fall back too.
    log::Warn("worker %s: cannot make an NCCL group id: %s", options_.worker_id,
              id.status().ToString());
    return;
  }
  nccl_->unique_id = *id;
  pb::Envelope envelope;
  pb::NcclUniqueId* out = envelope.mutable_nccl_unique_id();
  out->set_plan_version(a.plan_version());
  out->set_first_stage(a.stage_index());
  out->set_unique_id(*id);
  SendControl(envelope);
}

void WorkerService::HandleNcclUniqueId(const pb::NcclUniqueId& id) {
  if (nccl_ == nullptr || nccl_->plan_version != id.plan_version() || nccl_->rank == 0) return;
  std::lock_guard lock(nccl_->mutex);
  nccl_->unique_id = id.unique_id();
  nccl_->arrived.notify_all();
}

void WorkerService::StartLoad(const pb::AssignLayers& a) {
  LoadContext ctx{context_,
                  connect_loader_,
                  options_,
                  model_sha256_,
                  pool_,
                  [this] { ServiceControlDuringStep(); },
                  nccl_ != nullptr && nccl_->plan_version == a.plan_version() ? nccl_ : nullptr};
  loading_ = std::async(std::launch::async, [ctx, a]() {
    Loaded loaded{a, absl::InternalError("not loaded")};
    try {
      loaded.executor = LoadStage(ctx, a);
    } catch (const std::exception& error) {
      loaded.executor =
          absl::InternalError(absl::StrCat("loading the stage failed: ", error.what()));
    }
    return loaded;
  });
}

void WorkerService::FinishLoad() {
  if (!loading_.valid() || loading_.wait_for(std::chrono::seconds(0)) != std::future_status::ready)
    return;
  Loaded loaded = loading_.get();
  if (queued_.has_value()) {  // superseded while loading
    const pb::AssignLayers next = *std::move(queued_);
    queued_.reset();
    HandleAssign(next);
    return;
  }
  absl::Status status = loaded.executor.status();
  if (status.ok()) status = InstallStage(loaded.assignment, *std::move(loaded.executor));
  if (!status.ok()) {
    log::Error("worker %s: plan %d: cannot load layers [%d, %d): %s", options_.worker_id,
               loaded.assignment.plan_version(), loaded.assignment.first_layer(),
               loaded.assignment.end_layer(), status.ToString());
  }
  SendStageReady(loaded.assignment.plan_version(), status);
}

// How long the last of several stages waits for its link to stage 0 before
// it reports the stage ready (StageReady.first_stage_linked): a handshake
// takes a few milliseconds where the port is reachable. Later, the loop
// reports it when it comes (WatchFirstStageLink).
constexpr std::chrono::milliseconds kFirstStageLinkWait{100};

absl::Status WorkerService::ConnectData(const std::string& endpoint, const std::string& public_key,
                                        const char* peer, std::optional<zmq::socket_t>* socket,
                                        std::optional<wire::HandshakeWatch>* watch) {
  try {
    socket->emplace(context_, zmq::socket_type::push);
    (*socket)->set(zmq::sockopt::linger, 0);
    (*socket)->set(zmq::sockopt::sndhwm, options_.high_water_mark);
    (*socket)->set(zmq::sockopt::immediate, 1);
    if (absl::Status secured = wire::SecureClient(**socket, options_.curve, public_key);
        !secured.ok()) {
      socket->reset();
      return absl::InvalidArgumentError(
          absl::StrCat("cannot secure the link to ", peer, ": ", secured.message()));
    }
    if (watch != nullptr) watch->emplace(context_, **socket);
    (*socket)->connect(endpoint);
  } catch (const zmq::error_t& error) {
    if (watch != nullptr) watch->reset();
    socket->reset();
    return absl::InvalidArgumentError(
        absl::StrCat("cannot connect to ", peer, " at ", endpoint, ": ", error.what()));
  }
  return absl::OkStatus();
}

absl::Status WorkerService::InstallStage(const pb::AssignLayers& a,
                                         std::unique_ptr<StageExecutor> executor) {
  if (!a.next_data_endpoint().empty()) {
    RETURN_IF_ERROR(
        ConnectData(a.next_data_endpoint(), a.next_data_public_key(), "the next stage", &next_));
  } else if (!a.first_data_endpoint().empty()) {
    // The last of several stages: sampled tokens also go to stage 0, for
    // chained steps, which the coordinator sends only if this link is up.
    RETURN_IF_ERROR(ConnectData(a.first_data_endpoint(), a.first_data_public_key(), "stage 0",
                                &first_, &first_watch_));
    first_linked_ = first_watch_->Linked(kFirstStageLinkWait);
    if (first_linked_) {
      first_watch_.reset();
    } else {
      log::Warn(
          "worker %s: no handshake with stage 0's data port %s yet: steps are not chained until "
          "there is (this worker must reach it)",
          options_.worker_id, a.first_data_endpoint());
    }
  }
  executor_ = std::move(executor);
  executor_->set_between_layers([this] { ServiceControlDuringStep(); });
  if (executor_->link() != nullptr)
    executor_->link()->set_poll_hook([this] { ServiceControlDuringStep(); });
  log::Info("worker %s: plan %d: layers [%d, %d) ready: %d weight bytes, %d KV cache bytes",
            options_.worker_id, a.plan_version(), a.first_layer(), a.end_layer(),
            executor_->weight_bytes(), executor_->kv_cache_bytes());
  return absl::OkStatus();
}

void WorkerService::SendStageReady(uint64_t plan_version, const absl::Status& status) {
  pb::Envelope envelope;
  pb::StageReady* ready = envelope.mutable_stage_ready();
  ready->set_plan_version(plan_version);
  if (!status.ok()) *ready->mutable_status() = wire::ToProto(status, options_.worker_id);
  if (executor_ != nullptr) {
    ready->set_weight_bytes(executor_->weight_bytes());
    ready->set_kv_cache_bytes(executor_->kv_cache_bytes());
    ready->set_nccl_linked(executor_->link() != nullptr);
    ready->set_first_stage_linked(first_.has_value() && first_linked_);
  }
  SendControl(envelope);
}

void WorkerService::WatchFirstStageLink() {
  if (!first_watch_.has_value() || executor_ == nullptr || !first_watch_->Linked()) return;
  first_watch_.reset();
  first_linked_ = true;
  log::Info("worker %s: plan %d: the link to stage 0 is up", options_.worker_id, plan_version_);
  SendStageReady(plan_version_, absl::OkStatus());
}

void WorkerService::SendStepError(uint64_t plan_version, uint64_t step_id,
                                  const absl::Status& status) {
  LogDroppedStep(step_id, status);
  pb::Envelope envelope;
  pb::StepResult* result = envelope.mutable_step_result();
  result->set_plan_version(plan_version);
  result->set_step_id(step_id);
  *result->mutable_status() = wire::ToProto(status, options_.worker_id);
  SendControl(envelope);
}

void WorkerService::LogDroppedStep(uint64_t step_id, const absl::Status& status) {
  if (!absl::IsDeadlineExceeded(status)) {
    log::Warn("worker %s: step %d dropped: %s", options_.worker_id, step_id, status.ToString());
    return;
  }
  // Late steps come in bursts (every step queued behind a stall is late): one
  // line per kLateStepLogInterval, counting the ones it stands for.
  ++late_steps_unlogged_;
  const Clock::time_point now = Clock::now();
  if (now - late_step_logged_ < kLateStepLogInterval) return;
  log::Warn("worker %s: step %d dropped: %s (%d late step(s) dropped since the previous such line)",
            options_.worker_id, step_id, status.ToString(), late_steps_unlogged_);
  late_step_logged_ = now;
  late_steps_unlogged_ = 0;
}

void WorkerService::LogStepTiming(const pb::StepHeader& step, int64_t arrived_unix_micros,
                                  Clock::time_point started, Clock::time_point ended) {
  const StageExecutor::StepMarks& marks = executor_->last_marks();
  const auto after = [&](Clock::time_point mark) {
    return mark == Clock::time_point{}
               ? -1.0
               : std::chrono::duration<double, std::milli>(mark - started).count();
  };
  log::Debug(
      "worker %s: step %016x: %d sequences, arrived at %d us; after %.3f ms its rows were in, "
      "%.3f computed, %.3f sampled, %.3f handed on",
      options_.worker_id, step.step_id(), step.sequences_size(), arrived_unix_micros,
      after(marks.rows_in), after(marks.computed), after(marks.sampled), after(ended));
}

void WorkerService::HandleData() {
  absl::StatusOr<std::optional<wire::Message>> received =
      wire::Receive(*data_, /*router=*/false, true);
  if (!received.ok()) {
    SendStepError(plan_version_, 0, absl::InvalidArgumentError(received.status().message()));
    return;
  }
  if (!received->has_value()) return;
  const wire::Message& message = **received;
  if (message.envelope.has_step_result()) {
    HandleSampledTokens(message.envelope.step_result());  // from the last stage
    return;
  }
  if (!message.envelope.has_step()) {
    SendStepError(plan_version_, 0,
                  absl::InvalidArgumentError(
                      absl::StrFormat("the data socket got a message that is not a step "
                                      "(body %d)",
                                      static_cast<int>(message.envelope.body_case()))));
    return;
  }
  const pb::StepHeader& step = message.envelope.step();
  // On arrival, at every stage: a late step is not run (nor timed in the metrics).
  const int64_t arrived = wire::UnixMicrosNow();
  if (absl::Status late = CheckStepDeadline(step, arrived); !late.ok()) {
    SendStepError(step.plan_version(), step.step_id(), late);
    return;
  }
  // Stage 0 of several: a chained step waits for the last stage's tokens.
  if (step.follows_step_id() != 0 && !message.has_payload && executor_ != nullptr &&
      executor_->plan().range.first == 0 && !executor_->is_last() &&
      SampledBy(step.follows_step_id()) == nullptr) {
    if (held_.size() >= kMaxHeld) {
      SendStepError(step.plan_version(), step.step_id(),
                    absl::UnavailableError(absl::StrFormat(
                        "%d chained steps already wait for their tokens", held_.size())));
      return;
    }
    wire::Message held;
    held.envelope = message.envelope;
    pb::FreeSlots* released = held.envelope.mutable_step()->mutable_released();
    released_ahead_.mutable_slots()->Add(released->slots().begin(), released->slots().end());
    released_ahead_.mutable_sequence_ids()->Add(released->sequence_ids().begin(),
                                                released->sequence_ids().end());
    released->Clear();
    held_.emplace_back(std::move(held), arrived);
    return;
  }
  RunReceivedStep(message, arrived);
}

void WorkerService::RunReceivedStep(const wire::Message& message, int64_t arrived) {
  const pb::StepHeader& step = message.envelope.step();
  const Clock::time_point started = Clock::now();
  const absl::Status status = RunStep(message);
  if (status.ok() && log::Enabled(log::Level::kDebug)) {
    LogStepTiming(step, arrived, started, Clock::now());
  }
  if (options_.metrics != nullptr) {
    const bool prefill =
        std::any_of(step.sequences().begin(), step.sequences().end(),
                    [](const pb::SequenceChunk& s) { return s.token_ids_size() > 1; });
    options_.metrics->stage_step_seconds.With({prefill ? "prefill" : "decode"})
        .Observe(std::chrono::duration<double>(Clock::now() - started).count());
  }
  if (!status.ok()) SendStepError(step.plan_version(), step.step_id(), status);
  if (options_.metrics != nullptr && executor_ != nullptr) {
    options_.metrics->kv_cache_usage_perc.Set(executor_->kv_cache_usage());
  }
  LogShardCacheStats(/*summary=*/false);
}

absl::Status WorkerService::RunStep(const wire::Message& message) {
  if (executor_ == nullptr) {
    return ValidateStep(message.envelope.step(), StepLimits{}, {})
        .status();  // names the missing stage
  }
  const pb::StepHeader& header = message.envelope.step();
  const bool first = executor_->plan().range.first == 0;
  const wire::Message* step = &message;
  absl::StatusOr<wire::Message> filled;
  if (header.follows_step_id() != 0) {
    if (!first) {
      return absl::InvalidArgumentError(
          absl::StrFormat("step %d is chained to step %d, but this stage is not the first",
                          header.step_id(), header.follows_step_id()));
    }
    const Sampled* sampled = SampledBy(header.follows_step_id());
    if (sampled == nullptr) {
      return absl::UnavailableError(absl::StrFormat(
          "step %d is chained to step %d, whose tokens are not here (it failed, or never came)",
          header.step_id(), header.follows_step_id()));
    }
    filled = FillChainedStep(message, *sampled);
    if (!filled.ok()) return filled.status();
    step = &*filled;
  }
  if (released_ahead_.slots_size() > 0) {
    // The slots that held chained steps released go first, with this step.
    if (step == &message) {
      filled = wire::Message();
      filled->envelope = message.envelope;
      step = &*filled;
    }
    pb::FreeSlots* released = filled->envelope.mutable_step()->mutable_released();
    pb::FreeSlots merged = released_ahead_;
    merged.mutable_slots()->Add(released->slots().begin(), released->slots().end());
    merged.mutable_sequence_ids()->Add(released->sequence_ids().begin(),
                                       released->sequence_ids().end());
    *released = std::move(merged);
    released_ahead_.Clear();
  }
  pb::Envelope envelope;
  pb::StepResult* result = envelope.mutable_step_result();
  RETURN_IF_ERROR(executor_->Run(*step, &activations_, result));
  if (!executor_->is_last()) return Forward(*step);
  if (first) {
    Remember(*result);  // a one-stage pipeline: for the step chained to this one
  } else if (step->envelope.step().tokens_to_first_stage() && first_.has_value()) {
    // Stage 0 runs the step chained to this one as soon as these arrive.
    if (const absl::Status sent = wire::Send(*first_, envelope, {}, {}, /*dont_wait=*/true);
        !sent.ok()) {
      log::Warn("worker %s: step %d's tokens not handed to stage 0: %s", options_.worker_id,
                header.step_id(), sent.ToString());
    }
  }
  SendControl(envelope);
  return absl::OkStatus();
}

void WorkerService::Remember(const pb::StepResult& result) {
  Sampled sampled{result.step_id(), {}};
  for (const pb::SampledToken& token : result.tokens()) {
    sampled.tokens.emplace_back(token.sequence_id(), token.token_id());
  }
  sampled_.push_back(std::move(sampled));
  while (sampled_.size() > kMaxSampled) sampled_.pop_front();
}

const WorkerService::Sampled* WorkerService::SampledBy(uint64_t step_id) const {
  for (const Sampled& sampled : sampled_) {
    if (sampled.step_id == step_id) return &sampled;
  }
  return nullptr;
}

void WorkerService::HandleSampledTokens(const pb::StepResult& result) {
  if (executor_ == nullptr || executor_->plan().range.first != 0 || executor_->is_last() ||
      result.plan_version() != plan_version_ || result.has_status()) {
    return;  // not stage 0 of several, another plan's, or a failed step: nothing follows it
  }
  Remember(result);
  RunHeldSteps();
}

void WorkerService::RunHeldSteps() {
  for (size_t i = 0; i < held_.size();) {
    const pb::StepHeader& step = held_[i].first.envelope.step();
    if (absl::Status late = CheckStepDeadline(step, wire::UnixMicrosNow()); !late.ok()) {
      SendStepError(step.plan_version(), step.step_id(), late);
      held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    }
    if (SampledBy(step.follows_step_id()) == nullptr) {
      ++i;
      continue;
    }
    auto [message, arrived] = std::move(held_[i]);
    held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
    RunReceivedStep(message, arrived);
  }
}

absl::StatusOr<wire::Message> WorkerService::FillChainedStep(const wire::Message& message,
                                                             const Sampled& sampled) const {
  const pb::StepHeader& header = message.envelope.step();
  wire::Message filled;
  filled.envelope = message.envelope;
  // Filled, it is an ordinary step for the stages after this one.
  filled.envelope.mutable_step()->set_follows_step_id(0);
  for (pb::SequenceChunk& chunk : *filled.envelope.mutable_step()->mutable_sequences()) {
    if (!chunk.token_pending()) continue;
    const auto token = std::find_if(sampled.tokens.begin(), sampled.tokens.end(),
                                    [&](const auto& t) { return t.first == chunk.sequence_id(); });
    if (token == sampled.tokens.end() || chunk.token_ids_size() != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("step %d: sequence %d's pending token is not one that step %d sampled",
                          header.step_id(), chunk.sequence_id(), header.follows_step_id()));
    }
    chunk.add_token_ids(token->second);
    chunk.set_token_pending(false);
  }
  return filled;
}

absl::Status WorkerService::Forward(const wire::Message& message) {
  zmq::pollitem_t item{next_->handle(), 0, ZMQ_POLLOUT, 0};
  if (zmq::poll(&item, 1, options_.forward_timeout) == 0) {
    return absl::UnavailableError(
        absl::StrFormat("the next stage took no step for %d ms", options_.forward_timeout.count()));
  }
  // The header always goes over ZeroMQ; the rows follow over the NCCL link
  // when the step left them on the GPU, else ride as its payload frame.
  const bool over_link = executor_->rows_on_device();
  const pb::Envelope* header = &message.envelope;
  if (over_link || message.envelope.step().activations_over_nccl()) {
    forwarded_ = message.envelope;
    forwarded_.mutable_step()->set_activations_over_nccl(over_link);
    header = &forwarded_;
  }
  if (over_link) {
    RETURN_IF_ERROR(wire::Send(*next_, *header, {}, {}, /*dont_wait=*/true));
    return executor_->SendRows();
  }
  const auto* bytes = reinterpret_cast<const uint8_t*>(activations_.data());
  return wire::Send(*next_, *header,
                    std::span<const uint8_t>(bytes, activations_.size() * sizeof(float)), {},
                    /*dont_wait=*/true);
}

absl::Status WorkerService::Run() {
  ConnectControl();
  const std::chrono::microseconds busy_poll =
      options_.busy_poll_us >= 0   ? std::chrono::microseconds(options_.busy_poll_us)
      : options_.backend == "cuda" ? wire::kAutoBusyPoll
                                   : std::chrono::microseconds(0);
  while (!stop_.load(std::memory_order_relaxed) && !shutdown_) {
    zmq::pollitem_t items[] = {{control_->handle(), 0, ZMQ_POLLIN, 0},
                               {data_->handle(), 0, ZMQ_POLLIN, 0}};
    try {
      wire::PollSpinningFirst(items, last_step_ + busy_poll,
                              std::chrono::milliseconds(loading_.valid() ? 10 : 50));
      std::vector<wire::Message> deferred;
      deferred.swap(deferred_control_);
      for (const wire::Message& message : deferred) HandleControl(message);
      for (int i = 0; i < 64 && (items[0].revents & ZMQ_POLLIN) != 0; ++i) {
        absl::StatusOr<std::optional<wire::Message>> message =
            wire::Receive(*control_, false, true);
        if (!message.ok()) {
          log::Warn("worker %s: bad control message: %s", options_.worker_id,
                    message.status().ToString());
          continue;
        }
        if (!message->has_value()) break;
        HandleControl(**message);
      }
      if ((items[1].revents & ZMQ_POLLIN) != 0) {
        HandleData();
        last_step_ = Clock::now();
      }
      if (!held_.empty()) RunHeldSteps();  // their deadlines
      FinishLoad();
      WatchFirstStageLink();
      KeepLink();
    } catch (const zmq::error_t& error) {
      if (error.num() == EINTR) continue;  // a signal; the loop condition decides
      return absl::UnavailableError(absl::StrCat("zmq: ", error.what()));
    } catch (const std::exception& error) {  // e.g. bad_alloc on a huge step: drop it, keep serving
      log::Error("worker %s: %s", options_.worker_id, error.what());
    }
  }
  LogShardCacheStats(/*summary=*/true);
  log::Info("worker %s: stopped", options_.worker_id);
  return absl::OkStatus();
}

}  // namespace chord
