#include "coordinator/scheduler.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <utility>

#include "common/base/log.h"
#include "coordinator/scheduler_core.h"

namespace chord::coordinator {

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Start(zmq::context_t& context,
                                                            SchedulerOptions options,
                                                            const ModelContext& model) {
  if (absl::StatusOr<int64_t> pages =
          KvPageCount(options.pool.kv_tokens, options.pool.kv_slots, options.pool.n_ctx,
                      options.pool.kv_page_size);
      !pages.ok()) {
    return pages.status();
  }
  std::unique_ptr<Scheduler> scheduler(new Scheduler());
  scheduler->max_queue_ = options.max_queue;
  scheduler->wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (scheduler->wake_fd_ < 0) return absl::InternalError("eventfd failed");
  scheduler->core_ = std::make_unique<SchedulerCore>(context, std::move(options), model, *scheduler);
  if (absl::Status bound = scheduler->core_->Bind(&scheduler->control_endpoint_); !bound.ok()) {
    return bound;
  }
  scheduler->thread_ = std::thread([s = scheduler.get()] { s->core_->Run(); });
  return scheduler;
}

Scheduler::~Scheduler() {
  if (thread_.joinable()) {
    Post(Command{Command::Kind::kShutdown, "", nullptr, {}, {}});
    thread_.join();
  }
  core_.reset();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void Scheduler::Post(Command command) {
  {
    std::lock_guard lock(mutex_);
    commands_.push_back(std::move(command));
  }
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t written = write(wake_fd_, &one, sizeof(one));
}

std::vector<Scheduler::Command> Scheduler::TakeCommands() {
  uint64_t count = 0;
  [[maybe_unused]] const ssize_t got = read(wake_fd_, &count, sizeof(count));
  std::lock_guard lock(mutex_);
  return std::exchange(commands_, {});
}

absl::StatusOr<std::shared_ptr<RequestStream>> Scheduler::Submit(ValidatedRequest request) {
  if (draining_.load()) return absl::UnavailableError("the server is shutting down");
  if (!accepting_.load()) return absl::UnavailableError("the model is not loaded on every stage");
  if (queued_.fetch_add(1) >= max_queue_) {
    queued_.fetch_sub(1);
    return absl::ResourceExhaustedError("the request queue is full; retry later");
  }
  {
    std::lock_guard lock(mutex_);
    if (!live_ids_.insert(request.request_id).second) {
      queued_.fetch_sub(1);
      return absl::AlreadyExistsError("request id " + request.request_id + " is already running");
    }
  }
  auto stream = std::make_shared<RequestStream>();
  std::string id = request.request_id;
  Post(Command{Command::Kind::kSubmit, std::move(id), stream, std::move(request), Clock::now()});
  return stream;
}

bool Scheduler::Abort(const std::string& request_id) {
  {
    std::lock_guard lock(mutex_);
    if (!live_ids_.contains(request_id)) return false;
  }
  Post(Command{Command::Kind::kAbort, request_id, nullptr, {}, {}});
  return true;
}

void Scheduler::SetServingCallback(std::function<void(bool)> callback) {
  std::lock_guard lock(mutex_);
  serving_callback_ = std::move(callback);
}

chord::v1::ServerInfo Scheduler::ServerInfo() const {
  std::lock_guard lock(mutex_);
  return info_;
}

void Scheduler::Drain(std::chrono::milliseconds grace) {
  draining_.store(true);
  const Clock::time_point until = Clock::now() + grace;
  while (Clock::now() < until && queued_.load() + running_.load() > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (thread_.joinable()) {
    Post(Command{Command::Kind::kShutdown, "", nullptr, {}, {}});
    thread_.join();
  }
}

}  // namespace chord::coordinator
