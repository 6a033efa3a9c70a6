#include "coordinator/scheduler_core.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/log.h"
#include "common/base/status.h"
#include "common/wire/poll.h"

namespace chord::coordinator {
namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// A step a stage could not forward (UNAVAILABLE) or that ran past its deadline
// (DEADLINE_EXCEEDED, or no answer in time) is replayed this many times per
// sequence before the request fails.
constexpr int kMaxStepRetries = 3;

wire::pb::Sampling ToWire(const SamplingParams& in) {
  wire::pb::Sampling out;
  out.set_temperature(in.temperature);
  out.set_top_k(in.top_k);
  out.set_top_p(in.top_p);
  out.set_min_p(in.min_p);
  out.set_repetition_penalty(in.repetition_penalty);
  out.set_presence_penalty(in.presence_penalty);
  out.set_frequency_penalty(in.frequency_penalty);
  out.set_penalty_last_n(in.penalty_last_n);
  out.set_seed(in.seed);
  for (const auto& [id, bias] : in.logit_bias) (*out.mutable_logit_bias())[static_cast<uint32_t>(id)] = bias;
  return out;
}

}  // namespace

SchedulerCore::SchedulerCore(zmq::context_t& context, SchedulerOptions options, const ModelContext& model,
                             Scheduler& owner)
    : context_(context),
      options_(std::move(options)),
      model_(model),
      owner_(owner),
      pool_(options_.pool, model),
      control_(context, zmq::socket_type::router) {
  for (int slot = 0; slot < options_.pool.kv_slots; ++slot) free_slots_.push_back(slot);
  kv_pages_total_ = KvPageCount(options_.pool.kv_tokens, options_.pool.kv_slots,
                                options_.pool.n_ctx, options_.pool.kv_page_size)
                        .value();  // checked by Scheduler::Start
  kv_pages_free_ = kv_pages_total_;
}

absl::Status SchedulerCore::Bind(std::string* endpoint) {
  try {
    control_.set(zmq::sockopt::linger, 0);
    control_.set(zmq::sockopt::sndhwm, 10000);
    control_.set(zmq::sockopt::rcvhwm, 10000);
    // A worker restarted under the same id (its identity) takes the route over
    // from its dead or hung predecessor's connection instead of being ignored.
    control_.set(zmq::sockopt::router_handover, true);
    RETURN_IF_ERROR(wire::SecureServer(control_, options_.curve));
    control_.bind(options_.control_bind);
    *endpoint = control_.get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& error) {
    return absl::UnavailableError(absl::StrCat("cannot bind ", options_.control_bind, ": ", error.what()));
  }
  return absl::OkStatus();
}

void SchedulerCore::Run() {
  bool stop = false;
  Clock::time_point next_tick = Clock::now();
  while (!stop) {
    zmq::pollitem_t items[] = {{control_.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, owner_.wake_fd_, ZMQ_POLLIN, 0}};
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - Clock::now());
    // While steps are out, their answers are due: spin for a while first.
    const std::chrono::microseconds busy_poll =
        options_.busy_poll.count() >= 0 ? options_.busy_poll
        : pool_.stages_on_gpus()        ? wire::kAutoBusyPoll
                                        : std::chrono::microseconds(0);
    const Clock::time_point spin_until =
        steps_.empty() ? Clock::time_point{} : last_step_event_ + busy_poll;
    try {
      wire::PollSpinningFirst(items, spin_until, std::max(wait, std::chrono::milliseconds(0)));
    } catch (const zmq::error_t& error) {
      log::Warn("poll: %s", error.what());
    }
    HandleCommands(&stop);
    const Clock::time_point now = Clock::now();
    ReceiveControl(now);
    ExpireSteps(now);  // at least once per tick: the poll above waits no longer
    if (now >= next_tick) {
      SendControl(pool_.Tick(now));
      next_tick = now + options_.tick;
    }
    CheckPlan(now);
    Admit();
    LaunchSteps();
    DeliverTokens();
    ReleaseEnded();
    FlushFreeSlots();
    Publish();
  }
  FailAll(absl::UnavailableError("the server is shutting down"));
  wire::pb::Envelope shutdown;
  shutdown.mutable_shutdown()->set_reason("coordinator shutting down");
  SendControl(pool_.Broadcast(shutdown));
  control_.set(zmq::sockopt::linger, 1000);  // let the Shutdowns out before the socket closes
  Publish();
}

