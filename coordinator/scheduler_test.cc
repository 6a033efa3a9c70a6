#include "coordinator/scheduler.h"

#include <algorithm>
#include <functional>

#include "absl/strings/str_cat.h"
#include "coordinator/fake_worker.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord::coordinator {
namespace {

using ::testing::HasSubstr;
using testing::AnsweredSteps;
using testing::FakeToken;
using testing::FakeWorker;
using testing::FakeWorkerOptions;

bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  const auto until = Clock::now() + timeout;
  while (Clock::now() < until) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return condition();
}

struct Collected {
  std::vector<uint32_t> tokens;
  std::string text;
  std::vector<StreamEvent> events;
  absl::Status status;
  chord::v1::FinalInfo final;
};

Collected Collect(RequestStream& stream) {
  Collected out;
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < until) {
    std::optional<StreamEvent> event = stream.Pop(std::chrono::milliseconds(50));
    if (!event) continue;
    out.events.push_back(*event);
    out.status = event->status;
    for (uint32_t t : event->response.token_ids()) out.tokens.push_back(t);
    out.text += event->response.text();
    if (event->response.has_final()) out.final = event->response.final();
    if (event->last()) return out;
  }
  out.status = absl::DeadlineExceededError("the stream did not end");
  return out;
}

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = testing::LoadTestModel();
    if (!model.ok()) GTEST_SKIP() << "no test model: " << model.status();
    model_ = *std::move(model);
    options_.pool.kv_slots = 4;
    options_.pool.n_ctx = 64;
    options_.pool.worker_timeout = std::chrono::milliseconds(400);
    options_.pool.heartbeat_interval = std::chrono::milliseconds(50);
    options_.max_queue = 8;
  }
  void TearDown() override {
    scheduler_.reset();
    workers_.clear();
  }

  void StartScheduler() {
    auto scheduler = Scheduler::Start(context_, options_, *model_);
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    scheduler_ = *std::move(scheduler);
  }
  FakeWorker& AddWorker(FakeWorkerOptions options) {
    // The workers of a test form one pipeline (chained steps' tokens).
    if (options.answered == nullptr) options.answered = answered_;
    workers_.push_back(std::make_unique<FakeWorker>(context_, scheduler_->control_endpoint(), options));
    return *workers_.back();
  }
  void StartServing(int n_workers = 1, FakeWorkerOptions options = {}) {
    options_.pool.min_workers = n_workers;
    StartScheduler();
    for (int i = 0; i < n_workers; ++i) {
      options.id = absl::StrCat("w", i);
      AddWorker(options);
    }
    ASSERT_TRUE(WaitFor([&] { return scheduler_->serving(); }));
  }
  ValidatedRequest Request(std::string id, std::vector<TokenId> prompt, int max_tokens) {
    ValidatedRequest r;
    r.request_id = std::move(id);
    r.prompt = std::move(prompt);
    r.max_tokens = max_tokens;
    r.sampling.seed = 5;
    return r;
  }
  // Serves with one worker taking `step_delay` per step, submits request "a"
  // (prompt {1, 300}) and returns its stream once `answered` steps came back.
  std::shared_ptr<RequestStream> StreamPastSteps(std::chrono::milliseconds step_delay, int max_tokens,
                                                 int answered) {
    FakeWorkerOptions slow;
    slow.step_delay = step_delay;
    StartServing(1, slow);
    auto stream = scheduler_->Submit(Request("a", {1, 300}, max_tokens));
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (!stream.ok()) return nullptr;
    EXPECT_TRUE(WaitFor([&] { return workers_[0]->steps_answered() >= answered; }));
    return *stream;
  }
  std::vector<uint32_t> Expected(size_t prompt_size, int count) {
    std::vector<uint32_t> out;
    for (int i = 0; i < count; ++i) out.push_back(FakeToken(static_cast<uint32_t>(prompt_size + i)));
    return out;
  }
  // How many of `worker`'s steps after the first start request "a" (prompt
  // {1, 300}) over at position 0, each checked to carry the prompt and then
  // every token already streamed.
  int CountReplays(const FakeWorker& worker) {
    int replays = 0;
    const auto steps = worker.steps();
    for (size_t i = 1; i < steps.size(); ++i) {
      const wire::pb::SequenceChunk& chunk = steps[i].sequences(0);
      if (chunk.first_position() != 0) continue;
      ++replays;
      const std::vector<uint32_t> ids(chunk.token_ids().begin(), chunk.token_ids().end());
      if (ids.size() < 2) {
        ADD_FAILURE() << "a replay without the prompt";
        continue;
      }
      EXPECT_EQ(std::vector<uint32_t>(ids.begin(), ids.begin() + 2),
                (std::vector<uint32_t>{1, 300}));
      EXPECT_EQ(std::vector<uint32_t>(ids.begin() + 2, ids.end()),
                Expected(2, static_cast<int>(ids.size()) - 2));
    }
    return replays;
  }
  // Request "a" streams every token exactly once although one step midway
  // fails with `code`: its sequence is replayed from the journal.
  void ExpectReplayAfterAFailedStep(absl::StatusCode code) {
    std::shared_ptr<RequestStream> stream = StreamPastSteps(std::chrono::milliseconds(5), 12, 3);
    ASSERT_NE(stream, nullptr);
    workers_[0]->FailNextSteps(1, code);
    Collected got = Collect(*stream);
    ASSERT_TRUE(got.status.ok()) << got.status;
    EXPECT_EQ(got.tokens, Expected(2, 12));
    EXPECT_EQ(CountReplays(*workers_[0]), 1);
  }

  zmq::context_t context_{1};
  std::unique_ptr<ModelContext> model_;
  metrics::Registry registry_;  // outlive the scheduler, which may count into them
  metrics::CoordinatorMetrics metrics_{registry_};
  SchedulerOptions options_;
  std::unique_ptr<Scheduler> scheduler_;
  std::vector<std::unique_ptr<FakeWorker>> workers_;
  std::shared_ptr<AnsweredSteps> answered_ = std::make_shared<AnsweredSteps>();
};

