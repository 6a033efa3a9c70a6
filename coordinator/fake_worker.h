// A worker for tests: speaks proto/PROTOCOL.md over real ZeroMQ sockets but
// computes nothing. The last stage "samples" a deterministic token from the
// position (FakeToken), so tests know every stream in advance.
// Thread-safety: the accessors are thread-safe; the worker runs its own thread.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/wire/wire.h"
#include "coordinator/model_context.h"

namespace chord::coordinator::testing {

// The token the fake last stage returns after `position` tokens.
inline uint32_t FakeToken(uint32_t position) { return 100 + position % 50; }

// The model's metadata from CHORD_DEFAULT_MODEL (NOT_FOUND when absent).
absl::StatusOr<std::unique_ptr<ModelContext>> LoadTestModel();

// The steps a pipeline's last stage answered without an error, shared by its
// stages: stage 0 holds a chained step until the step it follows is among
// them, as a real stage 0 waits for the tokens the last stage hands it.
class AnsweredSteps {
 public:
  void Add(uint64_t step_id);
  bool Contains(uint64_t step_id) const;

 private:
  mutable std::mutex mutex_;
  std::deque<uint64_t> ids_;  // the newest 256
};

struct FakeWorkerOptions {
  std::string id = "w0";
  double weight_bytes_per_second = 1e9;
  std::chrono::milliseconds step_delay{0};  // per step, before answering
  int eos_after = -1;                       // return eos_id once the position reaches this
  uint32_t eos_id = 2;
  // Shared by the stages of one pipeline: steps between stage 0 and the last
  // stage's answer, and the most ever seen at once.
  std::shared_ptr<std::atomic<int>> in_flight, max_in_flight;
  // Shared by the stages of one pipeline (a worker alone makes its own).
  std::shared_ptr<AnsweredSteps> answered;
  // As the last of several stages, reports its link to stage 0 up
  // (StageReady.first_stage_linked): the answered steps above stand for it.
  bool reaches_first_stage = true;
};

class FakeWorker {
 public:
  FakeWorker(zmq::context_t& context, std::string control_endpoint, FakeWorkerOptions options);
  ~FakeWorker();

  // Stop answering anything (as a hung or dead worker would).
  void GoSilent() { silent_ = true; }
  // Answer the next steps with a failed StepResult.
  void FailSteps() { fail_steps_ = true; }
  // Answer the next `count` steps with `code`: UNAVAILABLE as a stage whose
  // next stage takes no step does, DEADLINE_EXCEEDED as one that got them late.
  void FailNextSteps(int count, absl::StatusCode code) {
    failed_steps_code_ = code;
    failed_steps_ = count;
  }
  // Drop the next `count` steps (every one when negative) without a word, as
  // a stage that stalls or loses them does; heartbeats are still answered.
  void SwallowSteps(int count) { swallow_steps_ = count; }

  std::vector<wire::pb::StepHeader> steps() const;
  std::vector<wire::pb::AssignLayers> assignments() const;
  std::set<uint32_t> freed_slots() const;
  // The KV pages this stage would hold (as a real stage counts them) at most
  // so far, and its pool's size from the plan.
  int64_t max_kv_pages_held() const;
  int64_t kv_pages_total() const;
  bool got_shutdown() const { return got_shutdown_; }
  int steps_answered() const { return answered_; }

 private:
  void Run();
  void OnControl(const wire::pb::Envelope& envelope);
  void OnStep(const wire::pb::StepHeader& header);
  // A stage's slot bookkeeping: positions held and the sequence that started in each slot.
  void FreeSlots(const wire::pb::FreeSlots& free);
  void TrackKvPages(const wire::pb::StepHeader& header);

  zmq::context_t& context_;
  std::string control_endpoint_;
  FakeWorkerOptions options_;
  zmq::socket_t control_;
  zmq::socket_t data_;
  zmq::socket_t next_;
  std::string data_endpoint_;
  bool last_stage_ = true;
  int stage_index_ = 0;
  std::atomic<bool> stop_{false}, silent_{false}, fail_steps_{false}, got_shutdown_{false};
  std::atomic<int> answered_{0}, failed_steps_{0}, swallow_steps_{0};
  std::vector<wire::pb::StepHeader> held_;  // stage 0: chained steps waiting for the step they follow
  std::atomic<absl::StatusCode> failed_steps_code_{absl::StatusCode::kUnavailable};
  mutable std::mutex mutex_;
  std::vector<wire::pb::StepHeader> steps_;
  std::vector<wire::pb::AssignLayers> assignments_;
  std::set<uint32_t> freed_;
  std::map<uint32_t, std::pair<uint64_t, int64_t>> slots_;  // slot -> (sequence id, positions)
  int64_t kv_page_size_ = 16;
  int64_t kv_pages_total_ = 0;
  int64_t max_kv_pages_held_ = 0;
  std::thread thread_;
};

}  // namespace chord::coordinator::testing