void SchedulerCore::HandleCommands(bool* stop) {
  for (Scheduler::Command& command : owner_.TakeCommands()) {
    switch (command.kind) {
      case Scheduler::Command::Kind::kSubmit: {
        auto sequence = std::make_unique<Sequence>();
        sequence->id = next_sequence_id_++;
        sequence->journal = Journal(command.request.prompt);
        sequence->request = std::move(command.request);
        sequence->stream = std::move(command.stream);
        sequence->accepted = command.accepted;
        sequence->detokenizer = std::make_unique<StreamingDetokenizer>(*model_.tokenizer);
        sequence->stop = std::make_unique<StopMatcher>(sequence->request.stop);
        log::RequestInfo(sequence->request.request_id,
                         "accepted: %d prompt tokens, max_tokens %d, %d queued before it",
                         sequence->journal.prompt_size(), sequence->request.max_tokens,
                         queue_.size());
        queue_.push_back(std::move(sequence));
        break;
      }
      case Scheduler::Command::Kind::kAbort: {
        for (auto it = queue_.begin(); it != queue_.end(); ++it) {
          if ((*it)->request.request_id != command.request_id) continue;
          std::unique_ptr<Sequence> sequence = std::move(*it);
          queue_.erase(it);
          owner_.queued_.fetch_sub(1);
          ++owner_.running_;  // Finish() counts it out again
          Finish(*sequence, chord::v1::FINISH_REASON_ABORT);
          break;
        }
        for (auto& [id, sequence] : running_) {
          if (sequence->request.request_id == command.request_id && !sequence->ended) {
            Finish(*sequence, chord::v1::FINISH_REASON_ABORT);
          }
        }
        break;
      }
      case Scheduler::Command::Kind::kShutdown:
        *stop = true;
        break;
    }
  }
}

void SchedulerCore::ReceiveControl(Clock::time_point now) {
  // Bounded per round, so that a peer flooding the control socket cannot keep
  // this thread from launching steps and answering heartbeats.
  constexpr int kMaxMessagesPerRound = 1024;
  for (int i = 0; i < kMaxMessagesPerRound; ++i) {
    absl::StatusOr<std::optional<wire::Message>> message = wire::Receive(control_, /*router=*/true, true);
    if (!message.ok()) {
      log::Warn("dropping a bad control message: %s", message.status().ToString());
      continue;
    }
    if (!message->has_value()) return;
    wire::Message& m = **message;
    if (m.envelope.has_register_worker() && options_.curve.enabled()) {
      // The key ZAP authenticated for this connection, not the worker's claim:
      // it is what the previous stage will require of the worker's data socket.
      m.envelope.mutable_register_worker()->set_curve_public_key(m.peer_key);
    }
    if (m.envelope.has_step_result()) {
      OnStepResult(m.envelope.step_result(), now);
      SendControl(pool_.OnMessage(m.identity, wire::pb::Envelope(), now));  // counts as a sign of life
    } else {
      SendControl(pool_.OnMessage(m.identity, m.envelope, now));
    }
  }
}

void SchedulerCore::SendControl(const std::vector<OutgoingControl>& messages) {
  for (const OutgoingControl& message : messages) {
    const absl::Status sent = wire::Send(control_, message.envelope, {}, message.identity, true);
    if (!sent.ok()) log::Warn("control message to %s not sent: %s", message.identity, sent.ToString());
  }
}

void SchedulerCore::CheckPlan(Clock::time_point now) {
  if (pool_.plan_version() != data_plan_version_ && !pool_.stage0_endpoint().empty()) {
    data_ = zmq::socket_t(context_, zmq::socket_type::push);
    data_.set(zmq::sockopt::linger, 0);
    data_.set(zmq::sockopt::sndhwm, 1000);
    try {
      if (absl::Status secured = wire::SecureClient(data_, options_.curve, pool_.stage0_public_key());
          !secured.ok()) {
        log::Error("cannot secure the link to stage 0: %s", secured.ToString());
      }
      data_.connect(pool_.stage0_endpoint());
    } catch (const zmq::error_t& error) {
      log::Error("cannot connect to stage 0 at %s: %s", pool_.stage0_endpoint(), error.what());
    }
    data_plan_version_ = pool_.plan_version();
  }
  const bool serving = pool_.serving();
  const absl::Status capacity = serving ? absl::OkStatus() : pool_.Capacity();
  ever_served_ |= serving;
  owner_.accepting_.store(serving || (ever_served_ && capacity.ok()));
  if (serving != was_serving_) {
    was_serving_ = serving;
    owner_.serving_.store(serving);
    log::Info("health: %s", serving ? "SERVING" : "NOT_SERVING");
    std::function<void(bool)> callback;
    {
      std::lock_guard lock(owner_.mutex_);
      callback = owner_.serving_callback_;
    }
    if (callback) callback(serving);
  }
  if (pool_.TakePlanDisrupted()) {
    plan_changed_at_ = now;
    Rewind();
  }
  // After the serving flag, so a failed client sees the server as not serving.
  if (serving) return;
  if (!capacity.ok()) {
    FailAll(capacity);
  } else if (now - plan_changed_at_ > options_.replan_timeout) {
    FailAll(
        absl::UnavailableError(absl::StrCat("the pipeline's stages were not ready within ",
                                            options_.replan_timeout.count(), " ms of a re-plan")));
  }
}