TEST_F(SchedulerTest, RefusesRequestsUntilEveryStageIsReady) {
  options_.pool.min_workers = 1;
  StartScheduler();
  EXPECT_FALSE(scheduler_->serving());
  EXPECT_EQ(scheduler_->Submit(Request("a", {1, 2}, 3)).status().code(), absl::StatusCode::kUnavailable);
  AddWorker({});
  EXPECT_TRUE(WaitFor([&] { return scheduler_->serving(); }));
  const auto assignments = workers_[0]->assignments();
  ASSERT_EQ(assignments.size(), 1u);
  EXPECT_EQ(assignments[0].first_layer(), 0u);
  EXPECT_EQ(assignments[0].end_layer(), static_cast<uint32_t>(model_->config.n_layer));
  EXPECT_EQ(assignments[0].kv_slots(), 4u);
  EXPECT_EQ(assignments[0].n_ctx(), 64u);
}

TEST_F(SchedulerTest, StreamsTokensTextAndFinalInfo) {
  StartServing();
  auto stream = scheduler_->Submit(Request("a", {1, 300, 301}, 5));
  ASSERT_TRUE(stream.ok()) << stream.status();
  Collected got = Collect(**stream);
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_EQ(got.tokens, Expected(3, 5));
  std::vector<TokenId> ids(got.tokens.begin(), got.tokens.end());
  EXPECT_EQ(got.text, Detokenize(*model_->tokenizer, ids));
  EXPECT_EQ(got.final.finish_reason(), chord::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(got.final.usage().prompt_tokens(), 3u);
  EXPECT_EQ(got.final.usage().completion_tokens(), 5u);
  EXPECT_EQ(got.final.seed(), 5u);
  EXPECT_GT(got.final.timings().total_seconds(), 0);
  // Its slot is given back to every worker.
  EXPECT_TRUE(WaitFor([&] { return workers_[0]->freed_slots().contains(0); }));
  // First step: the whole prompt with sampling; then one token per step,
  // chained to the step before it while that one runs (one stage: the stage
  // fills in the token it sampled), or carrying the token when both steps'
  // answers came back at once. No step past the last token wanted.
  const auto steps = workers_[0]->steps();
  ASSERT_EQ(steps.size(), 5u);
  EXPECT_EQ(steps[0].sequences(0).token_ids_size(), 3);
  EXPECT_TRUE(steps[0].sequences(0).sample());
  EXPECT_EQ(steps[0].follows_step_id(), 0u);
  EXPECT_TRUE(steps[1].sequences(0).token_pending());
  for (size_t i = 1; i < steps.size(); ++i) {
    const wire::pb::SequenceChunk& chunk = steps[i].sequences(0);
    EXPECT_EQ(chunk.first_position(), 2u + i) << "step " << i;
    EXPECT_TRUE(chunk.sample()) << "step " << i;
    if (chunk.token_pending()) {
      EXPECT_EQ(steps[i].follows_step_id(), steps[i - 1].step_id()) << "step " << i;
      EXPECT_EQ(chunk.token_ids_size(), 0) << "step " << i;
    } else {
      EXPECT_EQ(steps[i].follows_step_id(), 0u) << "step " << i;
      ASSERT_EQ(chunk.token_ids_size(), 1) << "step " << i;
      EXPECT_EQ(chunk.token_ids(0), FakeToken(2 + i)) << "step " << i;
    }
  }
}

TEST_F(SchedulerTest, StepsCarryTheirTokensWhenNotChained) {
  options_.chain_steps = false;
  StartServing();
  auto stream = scheduler_->Submit(Request("a", {1, 300, 301}, 5));
  ASSERT_TRUE(stream.ok()) << stream.status();
  Collected got = Collect(**stream);
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_EQ(got.tokens, Expected(3, 5));
  const auto steps = workers_[0]->steps();
  ASSERT_EQ(steps.size(), 5u);
  for (size_t i = 1; i < steps.size(); ++i) {
    EXPECT_EQ(steps[i].follows_step_id(), 0u);
    EXPECT_FALSE(steps[i].sequences(0).token_pending());
    ASSERT_EQ(steps[i].sequences(0).token_ids_size(), 1);
    EXPECT_EQ(steps[i].sequences(0).token_ids(0), FakeToken(2 + i));
  }
}

// Two stages whose last cannot reach stage 0's data port (its StageReady
// says so): the tokens could never come to stage 0, so no step is chained;
// with the link up, steps are.
TEST_F(SchedulerTest, StepsAreChainedOnlyWhereTheLastStageReachesStageZero) {
  for (const bool reaches : {false, true}) {
    SCOPED_TRACE(reaches ? "link up" : "no link");
    FakeWorkerOptions stages;
    stages.step_delay = std::chrono::milliseconds(1);
    stages.reaches_first_stage = reaches;
    StartServing(2, stages);
    auto stream = scheduler_->Submit(Request("a", {1, 300, 301}, 6));
    ASSERT_TRUE(stream.ok()) << stream.status();
    Collected got = Collect(**stream);
    ASSERT_TRUE(got.status.ok()) << got.status;
    EXPECT_EQ(got.tokens, Expected(3, 6));
    int chained = 0;
    for (const wire::pb::StepHeader& step : workers_[0]->steps()) {
      EXPECT_EQ(step.tokens_to_first_stage(), reaches);
      chained += step.follows_step_id() != 0 ? 1 : 0;
    }
    if (reaches) {
      EXPECT_GT(chained, 0);
    } else {
      EXPECT_EQ(chained, 0);
    }
    scheduler_.reset();
    workers_.clear();
    answered_ = std::make_shared<AnsweredSteps>();
  }
}

TEST_F(SchedulerTest, AStopTokenLeavesOneChainedStepWhoseTokenIsDropped) {
  FakeWorkerOptions eos;
  eos.eos_after = 5;  // the token sampled at position 5 (the fourth) ends the stream
  eos.eos_id = static_cast<uint32_t>(model_->tokenizer->eos_id());
  StartServing(1, eos);
  auto stream = scheduler_->Submit(Request("a", {1, 300}, 20));
  ASSERT_TRUE(stream.ok()) << stream.status();
  Collected got = Collect(**stream);
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_EQ(got.final.finish_reason(), chord::v1::FINISH_REASON_STOP);
  EXPECT_EQ(got.final.usage().completion_tokens(), 4u);
  EXPECT_EQ(got.tokens, Expected(2, 3));
  // A step chained behind the one that sampled the stop token may still
  // run (positions 2-5 sampled, then 6 at most); its token goes nowhere, and
  // the slot is freed once every step is back.
  EXPECT_TRUE(WaitFor([&] { return workers_[0]->freed_slots().contains(0); }));
  const auto steps = workers_[0]->steps();
  EXPECT_LE(steps.size(), 5u);
  EXPECT_EQ(workers_[0]->steps_answered(), static_cast<int>(steps.size()));
}

TEST_F(SchedulerTest, ConcurrentRequestsShareMicroBatches) {
  FakeWorkerOptions slow;
  slow.step_delay = std::chrono::milliseconds(20);
  StartServing(1, slow);
  auto a = scheduler_->Submit(Request("a", {1, 300}, 6));
  auto b = scheduler_->Submit(Request("b", {1, 301, 302}, 6));
  ASSERT_TRUE(a.ok() && b.ok());
  Collected got_a = Collect(**a), got_b = Collect(**b);
  EXPECT_EQ(got_a.tokens, Expected(2, 6));
  EXPECT_EQ(got_b.tokens, Expected(3, 6));
  bool shared = false;
  for (const auto& step : workers_[0]->steps()) {
    if (step.sequences_size() == 2) {
      shared = true;
      EXPECT_NE(step.sequences(0).slot(), step.sequences(1).slot());
    }
  }
  EXPECT_TRUE(shared) << "no micro-batch held both sequences";
}

TEST_F(SchedulerTest, LongPromptsArePrefilledInChunks) {
  options_.prefill_chunk = 4;
  StartServing();
  std::vector<TokenId> prompt = {1};
  for (int i = 0; i < 9; ++i) prompt.push_back(300 + i);
  auto stream = scheduler_->Submit(Request("a", prompt, 2));
  ASSERT_TRUE(stream.ok());
  Collected got = Collect(**stream);
  EXPECT_EQ(got.tokens, Expected(10, 2));
  const auto steps = workers_[0]->steps();
  ASSERT_GE(steps.size(), 4u);
  // The last chunk samples; the step after it is chained (its token pending).
  const std::vector<std::pair<uint32_t, int>> expected = {{0, 4}, {4, 4}, {8, 2}, {10, 0}};
  for (size_t i = 0; i < expected.size(); ++i) {
    const auto& chunk = steps[i].sequences(0);
    EXPECT_EQ(chunk.first_position(), expected[i].first) << "step " << i;
    EXPECT_EQ(chunk.token_ids_size(), expected[i].second) << "step " << i;
    EXPECT_EQ(chunk.token_pending(), i == 3) << "step " << i;
    EXPECT_EQ(chunk.sample(), i >= 2) << "step " << i;
  }
  EXPECT_EQ(steps[1].sequences(0).token_ids(0), 303u);
}

TEST_F(SchedulerTest, NoStepHoldsMoreTokensThanAStageTakes) {
  options_.prefill_chunk = static_cast<int>(wire::kMaxStepTokens);
  options_.pool.n_ctx = 3000;
  // One step out at a time, each taking a while: the prompts submitted while
  // the first runs share the next (however the submissions and the first
  // launch interleave).
  options_.chain_steps = false;
  FakeWorkerOptions slow;
  slow.step_delay = std::chrono::milliseconds(50);
  StartServing(1, slow);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int r = 0; r < 3; ++r) {
    std::vector<TokenId> prompt = {1};
    for (int i = 1; i < 2000; ++i) prompt.push_back(static_cast<TokenId>(300 + (i * 7 + r) % 200));
    auto stream = scheduler_->Submit(Request(absl::StrCat("r", r), prompt, 2));
    ASSERT_TRUE(stream.ok());
    streams.push_back(*stream);
  }
  for (const auto& stream : streams) EXPECT_EQ(Collect(*stream).tokens, Expected(2000, 2));
  int64_t largest = 0;
  for (const auto& step : workers_[0]->steps()) {
    int64_t tokens = 0;
    for (const auto& chunk : step.sequences()) tokens += chunk.token_ids_size();
    largest = std::max(largest, tokens);
  }
  EXPECT_LE(largest, wire::kMaxStepTokens);
  EXPECT_GT(largest, 2000);  // prompts still share steps
}

