// The scheduler thread's state: sockets, worker pool, queue, running
// sequences and in-flight micro-batches. Used only by Scheduler (scheduler.h)
// on its own thread; not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/generation/stop_matcher.h"
#include "common/wire/wire.h"
#include "coordinator/journal.h"
#include "coordinator/scheduler.h"

namespace chord::coordinator {

class SchedulerCore {
 public:
  SchedulerCore(zmq::context_t& context, SchedulerOptions options, const ModelContext& model,
                Scheduler& owner);

  absl::Status Bind(std::string* endpoint);
  // The thread's body: returns after a kShutdown command.
  void Run();

 private:
  struct Sequence {
    uint64_t id = 0;
    ValidatedRequest request;
    std::shared_ptr<RequestStream> stream;
    Journal journal{{}};
    int slot = -1;
    int64_t kv_pages = 0;    // KV pages granted (every stage holds the same ones)
    size_t fed = 0;          // journal positions sent to the workers
    int in_flight = 0;       // steps out that hold it (a chained one behind the running one)
    // Of the newest step that holds it: its id, one past the positions its
    // chunk feeds, and whether it samples (a chained step may then follow).
    uint64_t newest_step = 0;
    size_t newest_end = 0;
    bool newest_samples = false;
    int step_retries = 0;            // failed (UNAVAILABLE) steps replayed so far
    Clock::time_point hold_until{};  // not fed again before then (after a failed step)
    bool ended = false;      // the client has its final event; waiting for the step to return
    bool delivering = false;  // a token accepted this round waits in deliveries_ for its client
    std::unique_ptr<StreamingDetokenizer> detokenizer;
    std::unique_ptr<StopMatcher> stop;
    Clock::time_point accepted, scheduled, first_token, last_token;
  };
  struct StepEntry {
    uint64_t sequence_id;
    size_t n_tokens;
    bool sample;
  };
  struct Step {
    uint64_t plan_version;
    uint64_t follows = 0;   // a chained step: the step whose tokens it takes
    bool followed = false;  // a chained step is out behind it
    uint64_t order = 0;     // launch order
    std::vector<StepEntry> entries;
    Clock::time_point launched;
    Clock::time_point deadline;  // launched + step_timeout: given up when unanswered by then
  };