void SchedulerCore::Rewind() {
  size_t sequences = 0, tokens = 0;
  for (auto& [id, sequence] : running_) {
    sequence->in_flight = 0;  // the old plan's steps are dropped
    if (sequence->ended) continue;
    ++sequences;
    tokens += sequence->journal.size();
    log::RequestWarn(sequence->request.request_id,
                     "plan %d: its KV cache is rebuilt by replaying %d journal tokens",
                     pool_.plan_version(), sequence->journal.size());
    sequence->fed = 0;
    sequence->hold_until = {};
  }
  steps_.clear();
  if (sequences > 0) {
    log::Warn("plan %d: replaying %d running sequences (%d tokens) once every stage is ready",
              pool_.plan_version(), sequences, tokens);
  }
}

void SchedulerCore::Admit() {
  while (!queue_.empty() && !free_slots_.empty() && was_serving_) {
    // The whole prompt (or journal, after a preemption) must fit now, so an
    // admitted prefill does not preempt at once; the queue stays in order.
    const int64_t pages = KvPagesFor(static_cast<int64_t>(queue_.front()->journal.size()),
                                     options_.pool.kv_page_size);
    if (pages > kv_pages_free_) break;
    std::unique_ptr<Sequence> sequence = std::move(queue_.front());
    queue_.pop_front();
    sequence->slot = free_slots_.front();
    free_slots_.erase(free_slots_.begin());
    sequence->kv_pages = pages;
    kv_pages_free_ -= pages;
    if (sequence->scheduled == Clock::time_point{}) sequence->scheduled = Clock::now();
    log::RequestDebug(sequence->request.request_id, "scheduled in KV slot %d after %.3f s queued",
                      sequence->slot, Seconds(Clock::now() - sequence->accepted));
    owner_.queued_.fetch_sub(1);
    ++owner_.running_;
    const uint64_t id = sequence->id;
    running_.emplace(id, std::move(sequence));
  }
}

void SchedulerCore::LaunchSteps() {
  // A step a stage, and, chained, a step behind each.
  const int most = (Chaining() ? 2 : 1) * pool_.n_stages();
  while (was_serving_ && static_cast<int>(steps_.size()) < most && LaunchOneStep()) {
  }
}

uint64_t SchedulerCore::StepToChainBehind() const {
  uint64_t chosen = 0, chosen_order = 0;
  for (const auto& [id, step] : steps_) {
    if (step.followed || (chosen != 0 && step.order > chosen_order)) continue;
    for (const StepEntry& entry : step.entries) {
      const auto it = running_.find(entry.sequence_id);
      if (it == running_.end() || !Chainable(*it->second, id)) continue;
      chosen = id;
      chosen_order = step.order;
      break;
    }
  }
  return chosen;
}

bool SchedulerCore::Chainable(const Sequence& sequence, uint64_t follows) const {
  if (follows == 0 || sequence.ended || sequence.in_flight != 1 || sequence.newest_step != follows ||
      !sequence.newest_samples) {
    return false;
  }
  // The followed step samples the token at position newest_end, the chained
  // one the token after it: both must be wanted.
  return static_cast<int64_t>(sequence.journal.generated()) + 2 <= sequence.request.max_tokens &&
         static_cast<int64_t>(sequence.newest_end) + 1 < options_.pool.n_ctx;
}