// Four sequences that each grow to 42 positions share a KV pool of one
// context (4 pages of 16): the newest are preempted and recomputed from their
// journals, every stream still gets exactly its tokens, and no stage is ever
// asked to hold more pages than its pool has.
TEST_F(SchedulerTest, OutgrownKvCachePreemptsTheNewestAndRecomputesIt) {
  options_.pool.kv_tokens = 64;
  FakeWorkerOptions stages;
  stages.step_delay = std::chrono::milliseconds(1);
  StartServing(2, stages);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 4; ++i) {
    auto stream = scheduler_->Submit(Request(absl::StrCat("r", i), {1, 300 + i}, 40));
    ASSERT_TRUE(stream.ok()) << stream.status();
    streams.push_back(*stream);
  }
  for (int i = 0; i < 4; ++i) {
    Collected got = Collect(*streams[static_cast<size_t>(i)]);
    ASSERT_TRUE(got.status.ok()) << "request " << i << ": " << got.status;
    EXPECT_EQ(got.tokens, Expected(2, 40)) << "request " << i;
    EXPECT_EQ(got.final.finish_reason(), chord::v1::FINISH_REASON_LENGTH);
  }
  EXPECT_GT(scheduler_->ServerInfo().preemptions(), 0u);
  EXPECT_EQ(scheduler_->ServerInfo().kv_tokens(), 64u);
  EXPECT_TRUE(WaitFor([&] { return scheduler_->ServerInfo().kv_tokens_held() == 0; }));
  for (const auto& worker : workers_) {
    EXPECT_EQ(worker->kv_pages_total(), 4);
    EXPECT_LE(worker->max_kv_pages_held(), 4);
    EXPECT_GE(worker->max_kv_pages_held(), 3);
  }
}