  void HandleCommands(bool* stop);
  void ReceiveControl(Clock::time_point now);
  void SendControl(const std::vector<OutgoingControl>& messages);
  void CheckPlan(Clock::time_point now);
  void Rewind();
  void Admit();
  void LaunchSteps();
  bool LaunchOneStep();
  // Whether steps are chained (SchedulerOptions::chain_steps, where the last
  // stage's tokens reach stage 0).
  bool Chaining() const { return options_.chain_steps && pool_.tokens_reach_first_stage(); }
  // The step out that a chained step goes behind: the earliest launched one
  // with no chained step behind it yet and a Chainable sequence; 0 if none.
  uint64_t StepToChainBehind() const;
  // Whether `sequence` gets a chained chunk in a step that follows step
  // `follows`: it is in that step alone, samples there, and the token after
  // the one it samples is still within max_tokens and the context.
  bool Chainable(const Sequence& sequence, uint64_t follows) const;
  // Grants `sequence` the pages for positions [0, end), preempting the newest
  // running sequences that are not in flight (nor in `in_step`) when the pool
  // is short. False when it cannot (yet): the sequence waits, or was itself
  // the newest and is back in the queue.
  bool GrantPages(Sequence& sequence, int64_t end, const std::set<uint64_t>& in_step);
  // Frees the sequence's slot and pages and puts it back at the head of the
  // queue, to be recomputed from its journal when readmitted.
  void Preempt(uint64_t id);
  // Gives the slot and pages of a sequence leaving the running set back, and
  // tells the stages (on the control path now, on the data path with the next step).
  void FreeSlotOf(const Sequence& sequence);
  void OnStepResult(const wire::pb::StepResult& result, Clock::time_point now);
  // Gives up on the steps whose deadline passed without a StepResult.
  void ExpireSteps(Clock::time_point now);
  // A step that failed with `cause` (or expired): its sequences are replayed
  // from position 0 when `cause` is UNAVAILABLE or DEADLINE_EXCEEDED and they
  // have retries left, and fail with UNAVAILABLE and cause's message otherwise.
  void ReplayOrFail(const Step& step, const absl::Status& cause, Clock::time_point now);
  // Takes the step at `it` out of steps_, with the steps chained behind it
  // (which cannot run without it), as one step of all their entries.
  Step TakeWithChained(std::map<uint64_t, Step>::iterator it);
  // The first step of the chain `it` is in that is still out: a chained
  // step fails or expires with the step it follows, so that its sequences are
  // replayed once.
  std::map<uint64_t, Step>::iterator ChainStart(std::map<uint64_t, Step>::iterator it);
  // The sequence of a step entry that came back (no longer in flight); null
  // when it is gone or has already ended.
  Sequence* Returned(const StepEntry& entry);
  // A sampled token into the sequence's journal. One that ends the request
  // (a stop token, the length) is delivered at once with the final event;
  // any other waits in deliveries_ until the next steps are launched.
  void OnToken(Sequence& sequence, const wire::pb::SampledToken& token);
  // The client's event for a token: its text, logprobs; STOP when the text
  // completes a stop string.
  void DeliverToken(Sequence& sequence, const wire::pb::SampledToken& token);
  // The tokens that OnToken deferred, in order, to their clients.
  void DeliverTokens();
  // The sequence's deferred tokens to its client now, before its next token
  // (a chained step's answer can come in the same round as the answer of the
  // step it follows).
  void DeliverDeferred(Sequence& sequence);
  void Finish(Sequence& sequence, chord::v1::FinishReason reason);
  void Fail(Sequence& sequence, const absl::Status& status);
  void FailAll(const absl::Status& status);
  void Release(Sequence& sequence);
  void ReleaseEnded();
  void FlushFreeSlots();
  void Publish();
  // Counts a request that ended, by finish reason, in the metrics (when kept).
  void CountFinished(const Sequence& sequence, const char* reason, Clock::time_point now);

  zmq::context_t& context_;
  SchedulerOptions options_;
  const ModelContext& model_;
  Scheduler& owner_;
  WorkerPool pool_;
  zmq::socket_t control_;
  zmq::socket_t data_;
  uint64_t data_plan_version_ = 0;
  bool was_serving_ = false;
  bool ever_served_ = false;
  Clock::time_point plan_changed_at_{};  // the last plan change (re-plan, loss)

  std::deque<std::unique_ptr<Sequence>> queue_;
  std::map<uint64_t, std::unique_ptr<Sequence>> running_;  // by sequence id: admission order
  std::vector<int> free_slots_;      // available for admission, lowest first
  int64_t kv_pages_total_ = 0;       // each stage's KV pool (common/model/kv_pages.h)
  int64_t kv_pages_free_ = 0;        // not granted to a running sequence
  uint64_t preemptions_ = 0;
  // (slot, sequence id) pairs released since the last step: sent with the
  // next step, so every stage frees them before that step's chunks.
  std::vector<std::pair<uint32_t, uint64_t>> released_;
  // (slot, sequence id) pairs to announce in the next FreeSlots.
  std::vector<std::pair<uint32_t, uint64_t>> to_free_;
  std::map<uint64_t, Step> steps_;   // in flight, by step id
  uint64_t launches_ = 0;            // steps launched (Step::order)
  Clock::time_point last_step_event_{};  // the last launch or answer (busy_poll)
  // Tokens accepted this round whose clients get them once the next steps are
  // out: turning a token into text and waking the client's handler thread is
  // then off the path from one step's result to the next step's launch.
  // Sequences in it are not preempted (GrantPages) and stay in running_
  // until DeliverTokens.
  std::vector<std::pair<Sequence*, wire::pb::SampledToken>> deliveries_;
  uint64_t next_sequence_id_ = 1;
  std::mt19937_64 step_ids_{std::random_device{}()};  // see LaunchOneStep
};

}  // namespace chord::coordinator