bool SchedulerCore::LaunchOneStep() {
  const Clock::time_point now = Clock::now();
  wire::pb::Envelope envelope;
  wire::pb::StepHeader& header = *envelope.mutable_step();
  header.set_plan_version(pool_.plan_version());
  header.set_n_embd(static_cast<uint32_t>(model_.config.n_embd));
  // Stages compare it with their own system clock (PROTOCOL.md, "Data plane").
  header.set_deadline_unix_micros(
      wire::UnixMicrosNow() +
      std::chrono::duration_cast<std::chrono::microseconds>(options_.step_timeout).count());
  // Chained behind a step while it runs: its sampling sequences go on with
  // the tokens it samples, which stage 0 fills in.
  const uint64_t follows = Chaining() ? StepToChainBehind() : 0;
  Step step{pool_.plan_version(), 0, false, launches_ + 1, {}, now, now + options_.step_timeout};
  std::vector<uint64_t> ids;  // GrantPages may move running sequences back to the queue
  for (const auto& [id, sequence] : running_) ids.push_back(id);
  // Micro-batches: the running sequences are dealt among as many steps as
  // there are stages, so that every stage has a step to run while the others
  // run theirs (one step of every sequence would leave all but one stage idle).
  const size_t n_stages = static_cast<size_t>(std::max(1, pool_.n_stages()));
  const size_t per_step = (ids.size() + n_stages - 1) / n_stages;
  std::set<uint64_t> in_step;
  int64_t step_tokens = 0;  // at most wire::kMaxStepTokens: stages refuse larger steps
  for (const uint64_t id : ids) {
    if (step.entries.size() >= per_step || step_tokens >= wire::kMaxStepTokens) break;
    auto it = running_.find(id);
    if (it == running_.end()) continue;  // preempted for an older sequence of this step
    Sequence* sequence = it->second.get();
    if (sequence->ended || now < sequence->hold_until) continue;
    if (sequence->in_flight > 0) {
      if (!Chainable(*sequence, follows)) continue;
      if (!GrantPages(*sequence, static_cast<int64_t>(sequence->newest_end) + 1, in_step)) continue;
      in_step.insert(id);
      wire::pb::SequenceChunk& chunk = *header.add_sequences();
      chunk.set_sequence_id(id);
      chunk.set_slot(static_cast<uint32_t>(sequence->slot));
      chunk.set_first_position(static_cast<uint32_t>(sequence->newest_end));
      chunk.set_token_pending(true);
      chunk.set_sample(true);
      *chunk.mutable_sampling() = ToWire(sequence->request.sampling);
      chunk.set_logprobs(sequence->request.logprobs);
      step.entries.push_back({id, 1, true});
      step.follows = follows;
      ++step_tokens;
      continue;
    }
    if (sequence->fed >= sequence->journal.size()) continue;
    const size_t count = std::min({sequence->journal.size() - sequence->fed,
                                   static_cast<size_t>(options_.prefill_chunk),
                                   static_cast<size_t>(wire::kMaxStepTokens - step_tokens)});
    if (!GrantPages(*sequence, static_cast<int64_t>(sequence->fed + count), in_step)) continue;
    in_step.insert(id);
    const bool sample = sequence->fed + count == sequence->journal.size();
    wire::pb::SequenceChunk& chunk = *header.add_sequences();
    chunk.set_sequence_id(id);
    chunk.set_slot(static_cast<uint32_t>(sequence->slot));
    chunk.set_first_position(static_cast<uint32_t>(sequence->fed));
    for (const TokenId token : sequence->journal.Range(sequence->fed, count)) {
      chunk.add_token_ids(static_cast<uint32_t>(token));
    }
    chunk.set_sample(sample);
    if (sample) {
      *chunk.mutable_sampling() = ToWire(sequence->request.sampling);
      chunk.set_logprobs(sequence->request.logprobs);
    }
    step.entries.push_back({id, count, sample});
    step_tokens += static_cast<int64_t>(count);
  }
  if (step.entries.empty()) return false;
  // Step ids are drawn at random, never 0 (what a stage reports for a frame
  // it could not parse): a StepResult or a stage's failure report for a step
  // counts only if it names an id the coordinator issued, which a peer that
  // forges or garbles messages cannot guess.
  uint64_t step_id = 0;
  while (step_id == 0 || steps_.contains(step_id)) step_id = step_ids_();
  header.set_step_id(step_id);
  header.set_follows_step_id(step.follows);
  // Several stages: the last one hands the tokens to stage 0 too, for the
  // step that will be chained to this one.
  header.set_tokens_to_first_stage(
      Chaining() && pool_.n_stages() > 1 &&
      std::any_of(step.entries.begin(), step.entries.end(), [](const StepEntry& e) { return e.sample; }));
  for (const auto& [slot, sequence_id] : released_) {
    header.mutable_released()->add_slots(slot);
    header.mutable_released()->add_sequence_ids(sequence_id);
  }
  if (const absl::Status sent = wire::Send(data_, envelope, {}, {}, true); !sent.ok()) {
    return false;  // stage 0 is busy: try again on the next round
  }
  released_.clear();
  last_step_event_ = now;
  for (int i = 0; i < header.sequences_size(); ++i) {
    const StepEntry& entry = step.entries[static_cast<size_t>(i)];
    Sequence& sequence = *running_[entry.sequence_id];
    ++sequence.in_flight;
    sequence.newest_step = step_id;
    sequence.newest_end = header.sequences(i).first_position() + entry.n_tokens;
    sequence.newest_samples = entry.sample;
  }
  ++launches_;
  if (step.follows != 0) steps_[step.follows].followed = true;
  // Unix microseconds: the stages' step lines (worker_service.cc) line up with it.
  log::Debug("step %016x launched at %d us: %d sequences, %d tokens", step_id,
             wire::UnixMicrosNow(), step.entries.size(), step_tokens);
  steps_.emplace(step_id, std::move(step));
  return true;
}