// A prompt is admitted only when its pages are free: a long one waits for
// the running sequence instead of being preempted at once.
TEST_F(SchedulerTest, PromptWaitsForKvPagesInsteadOfThrashing) {
  options_.pool.kv_tokens = 64;
  FakeWorkerOptions slow;
  slow.step_delay = std::chrono::milliseconds(2);
  StartServing(1, slow);
  auto a = scheduler_->Submit(Request("a", {1, 300}, 30));  // up to 32 positions: 2 pages
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(WaitFor([&] { return scheduler_->ServerInfo().kv_tokens_held() >= 16; }));
  std::vector<TokenId> long_prompt(50, 7);  // 4 pages: waits until "a" ends
  auto b = scheduler_->Submit(Request("b", long_prompt, 4));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(Collect(**a).tokens, Expected(2, 30));
  EXPECT_EQ(Collect(**b).tokens, Expected(50, 4));
  EXPECT_EQ(scheduler_->ServerInfo().preemptions(), 0u);
}

TEST_F(SchedulerTest, TwoStagePipelineKeepsTwoMicroBatchesInFlight) {
  FakeWorkerOptions slow;
  slow.step_delay = std::chrono::milliseconds(30);
  slow.in_flight = std::make_shared<std::atomic<int>>(0);
  slow.max_in_flight = std::make_shared<std::atomic<int>>(0);
  StartServing(2, slow);
  const auto a0 = workers_[0]->assignments().back(), a1 = workers_[1]->assignments().back();
  EXPECT_EQ(a0.n_stages(), 2u);
  EXPECT_EQ(std::min(a0.first_layer(), a1.first_layer()), 0u);
  EXPECT_EQ(std::max(a0.end_layer(), a1.end_layer()), static_cast<uint32_t>(model_->config.n_layer));
  EXPECT_EQ(std::min(a0.end_layer(), a1.end_layer()), std::max(a0.first_layer(), a1.first_layer()));
  FakeWorker& first = a0.stage_index() == 0 ? *workers_[0] : *workers_[1];
  FakeWorker& last = a0.stage_index() == 0 ? *workers_[1] : *workers_[0];
  auto a = scheduler_->Submit(Request("a", {1, 300}, 4));
  // b arrives while a's first micro-batch is in the pipeline.
  ASSERT_TRUE(WaitFor([&] { return !first.steps().empty(); }));
  auto b = scheduler_->Submit(Request("b", {1, 301}, 4));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(Collect(**a).tokens, Expected(2, 4));
  EXPECT_EQ(Collect(**b).tokens, Expected(2, 4));
  EXPECT_EQ(first.steps().size(), last.steps().size());
  // Both stages worked at once, each on its own micro-batch, and never more than n_stages.
  EXPECT_EQ(slow.max_in_flight->load(), 2);
  for (const auto& step : first.steps()) EXPECT_EQ(step.sequences_size(), 1);
}

