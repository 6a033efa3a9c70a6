#include "coordinator/fake_worker.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/gguf/gguf_file.h"
#include "common/model/kv_pages.h"

namespace chord::coordinator::testing {
namespace {

// The positions a chunk feeds: a chained step's pending token is one.
uint32_t ChunkTokens(const wire::pb::SequenceChunk& chunk) {
  return chunk.token_pending() ? 1 : static_cast<uint32_t>(chunk.token_ids_size());
}

}  // namespace

void AnsweredSteps::Add(uint64_t step_id) {
  std::lock_guard lock(mutex_);
  ids_.push_back(step_id);
  if (ids_.size() > 256) ids_.pop_front();
}

bool AnsweredSteps::Contains(uint64_t step_id) const {
  std::lock_guard lock(mutex_);
  return std::find(ids_.begin(), ids_.end(), step_id) != ids_.end();
}

absl::StatusOr<std::unique_ptr<ModelContext>> LoadTestModel() {
  if (!std::filesystem::exists(CHORD_DEFAULT_MODEL)) return absl::NotFoundError(CHORD_DEFAULT_MODEL);
  auto file = gguf::GgufFile::Open(CHORD_DEFAULT_MODEL);
  if (!file.ok()) return file.status();
  return MakeModelContext("test-sha", "stories260K.gguf", *std::move(file));
}

FakeWorker::FakeWorker(zmq::context_t& context, std::string control_endpoint, FakeWorkerOptions options)
    : context_(context),
      control_endpoint_(std::move(control_endpoint)),
      options_(std::move(options)),
      control_(context, zmq::socket_type::dealer),
      data_(context, zmq::socket_type::pull) {
  if (options_.answered == nullptr) options_.answered = std::make_shared<AnsweredSteps>();
  control_.set(zmq::sockopt::linger, 0);
  control_.set(zmq::sockopt::routing_id, options_.id);
  data_.set(zmq::sockopt::linger, 0);
  data_.bind("tcp://127.0.0.1:0");
  data_endpoint_ = data_.get(zmq::sockopt::last_endpoint);
  control_.connect(control_endpoint_);
  thread_ = std::thread([this] { Run(); });
}

FakeWorker::~FakeWorker() {
  stop_ = true;
  thread_.join();
}

void FakeWorker::Run() {
  wire::pb::Envelope hello;
  *hello.mutable_hello() = wire::MakeHello("worker", options_.id, "");
  (void)wire::Send(control_, hello);
  wire::pb::Envelope reg;
  wire::pb::RegisterWorker& r = *reg.mutable_register_worker();
  r.set_worker_id(options_.id);
  r.set_data_endpoint(data_endpoint_);
  r.set_backend("cpu");
  r.set_weight_bytes_per_second(options_.weight_bytes_per_second);
  (void)wire::Send(control_, reg);
  while (!stop_) {
    zmq::pollitem_t items[] = {{control_.handle(), 0, ZMQ_POLLIN, 0}, {data_.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 2, std::chrono::milliseconds(10));
    if (silent_) continue;
    for (;;) {
      auto message = wire::Receive(control_, false, true);
      if (!message.ok() || !message->has_value()) break;
      OnControl((*message)->envelope);
    }
    // Steps can queue up back to back (chained ones): going silent takes
    // effect between two of them.
    while (!silent_) {
      auto message = wire::Receive(data_, false, true);
      if (!message.ok() || !message->has_value()) break;
      if ((*message)->envelope.has_step()) OnStep((*message)->envelope.step());
    }
    // Held chained steps whose followed step has been answered since.
    for (size_t i = 0; i < held_.size() && !silent_;) {
      if (!options_.answered->Contains(held_[i].follows_step_id())) {
        ++i;
        continue;
      }
      const wire::pb::StepHeader header = held_[i];
      held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
      OnStep(header);
    }
  }
}

void FakeWorker::OnControl(const wire::pb::Envelope& envelope) {
  if (envelope.has_heartbeat()) {
    (void)wire::Send(control_, envelope);
  } else if (envelope.has_assign_layers()) {
    const wire::pb::AssignLayers& assign = envelope.assign_layers();
    {
      std::lock_guard lock(mutex_);
      assignments_.push_back(assign);
    }
    {
      std::lock_guard lock(mutex_);
      kv_page_size_ = assign.kv_page_size() != 0 ? assign.kv_page_size() : kDefaultKvPageSize;
      kv_pages_total_ = KvPageCount(assign.kv_tokens(), assign.kv_slots(), assign.n_ctx(), kv_page_size_)
                            .value_or(-1);
      slots_.clear();
    }
    last_stage_ = assign.next_data_endpoint().empty();
    stage_index_ = static_cast<int>(assign.stage_index());
    if (!last_stage_) {
      next_ = zmq::socket_t(context_, zmq::socket_type::push);
      next_.set(zmq::sockopt::linger, 0);
      next_.connect(assign.next_data_endpoint());
    }
    wire::pb::Envelope ready;
    ready.mutable_stage_ready()->set_plan_version(assign.plan_version());
    ready.mutable_stage_ready()->set_first_stage_linked(!assign.first_data_endpoint().empty() &&
                                                        options_.reaches_first_stage);
    (void)wire::Send(control_, ready);
  } else if (envelope.has_free_slots()) {
    FreeSlots(envelope.free_slots());
  } else if (envelope.has_shutdown()) {
    got_shutdown_ = true;
  }
}

void FakeWorker::FreeSlots(const wire::pb::FreeSlots& free) {
  std::lock_guard lock(mutex_);
  for (int i = 0; i < free.slots_size(); ++i) {
    const uint32_t slot = free.slots(i);
    freed_.insert(slot);
    auto it = slots_.find(slot);
    if (it != slots_.end() && (i >= free.sequence_ids_size() || it->second.first == free.sequence_ids(i))) {
      slots_.erase(it);
    }
  }
}

void FakeWorker::TrackKvPages(const wire::pb::StepHeader& header) {
  std::lock_guard lock(mutex_);
  for (const wire::pb::SequenceChunk& chunk : header.sequences()) {
    auto& [owner, positions] = slots_[chunk.slot()];
    if (chunk.first_position() == 0) owner = chunk.sequence_id();
    positions = chunk.first_position() + ChunkTokens(chunk);
  }
  int64_t held = 0;
  for (const auto& [slot, state] : slots_) held += KvPagesFor(state.second, kv_page_size_);
  max_kv_pages_held_ = std::max(max_kv_pages_held_, held);
}

void FakeWorker::OnStep(const wire::pb::StepHeader& header) {
  if (stage_index_ == 0 && !last_stage_ && header.follows_step_id() != 0 &&
      !options_.answered->Contains(header.follows_step_id())) {
    held_.push_back(header);  // until the last stage has answered the step it follows
    return;
  }
  {
    std::lock_guard lock(mutex_);
    steps_.push_back(header);
  }
  if (swallow_steps_ != 0) {
    if (swallow_steps_ > 0) --swallow_steps_;
    return;
  }
  FreeSlots(header.released());
  TrackKvPages(header);
  if (stage_index_ == 0 && options_.in_flight != nullptr) {
    const int now = ++*options_.in_flight;
    int seen = options_.max_in_flight->load();
    while (now > seen && !options_.max_in_flight->compare_exchange_weak(seen, now)) {
    }
  }
  std::this_thread::sleep_for(options_.step_delay);
  wire::pb::Envelope out;
  if (!last_stage_) {
    *out.mutable_step() = header;
    (void)wire::Send(next_, out);
    return;
  }
  wire::pb::StepResult& result = *out.mutable_step_result();
  result.set_plan_version(header.plan_version());
  result.set_step_id(header.step_id());
  if (header.follows_step_id() != 0 && !options_.answered->Contains(header.follows_step_id())) {
    // As a real pipeline: a chained step runs only on the tokens of the step it follows.
    *result.mutable_status() = wire::ToProto(
        absl::UnavailableError("the step it is chained to did not sample"), options_.id);
  } else if (fail_steps_) {
    *result.mutable_status() = wire::ToProto(absl::InternalError("injected failure"), options_.id);
  } else if (failed_steps_ > 0) {
    --failed_steps_;
    const absl::StatusCode code = failed_steps_code_;
    const std::string what =
        code == absl::StatusCode::kDeadlineExceeded
            ? absl::StrCat("step ", header.step_id(), " arrived 5 ms after its deadline")
            : std::string("the next stage took no step");
    *result.mutable_status() = wire::ToProto(absl::Status(code, what), options_.id);
  } else {
    for (const wire::pb::SequenceChunk& chunk : header.sequences()) {
      if (!chunk.sample()) continue;
      const uint32_t position = chunk.first_position() + ChunkTokens(chunk);
      wire::pb::SampledToken& token = *result.add_tokens();
      token.set_sequence_id(chunk.sequence_id());
      const bool eos = options_.eos_after >= 0 && position >= static_cast<uint32_t>(options_.eos_after);
      token.set_token_id(eos ? options_.eos_id : FakeToken(position));
      for (uint32_t i = 0; i < chunk.logprobs(); ++i) {
        wire::pb::TokenLogprob& entry = *token.add_top_logprobs();
        entry.set_id(FakeToken(position) + i);
        entry.set_logprob(-0.5f * static_cast<float>(i + 1));
      }
    }
  }
  ++answered_;
  if (!result.has_status()) options_.answered->Add(header.step_id());
  if (options_.in_flight != nullptr) --*options_.in_flight;
  (void)wire::Send(control_, out);
}

std::vector<wire::pb::StepHeader> FakeWorker::steps() const {
  std::lock_guard lock(mutex_);
  return steps_;
}

std::vector<wire::pb::AssignLayers> FakeWorker::assignments() const {
  std::lock_guard lock(mutex_);
  return assignments_;
}

int64_t FakeWorker::max_kv_pages_held() const {
  std::lock_guard lock(mutex_);
  return max_kv_pages_held_;
}

int64_t FakeWorker::kv_pages_total() const {
  std::lock_guard lock(mutex_);
  return kv_pages_total_;
}

std::set<uint32_t> FakeWorker::freed_slots() const {
  std::lock_guard lock(mutex_);
  return freed_;
}

}  // namespace chord::coordinator::testing