bool SchedulerCore::GrantPages(Sequence& sequence, int64_t end, const std::set<uint64_t>& in_step) {
  const int64_t needed = KvPagesFor(end, options_.pool.kv_page_size) - sequence.kv_pages;
  while (needed > kv_pages_free_) {
    // The newest arrival among the sequences whose pages can be taken now.
    Sequence* victim = nullptr;
    for (auto& [id, candidate] : running_) {
      if (candidate->in_flight > 0 || candidate->ended || candidate->delivering ||
          candidate->kv_pages == 0 || in_step.contains(id)) {
        continue;
      }
      if (victim == nullptr || candidate->accepted >= victim->accepted) victim = candidate.get();
    }
    if (victim == nullptr) return false;  // the others are in flight: try again later
    const bool self = victim == &sequence;
    if (self) {
      // Preempt the asker only when it is the newest: a newer sequence that is
      // in a step now is preempted on a later round instead.
      for (const auto& [id, other] : running_) {
        if (!other->ended && other.get() != &sequence && other->accepted >= sequence.accepted) return false;
      }
    }
    Preempt(victim->id);
    if (self) return false;
  }
  if (needed > 0) {
    sequence.kv_pages += needed;
    kv_pages_free_ -= needed;
  }
  return true;
}

void SchedulerCore::Preempt(uint64_t id) {
  auto it = running_.find(id);
  std::unique_ptr<Sequence> sequence = std::move(it->second);
  running_.erase(it);
  ++preemptions_;
  if (options_.metrics != nullptr) options_.metrics->num_preemptions.Increment();
  log::RequestInfo(sequence->request.request_id,
                   "preempted: the KV cache (%d pages of %d positions) is full; its %d journal "
                   "tokens are recomputed when it is readmitted",
                   kv_pages_total_, options_.pool.kv_page_size, sequence->journal.size());
  FreeSlotOf(*sequence);
  sequence->slot = -1;
  sequence->kv_pages = 0;
  sequence->fed = 0;
  sequence->hold_until = {};
  // A new id: a stage applies a late FreeSlots for the old one only to the
  // old incarnation, never to the sequence restarted in a slot.
  sequence->id = next_sequence_id_++;
  --owner_.running_;
  owner_.queued_.fetch_add(1);
  queue_.push_front(std::move(sequence));
}

void SchedulerCore::FreeSlotOf(const Sequence& sequence) {
  const auto slot = static_cast<uint32_t>(sequence.slot);
  to_free_.push_back({slot, sequence.id});
  released_.push_back({slot, sequence.id});
  free_slots_.insert(std::lower_bound(free_slots_.begin(), free_slots_.end(), sequence.slot),
                     sequence.slot);
  kv_pages_free_ += sequence.kv_pages;
}