TEST_F(SchedulerTest, TwoStagesSplitTheRunningSequencesIntoTwoMicroBatches) {
  FakeWorkerOptions slow;
  slow.step_delay = std::chrono::milliseconds(20);
  slow.in_flight = std::make_shared<std::atomic<int>>(0);
  slow.max_in_flight = std::make_shared<std::atomic<int>>(0);
  StartServing(2, slow);
  FakeWorker& first = workers_[0]->assignments().back().stage_index() == 0 ? *workers_[0] : *workers_[1];
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 4; ++i) {
    auto stream = scheduler_->Submit(Request(absl::StrCat("r", i), {1, static_cast<TokenId>(300 + i)}, 8));
    ASSERT_TRUE(stream.ok());
    streams.push_back(*stream);
  }
  for (const auto& stream : streams) EXPECT_EQ(Collect(*stream).tokens, Expected(2, 8));
  // Never every running sequence in one step: at most half of the four.
  int pairs = 0;
  for (const auto& step : first.steps()) {
    EXPECT_LE(step.sequences_size(), 2);
    pairs += step.sequences_size() == 2 ? 1 : 0;
  }
  EXPECT_GT(pairs, 0);
  EXPECT_EQ(slow.max_in_flight->load(), 2);
}

TEST_F(SchedulerTest, StopStringIsHeldBackAndNotSent) {
  StartServing();
  std::vector<TokenId> ids;
  for (uint32_t t : Expected(2, 12)) ids.push_back(static_cast<TokenId>(t));
  const std::string full = Detokenize(*model_->tokenizer, ids);
  ASSERT_GT(full.size(), 8u);
  const std::string stop = full.substr(full.size() / 2, 3);
  const std::string before = full.substr(0, full.find(stop));
  ValidatedRequest request = Request("a", {1, 300}, 12);
  request.stop = {stop};
  auto stream = scheduler_->Submit(request);
  ASSERT_TRUE(stream.ok());
  Collected got = Collect(**stream);
  EXPECT_EQ(got.text, before);
  EXPECT_EQ(got.final.finish_reason(), chord::v1::FINISH_REASON_STOP);
  EXPECT_EQ(got.final.stop_reason_text(), stop);
  // The stop string is found after the sequence's next step went out (the
  // clients get their tokens once the next steps are launched): that step's
  // token is dropped and the slot and pages still come back.
  EXPECT_TRUE(WaitFor([&] {
    const chord::v1::ServerInfo info = scheduler_->ServerInfo();
    return info.running_requests() == 0 && info.kv_tokens_held() == 0;
  }));
  auto again = scheduler_->Submit(Request("b", {1, 300}, 4));
  ASSERT_TRUE(again.ok());
  got = Collect(**again);
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_EQ(got.tokens, Expected(2, 4));
}

TEST_F(SchedulerTest, EndOfGenerationStopsUnlessIgnored) {
  FakeWorkerOptions eos;
  eos.eos_after = 5;
  eos.eos_id = static_cast<uint32_t>(model_->tokenizer->eos_id());
  StartServing(1, eos);
  auto stream = scheduler_->Submit(Request("a", {1, 300}, 10));
  ASSERT_TRUE(stream.ok());
  Collected got = Collect(**stream);
  EXPECT_EQ(got.tokens, Expected(2, 3));  // positions 2, 3, 4; the EOS is not sent
  EXPECT_EQ(got.final.finish_reason(), chord::v1::FINISH_REASON_STOP);
  ValidatedRequest ignoring = Request("b", {1, 300}, 6);
  ignoring.ignore_eos = true;
  stream = scheduler_->Submit(ignoring);
  ASSERT_TRUE(stream.ok());
  got = Collect(**stream);
  EXPECT_EQ(got.tokens.size(), 6u);
  EXPECT_EQ(got.final.finish_reason(), chord::v1::FINISH_REASON_LENGTH);
}

TEST_F(SchedulerTest, AbortEndsTheStreamAndFreesTheSlot) {
  std::shared_ptr<RequestStream> stream = StreamPastSteps(std::chrono::milliseconds(20), 50, 2);
  ASSERT_NE(stream, nullptr);
  EXPECT_TRUE(scheduler_->Abort("a"));
  EXPECT_FALSE(scheduler_->Abort("nobody"));
  Collected got = Collect(*stream);
  EXPECT_EQ(got.final.finish_reason(), chord::v1::FINISH_REASON_ABORT);
  EXPECT_LT(got.tokens.size(), 50u);
  EXPECT_TRUE(WaitFor([&] { return workers_[0]->freed_slots().contains(0); }));
  EXPECT_TRUE(WaitFor([&] { return scheduler_->ServerInfo().running_requests() == 0; }));
  // Never scheduled again.
  const size_t steps = workers_[0]->steps().size();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(workers_[0]->steps().size(), steps);
}