void SchedulerCore::OnStepResult(const wire::pb::StepResult& result, Clock::time_point now) {
  auto it = steps_.find(result.step_id());
  if (it == steps_.end() || result.plan_version() != it->second.plan_version) return;  // stale
  last_step_event_ = now;
  log::Debug("step %016x answered at %d us, %.3f ms after its launch", result.step_id(),
             wire::UnixMicrosNow(), 1000.0 * Seconds(now - it->second.launched));
  if (result.has_status() && result.status().code() != 0) {
    log::Warn("step %d failed: %s", result.step_id(), result.status().message());
    // A step chained behind it cannot run: its sequences are replayed too.
    // A chained step that failed while the step it follows is unanswered
    // (lost: a stage answers in order) goes with that step.
    const Step step = TakeWithChained(ChainStart(it));
    // UNAVAILABLE: a stage could not hand the step on (its next stage died or
    // hangs); DEADLINE_EXCEEDED: a stage got it too late.
    ReplayOrFail(step,
                 absl::Status(wire::FromProto(result.status()).code(),
                              "a pipeline stage failed the step: " + result.status().message()),
                 now);
    return;
  }
  const Step step = std::move(it->second);
  steps_.erase(it);
  const auto& tokens = result.tokens();
  int next_token = 0;  // the last stage answers in the step's order
  for (const StepEntry& entry : step.entries) {
    Sequence* sequence = Returned(entry);
    if (sequence == nullptr) continue;
    sequence->fed += entry.n_tokens;
    if (!entry.sample) continue;
    const wire::pb::SampledToken* token = nullptr;
    if (next_token < tokens.size() && tokens[next_token].sequence_id() == entry.sequence_id) {
      token = &tokens[next_token++];
    } else {
      for (const wire::pb::SampledToken& t : tokens) {
        if (t.sequence_id() == entry.sequence_id) token = &t;
      }
    }
    if (token == nullptr || token->token_id() >= static_cast<uint32_t>(model_.tokenizer->vocab_size())) {
      Fail(*sequence, absl::UnavailableError("the last stage returned no valid token"));
      continue;
    }
    OnToken(*sequence, *token);
  }
}

SchedulerCore::Step SchedulerCore::TakeWithChained(std::map<uint64_t, Step>::iterator it) {
  const uint64_t step_id = it->first;
  Step step = std::move(it->second);
  steps_.erase(it);
  for (auto chained = steps_.begin(); chained != steps_.end();) {
    if (chained->second.follows != step_id) {
      ++chained;
      continue;
    }
    const uint64_t chained_id = chained->first;
    const Step behind = TakeWithChained(chained);
    log::Warn("step %d is dropped with step %d, which it is chained to", chained_id, step_id);
    step.entries.insert(step.entries.end(), behind.entries.begin(), behind.entries.end());
    chained = steps_.begin();  // the map changed
  }
  return step;
}

std::map<uint64_t, SchedulerCore::Step>::iterator SchedulerCore::ChainStart(
    std::map<uint64_t, Step>::iterator it) {
  while (it->second.follows != 0) {
    const auto followed = steps_.find(it->second.follows);
    if (followed == steps_.end()) break;
    it = followed;
  }
  return it;
}

void SchedulerCore::ExpireSteps(Clock::time_point now) {
  std::vector<uint64_t> expired;
  for (const auto& [id, step] : steps_) {
    if (now >= step.deadline) expired.push_back(id);
  }
  for (const uint64_t step_id : expired) {
    const auto it = steps_.find(step_id);
    if (it == steps_.end()) continue;  // dropped with a step it was chained to
    const Step step = TakeWithChained(ChainStart(it));
    const auto age = std::chrono::duration_cast<std::chrono::milliseconds>(now - step.launched);
    log::Warn("step %d expired: no result %d ms after its launch (step timeout %d ms)", step_id,
              age.count(), options_.step_timeout.count());
    // A late StepResult names an id no longer in steps_, and is ignored.
    ReplayOrFail(step,
                 absl::DeadlineExceededError(absl::StrFormat(
                     "step %d got no result within the step timeout (%d ms)", step_id,
                     options_.step_timeout.count())),
                 now);
  }
}

void SchedulerCore::ReplayOrFail(const Step& step, const absl::Status& cause,
                                 Clock::time_point now) {
  // RESOURCE_EXHAUSTED: a stage's KV pool was short (its released slots came
  // late); the pages are back by the replay.
  const bool replayable = absl::IsUnavailable(cause) || absl::IsDeadlineExceeded(cause) ||
                          absl::IsResourceExhausted(cause);
  std::set<uint64_t> seen;  // a sequence in a step and the one chained behind it: one retry
  for (const StepEntry& entry : step.entries) {
    Sequence* sequence = Returned(entry);
    if (sequence == nullptr || !seen.insert(entry.sequence_id).second) continue;
    if (replayable && sequence->step_retries < kMaxStepRetries) {
      // From position 0, once a lost stage has been noticed and replaced.
      ++sequence->step_retries;
      sequence->fed = 0;
      sequence->hold_until = now + options_.pool.worker_timeout;
      continue;
    }
    Fail(*sequence, absl::UnavailableError(cause.message()));
  }
}

SchedulerCore::Sequence* SchedulerCore::Returned(const StepEntry& entry) {
  auto it = running_.find(entry.sequence_id);
  if (it == running_.end()) return nullptr;
  Sequence& sequence = *it->second;
  if (sequence.in_flight > 0) --sequence.in_flight;
  return sequence.ended ? nullptr : &sequence;
}