TEST_F(SchedulerTest, FullQueueIsResourceExhausted) {
  options_.pool.kv_slots = 1;
  options_.max_queue = 1;
  FakeWorkerOptions slow;
  slow.step_delay = std::chrono::milliseconds(20);
  StartServing(1, slow);
  auto a = scheduler_->Submit(Request("a", {1, 300}, 30));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(WaitFor([&] { return scheduler_->ServerInfo().running_requests() == 1 &&
                                   scheduler_->ServerInfo().queued_requests() == 0; }));
  EXPECT_EQ(scheduler_->Submit(Request("a", {1, 300}, 2)).status().code(), absl::StatusCode::kAlreadyExists);
  auto b = scheduler_->Submit(Request("b", {1, 300}, 2));
  ASSERT_TRUE(b.ok());  // waits for the slot
  EXPECT_EQ(scheduler_->Submit(Request("c", {1, 300}, 2)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Collect(**a).status.ok());
  Collected got_b = Collect(**b);
  EXPECT_EQ(got_b.tokens, Expected(2, 2));
}

TEST_F(SchedulerTest, FailedStepFailsItsSequencesWithUnavailable) {
  StartServing();
  workers_[0]->FailSteps();
  auto stream = scheduler_->Submit(Request("a", {1, 300}, 5));
  ASSERT_TRUE(stream.ok());
  EXPECT_EQ(Collect(**stream).status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(WaitFor([&] { return workers_[0]->freed_slots().contains(0); }));
}

TEST_F(SchedulerTest, UnavailableStepIsReplayedFromTheJournal) {
  ExpectReplayAfterAFailedStep(absl::StatusCode::kUnavailable);
}

// A stage that got the step after its deadline (and did not run it).
TEST_F(SchedulerTest, LateStepIsReplayedFromTheJournal) {
  ExpectReplayAfterAFailedStep(absl::StatusCode::kDeadlineExceeded);
}

TEST_F(SchedulerTest, StepsCarryADeadlineOneStepTimeoutAhead) {
  options_.step_timeout = std::chrono::milliseconds(1500);
  const int64_t before = wire::UnixMicrosNow();
  StartServing();
  auto stream = scheduler_->Submit(Request("a", {1, 300}, 3));
  ASSERT_TRUE(stream.ok());
  ASSERT_TRUE(Collect(**stream).status.ok());
  const int64_t after = wire::UnixMicrosNow();
  const auto steps = workers_[0]->steps();
  ASSERT_EQ(steps.size(), 3u);
  for (const auto& step : steps) {
    EXPECT_GE(step.deadline_unix_micros(), before + 1500000);
    EXPECT_LE(step.deadline_unix_micros(), after + 1500000);
  }
}

// A stage that loses a step without a word: once the step timeout passes, its
// sequence is replayed, and the client sees one uninterrupted stream.
TEST_F(SchedulerTest, SwallowedStepIsReplayedAfterTheStepTimeout) {
  options_.metrics = &metrics_;
  options_.step_timeout = std::chrono::milliseconds(300);
  std::shared_ptr<RequestStream> stream = StreamPastSteps(std::chrono::milliseconds(5), 12, 3);
  ASSERT_NE(stream, nullptr);
  workers_[0]->SwallowSteps(1);
  Collected got = Collect(*stream);
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_EQ(got.tokens, Expected(2, 12));
  EXPECT_EQ(got.final.finish_reason(), chord::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(CountReplays(*workers_[0]), 1);
  EXPECT_EQ(metrics_.request_success.With({"length"}).value(), 1.0);
  EXPECT_EQ(metrics_.request_success.With({"error"}).value(), 0.0);
}

// A stage that never answers (but keeps answering heartbeats) fails the
// request once its replays are spent, instead of leaving it hanging.
TEST_F(SchedulerTest, StageSwallowingEveryStepFailsTheRequestAfterTheRetries) {
  options_.step_timeout = std::chrono::milliseconds(300);
  StartServing();
  workers_[0]->SwallowSteps(-1);
  auto stream = scheduler_->Submit(Request("a", {1, 300}, 5));
  ASSERT_TRUE(stream.ok());
  Collected got = Collect(**stream);
  EXPECT_EQ(got.status.code(), absl::StatusCode::kUnavailable) << got.status;
  EXPECT_THAT(std::string(got.status.message()), HasSubstr("within the step timeout (300 ms)"));
  EXPECT_TRUE(got.tokens.empty());
  EXPECT_TRUE(WaitFor([&] { return workers_[0]->freed_slots().contains(0); }));
  // The first step, then one replay per retry (kMaxStepRetries), and no more;
  // each with the step chained behind it, which expires with it.
  EXPECT_EQ(workers_[0]->steps().size(), 8u);
  EXPECT_EQ(CountReplays(*workers_[0]), 3);
  EXPECT_TRUE(scheduler_->serving());
}

TEST_F(SchedulerTest, LostWorkerFailsRequestsAndStopsServing) {
  std::shared_ptr<RequestStream> stream = StreamPastSteps(std::chrono::milliseconds(20), 60, 1);
  ASSERT_NE(stream, nullptr);
  workers_[0]->GoSilent();
  Collected got = Collect(*stream);
  EXPECT_EQ(got.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(got.status.message().find("no worker is left"), std::string::npos) << got.status;
  EXPECT_FALSE(scheduler_->serving());
  EXPECT_EQ(scheduler_->Submit(Request("b", {1, 300}, 2)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(WaitFor([&] {
    const auto info = scheduler_->ServerInfo();
    return info.workers_size() == 1 && !info.workers(0).alive();
  }));
}

// The steps `worker` saw under one plan, in arrival order.
std::vector<wire::pb::StepHeader> StepsOfPlan(const FakeWorker& worker, uint64_t plan_version) {
  std::vector<wire::pb::StepHeader> out;
  for (const auto& step : worker.steps()) {
    if (step.plan_version() == plan_version) out.push_back(step);
  }
  return out;
}

TEST_F(SchedulerTest, LostStageIsReplannedAndItsSequencesReplayedWithoutLosingAToken) {
  FakeWorkerOptions slow;
  slow.step_delay = std::chrono::milliseconds(10);
  StartServing(2, slow);
  const uint64_t first_plan = scheduler_->ServerInfo().plan_version();
  auto a = scheduler_->Submit(Request("a", {1, 300, 301}, 40));
  auto b = scheduler_->Submit(Request("b", {1, 302}, 40));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(
      WaitFor([&] { return workers_[0]->steps_answered() + workers_[1]->steps_answered() >= 8; }));
  workers_[1]->GoSilent();  // a hang: declared lost after worker_timeout
  // A request that arrives while the pipeline is rebuilt waits for it.
  ASSERT_TRUE(WaitFor([&] { return scheduler_->ServerInfo().plan_version() > first_plan; }));
  auto c = scheduler_->Submit(Request("c", {1, 303}, 5));
  ASSERT_TRUE(c.ok()) << c.status();
  Collected got_a = Collect(**a), got_b = Collect(**b), got_c = Collect(**c);
  ASSERT_TRUE(got_a.status.ok()) << got_a.status;
  ASSERT_TRUE(got_b.status.ok()) << got_b.status;
  ASSERT_TRUE(got_c.status.ok()) << got_c.status;
  // Every token exactly once, as without the loss.
  EXPECT_EQ(got_a.tokens, Expected(3, 40));
  EXPECT_EQ(got_b.tokens, Expected(2, 40));
  EXPECT_EQ(got_c.tokens, Expected(2, 5));

  // The survivor holds every layer now, and its first step on the new plan
  // replays each sequence's journal from position 0: the prompt, then every
  // token already streamed, sampling after the last.
  const uint64_t second_plan = scheduler_->ServerInfo().plan_version();
  const auto assigned = workers_[0]->assignments().back();
  EXPECT_EQ(assigned.plan_version(), second_plan);
  EXPECT_EQ(assigned.first_layer(), 0u);
  EXPECT_EQ(assigned.end_layer(), static_cast<uint32_t>(model_->config.n_layer));
  const auto replayed = StepsOfPlan(*workers_[0], second_plan);
  ASSERT_FALSE(replayed.empty());
  size_t replayed_sequences = 0;
  for (const wire::pb::SequenceChunk& chunk : replayed[0].sequences()) {
    EXPECT_EQ(chunk.first_position(), 0u);
    EXPECT_TRUE(chunk.sample());
    const std::vector<uint32_t> ids(chunk.token_ids().begin(), chunk.token_ids().end());
    ASSERT_GE(ids.size(), 2u);
    if (ids[1] == 303) continue;  // c: new, not a replay
    const std::vector<uint32_t> prompt =
        ids[1] == 300 ? std::vector<uint32_t>{1, 300, 301} : std::vector<uint32_t>{1, 302};
    ASSERT_GT(ids.size(), prompt.size()) << "some tokens were generated before the loss";
    EXPECT_EQ(std::vector<uint32_t>(ids.begin(), ids.begin() + static_cast<long>(prompt.size())),
              prompt);
    const std::vector<uint32_t> streamed(ids.begin() + static_cast<long>(prompt.size()), ids.end());
    const std::vector<uint32_t> expected =
        Expected(prompt.size(), static_cast<int>(streamed.size()));
    EXPECT_EQ(streamed, expected);
    ++replayed_sequences;
  }
  EXPECT_EQ(replayed_sequences, 2u);
}

TEST_F(SchedulerTest, RestartedWorkerRegistersAgainAndIsPlanned) {
  FakeWorkerOptions slow;
  slow.step_delay = std::chrono::milliseconds(5);
  StartServing(2, slow);
  workers_[1]->GoSilent();
  ASSERT_TRUE(WaitFor([&] {
    const auto info = scheduler_->ServerInfo();
    return info.workers_size() == 2 && !info.workers(1).alive() && scheduler_->serving();
  }));
  const uint64_t without = scheduler_->ServerInfo().plan_version();
  auto a = scheduler_->Submit(Request("a", {1, 300}, 30));
  ASSERT_TRUE(a.ok());
  // A new process under the same id takes the silent one's place (its ZeroMQ
  // identity included) while a request is streaming.
  FakeWorkerOptions again = slow;
  again.id = "w1";
  FakeWorker& restarted = AddWorker(again);
  ASSERT_TRUE(WaitFor([&] { return !restarted.assignments().empty(); }));
  EXPECT_GT(restarted.assignments().back().plan_version(), without);
  EXPECT_LT(restarted.assignments().back().first_layer(),
            restarted.assignments().back().end_layer());
  Collected got = Collect(**a);
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_EQ(got.tokens, Expected(2, 30));
  EXPECT_TRUE(WaitFor([&] {
    const auto info = scheduler_->ServerInfo();
    return scheduler_->serving() && info.workers(1).alive();
  }));
  auto b = scheduler_->Submit(Request("b", {1, 301}, 4));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(Collect(**b).tokens, Expected(2, 4));
  EXPECT_FALSE(StepsOfPlan(restarted, scheduler_->ServerInfo().plan_version()).empty());
}

TEST_F(SchedulerTest, DrainLetsRunningRequestsFinishAndShutsWorkersDown) {
  StartServing();
  auto stream = scheduler_->Submit(Request("a", {1, 300}, 5));
  ASSERT_TRUE(stream.ok());
  scheduler_->Drain(std::chrono::seconds(5));
  Collected got = Collect(**stream);
  EXPECT_EQ(got.final.finish_reason(), chord::v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(WaitFor([&] { return workers_[0]->got_shutdown(); }));
  EXPECT_EQ(scheduler_->Submit(Request("b", {1, 300}, 2)).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace chord::coordinator