void SchedulerCore::OnToken(Sequence& sequence, const wire::pb::SampledToken& sampled) {
  // A token of this sequence accepted earlier in this round (a chained step's
  // answer came with the answer of the step it follows) goes out first: its
  // text may complete a stop string, which ends the sequence before this one.
  DeliverDeferred(sequence);
  if (sequence.ended) return;
  const TokenId token = static_cast<TokenId>(sampled.token_id());
  const ValidatedRequest& request = sequence.request;
  const Clock::time_point now = Clock::now();
  if (options_.metrics != nullptr) {
    options_.metrics->generation_tokens.Increment();
    if (sequence.journal.generated() == 0) {
      options_.metrics->time_to_first_token.Observe(Seconds(now - sequence.accepted));
    } else {
      options_.metrics->inter_token_latency.Observe(Seconds(now - sequence.last_token));
    }
  }
  if (sequence.journal.generated() == 0) sequence.first_token = now;
  sequence.last_token = now;
  const bool stop_token =
      std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(), token) !=
          request.stop_token_ids.end() ||
      (!request.ignore_eos && model_.tokenizer->IsEndOfGeneration(token));
  sequence.journal.Append(token);
  if (stop_token) return Finish(sequence, chord::v1::FINISH_REASON_STOP);
  const bool length = static_cast<int>(sequence.journal.generated()) >= request.max_tokens ||
                      static_cast<int64_t>(sequence.journal.size()) >= options_.pool.n_ctx;
  if (!length) {
    sequence.delivering = true;
    deliveries_.emplace_back(&sequence, sampled);
    return;
  }
  DeliverToken(sequence, sampled);
  if (!sequence.ended) Finish(sequence, chord::v1::FINISH_REASON_LENGTH);
}

void SchedulerCore::DeliverDeferred(Sequence& sequence) {
  if (!sequence.delivering) return;
  sequence.delivering = false;
  for (auto it = deliveries_.begin(); it != deliveries_.end();) {
    if (it->first != &sequence) {
      ++it;
      continue;
    }
    if (!sequence.ended) DeliverToken(sequence, it->second);
    it = deliveries_.erase(it);
  }
}

void SchedulerCore::DeliverToken(Sequence& sequence, const wire::pb::SampledToken& sampled) {
  const TokenId token = static_cast<TokenId>(sampled.token_id());
  const ValidatedRequest& request = sequence.request;
  StreamEvent event;
  event.response.set_request_id(request.request_id);
  event.response.add_token_ids(sampled.token_id());
  event.response.set_text(sequence.stop->Feed(sequence.detokenizer->Push(token)));
  if (request.logprobs > 0) {
    chord::v1::TopLogprobs& top = *event.response.add_logprobs();
    for (const wire::pb::TokenLogprob& entry : sampled.top_logprobs()) {
      chord::v1::TokenLogprob& out = *top.add_entries();
      out.set_id(entry.id());
      out.set_logprob(entry.logprob());
    }
  }
  sequence.stream->Push(std::move(event));
  if (sequence.stop->stopped()) Finish(sequence, chord::v1::FINISH_REASON_STOP);
}

void SchedulerCore::DeliverTokens() {
  for (auto& [sequence, token] : deliveries_) {
    sequence->delivering = false;
    // Failed or aborted since: the client already has its last event. A stop
    // string completed here ends a sequence that may be in a step again: that
    // step's token is dropped when it returns (Returned).
    if (!sequence->ended) DeliverToken(*sequence, token);
  }
  deliveries_.clear();
}

void SchedulerCore::Finish(Sequence& sequence, chord::v1::FinishReason reason) {
  StreamEvent event;
  event.response.set_request_id(sequence.request.request_id);
  if (!sequence.stop->stopped()) {
    std::string tail = sequence.stop->Feed(sequence.detokenizer->Flush());
    tail += sequence.stop->Finish();
    event.response.set_text(std::move(tail));
  }
  chord::v1::FinalInfo& final = *event.response.mutable_final();
  final.set_finish_reason(reason);
  final.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(sequence.journal.prompt_size()));
  final.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(sequence.journal.generated()));
  const Clock::time_point now = Clock::now();
  const Clock::time_point scheduled =
      sequence.scheduled != Clock::time_point{} ? sequence.scheduled : now;
  final.mutable_timings()->set_queue_seconds(Seconds(scheduled - sequence.accepted));
  if (sequence.journal.generated() > 0) {
    final.mutable_timings()->set_time_to_first_token_seconds(Seconds(sequence.first_token - sequence.accepted));
  }
  final.mutable_timings()->set_total_seconds(Seconds(now - sequence.accepted));
  final.set_seed(sequence.request.sampling.seed);
  final.set_stop_reason_text(sequence.stop->matched());
  const char* label = reason == chord::v1::FINISH_REASON_STOP     ? "stop"
                      : reason == chord::v1::FINISH_REASON_LENGTH ? "length"
                                                                  : "abort";
  log::RequestInfo(sequence.request.request_id,
                   "finished (%s): %d prompt + %d generated tokens, first token after %.3f s, "
                   "%.3f s in all",
                   label, sequence.journal.prompt_size(), sequence.journal.generated(),
                   final.timings().time_to_first_token_seconds(), final.timings().total_seconds());
  CountFinished(sequence, label, now);
  sequence.stream->Push(std::move(event));
  Release(sequence);
}

void SchedulerCore::CountFinished(const Sequence& sequence, const char* reason,
                                  Clock::time_point now) {
  if (options_.metrics == nullptr) return;
  options_.metrics->request_success.With({reason}).Increment();
  options_.metrics->prompt_tokens.Increment(static_cast<double>(sequence.journal.prompt_size()));
  options_.metrics->e2e_request_latency.Observe(Seconds(now - sequence.accepted));
}

void SchedulerCore::Fail(Sequence& sequence, const absl::Status& status) {
  log::RequestWarn(sequence.request.request_id, "failed after %d generated tokens: %s",
                   sequence.journal.generated(), status.ToString());
  CountFinished(sequence, "error", Clock::now());
  StreamEvent event;
  event.status = status;
  sequence.stream->Push(std::move(event));
  Release(sequence);
}

void SchedulerCore::Release(Sequence& sequence) {
  sequence.ended = true;
  --owner_.running_;
  std::lock_guard lock(owner_.mutex_);
  owner_.live_ids_.erase(sequence.request.request_id);
}

void SchedulerCore::FailAll(const absl::Status& status) {
  for (auto& [id, sequence] : running_) {
    if (!sequence->ended) Fail(*sequence, status);
    sequence->in_flight = 0;  // the old plan's steps will never be answered
  }
  steps_.clear();
  while (!queue_.empty()) {
    std::unique_ptr<Sequence> sequence = std::move(queue_.front());
    queue_.pop_front();
    owner_.queued_.fetch_sub(1);
    ++owner_.running_;
    Fail(*sequence, status);
  }
}

void SchedulerCore::ReleaseEnded() {
  for (auto it = running_.begin(); it != running_.end();) {
    Sequence& sequence = *it->second;
    if (!sequence.ended || sequence.in_flight > 0) {
      ++it;
      continue;
    }
    FreeSlotOf(sequence);
    it = running_.erase(it);
  }
}

void SchedulerCore::FlushFreeSlots() {
  if (to_free_.empty()) return;
  wire::pb::Envelope envelope;
  for (const auto& [slot, sequence_id] : to_free_) {
    envelope.mutable_free_slots()->add_slots(slot);
    envelope.mutable_free_slots()->add_sequence_ids(sequence_id);
  }
  to_free_.clear();
  SendControl(pool_.Broadcast(envelope));
}

void SchedulerCore::Publish() {
  chord::v1::ServerInfo info;
  pool_.FillServerInfo(&info);
  info.set_running_requests(static_cast<uint32_t>(owner_.running_.load()));
  info.set_queued_requests(static_cast<uint32_t>(owner_.queued_.load()));
  info.set_kv_slots(static_cast<uint32_t>(options_.pool.kv_slots));
  info.set_kv_tokens(static_cast<uint64_t>(kv_pages_total_ * options_.pool.kv_page_size));
  info.set_kv_tokens_held(
      static_cast<uint64_t>((kv_pages_total_ - kv_pages_free_) * options_.pool.kv_page_size));
  info.set_preemptions(preemptions_);
  if (options_.metrics != nullptr) {
    options_.metrics->num_requests_running.Set(info.running_requests());
    options_.metrics->num_requests_waiting.Set(info.queued_requests());
    int live = 0;
    for (const chord::v1::WorkerInfo& worker : info.workers()) live += worker.alive() ? 1 : 0;
    options_.metrics->num_workers.Set(live);
  }
  std::lock_guard lock(owner_.mutex_);
  owner_.info_ = std::move(info);
}

}  // namespace chord::coordinator
