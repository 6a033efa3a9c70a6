// Runs WorkerServices in this process against a coordinator written here over
// real ZeroMQ sockets on loopback, with weights served from the bundled model
// by an in-process LoaderClient.
#include "worker/worker_service.h"

#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "loader/weight_service.h"
#include "worker/fetched_tensors.h"
#include "worker/local_generator.h"
#include "worker/models/llama.h"

namespace chord {
namespace {

namespace pb = wire::pb;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr char kModelSha[] = "5a17e0c0ffee";
constexpr uint32_t kModelEmbd = 64;  // the bundled model's width, which Step() writes
constexpr char kLoaderEndpoint[] = "tcp://127.0.0.1:1";  // never dialled: the fake serves the bytes

class FileLoaderClient final : public LoaderClient {
 public:
  explicit FileLoaderClient(const gguf::GgufFile& file) : file_(file) {}
  absl::StatusOr<LoaderModelInfo> FetchModelInfo() override {
    LoaderModelInfo info;
    info.model_sha256 = kModelSha;
    info.file_name = "stories260K.gguf";
    const auto bytes = file_.bytes().first(file_.data_offset());
    auto header = gguf::GgufFile::ParseHeader(std::string(bytes.begin(), bytes.end()));
    if (!header.ok()) return header.status();
    info.header = *std::move(header);
    return info;
  }
  absl::Status FetchTensor(const gguf::TensorInfo& info, uint8_t* out) override {
    const gguf::TensorInfo* stored = file_.FindTensor(info.name);
    if (stored == nullptr || stored->n_bytes != info.n_bytes) return absl::NotFoundError(info.name);
    std::memcpy(out, stored->data, stored->n_bytes);
    received_ += stored->n_bytes;
    return absl::OkStatus();
  }
  uint64_t bytes_received() const override { return received_; }

 private:
  const gguf::GgufFile& file_;
  uint64_t received_ = 0;
};

struct RunningWorker {
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<WorkerService> service;
  std::thread thread;
  absl::Status result;
};

class WorkerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(CHORD_DEFAULT_MODEL))
      GTEST_SKIP() << "no model at " << CHORD_DEFAULT_MODEL;
    auto file = gguf::GgufFile::Open(CHORD_DEFAULT_MODEL);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = *std::move(file);
    auto config = ReadModelConfig(*file_);
    ASSERT_TRUE(config.ok());
    config_ = *config;
    ASSERT_EQ(config_.n_layer, 5);
    router_.set(zmq::sockopt::linger, 0);
    router_.bind("tcp://127.0.0.1:*");
    control_endpoint_ = router_.get(zmq::sockopt::last_endpoint);
  }

  void TearDown() override {
    for (auto& [id, worker] : workers_) {
      worker->service->Stop();
      if (worker->thread.joinable()) worker->thread.join();
    }
  }

  WorkerOptions Options(const std::string& id) {
    WorkerOptions options;
    options.worker_id = id;
    options.coordinator_endpoint = control_endpoint_;
    options.weight_bytes_per_second = 1e9;  // keeps start-up quick; measured in its own test
    options.coordinator_timeout = 60s;      // this coordinator sends no heartbeats
    return options;
  }

  WorkerService& Start(const WorkerOptions& options) {
    auto worker = std::make_unique<RunningWorker>();
    worker->pool = std::make_unique<ThreadPool>(1);
    LoaderConnector connect =
        connector_
            ? connector_
            : [this](zmq::context_t&, const std::string& endpoint,
                     const std::string& sha) -> absl::StatusOr<std::unique_ptr<LoaderClient>> {
      if (endpoint != kLoaderEndpoint)
        return absl::InvalidArgumentError("wrong loader endpoint " + endpoint);
      if (sha != kModelSha) return absl::InvalidArgumentError("wrong expected model " + sha);
      return std::make_unique<FileLoaderClient>(*file_);
    };
    auto service = WorkerService::Create(context_, options, *worker->pool, connect);
    EXPECT_TRUE(service.ok()) << service.status();
    worker->service = *std::move(service);
    RunningWorker* raw = worker.get();
    worker->thread = std::thread([raw] { raw->result = raw->service->Run(); });
    WorkerService& ref = *worker->service;
    workers_[options.worker_id] = std::move(worker);
    return ref;
  }

  // The next message of kind `body` (others, e.g. heartbeat replies, are skipped).
  wire::Message Expect(pb::Envelope::BodyCase body, std::chrono::milliseconds timeout = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      zmq::pollitem_t item{router_.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq::poll(&item, 1, 100ms) == 0) continue;
      auto message = wire::Receive(router_, /*router=*/true);
      EXPECT_TRUE(message.ok()) << message.status();
      if (!message.ok() || !message->has_value()) continue;
      if ((*message)->envelope.body_case() == body) return **std::move(message);
    }
    ADD_FAILURE() << "no message of body " << static_cast<int>(body);
    return wire::Message{};
  }

  void SendTo(const std::string& id, const pb::Envelope& envelope) {
    ASSERT_TRUE(wire::Send(router_, envelope, {}, id).ok());
  }

  // Answers one worker's Hello and RegisterWorker; returns its data endpoint.
  std::string Register(const std::string& id) {
    const wire::Message hello = Expect(pb::Envelope::kHello);
    EXPECT_EQ(hello.identity, id);
    EXPECT_EQ(hello.envelope.hello().role(), "worker");
    pb::Envelope reply;
    *reply.mutable_hello() = wire::MakeHello("coordinator", "coord", model_sha_);
    SendTo(id, reply);
    const wire::Message reg = Expect(pb::Envelope::kRegisterWorker);
    EXPECT_EQ(reg.identity, id);
    EXPECT_EQ(reg.envelope.register_worker().worker_id(), id);
    EXPECT_GT(reg.envelope.register_worker().weight_bytes_per_second(), 0.0);
    EXPECT_FALSE(
        reg.envelope.register_worker().nccl());  // CPU workers pass activations over ZeroMQ
    pb::Envelope ok;
    ok.mutable_register_reply();
    SendTo(id, ok);
    return reg.envelope.register_worker().data_endpoint();
  }

  // `first_stage`: for the last of several stages, stage 0's data endpoint.
  void Assign(const std::string& id, uint64_t plan, uint32_t first, uint32_t end,
              const std::string& next, const std::string& first_stage = "") {
    pb::Envelope envelope;
    pb::AssignLayers* a = envelope.mutable_assign_layers();
    a->set_plan_version(plan);
    a->set_first_layer(first);
    a->set_end_layer(end);
    a->set_next_data_endpoint(next);
    a->set_first_data_endpoint(first_stage);
    a->set_loader_endpoint(loader_endpoint_);
    a->set_kv_slots(kSlots);
    a->set_n_ctx(kCtx);
    a->set_kv_type("f32");
    SendTo(id, envelope);
  }

  static constexpr uint32_t kSlots = 3;
  static constexpr uint32_t kCtx = 64;

  zmq::context_t context_;
  zmq::socket_t router_{context_, zmq::socket_type::router};
  std::string control_endpoint_;
  std::unique_ptr<gguf::GgufFile> file_;
  ModelConfig config_;
  std::string model_sha_ = kModelSha;
  std::string loader_endpoint_ = kLoaderEndpoint;
  LoaderConnector connector_;  // empty: weights from the file, in this process
  std::map<std::string, std::unique_ptr<RunningWorker>> workers_;
};

struct Sequence {
  uint32_t slot;
  std::vector<int32_t> prompt;
  pb::Sampling sampling;
  std::vector<int32_t> generated;
  std::vector<std::vector<TokenLogprob>> top;
};

pb::Sampling Greedy() {
  pb::Sampling s;
  s.set_temperature(0.0f);
  return s;
}

pb::Sampling Random(uint64_t seed) {
  pb::Sampling s;
  s.set_temperature(0.9f);
  s.set_top_k(40);
  s.set_top_p(0.95f);
  s.set_min_p(0.05f);
  s.set_repetition_penalty(1.1f);
  s.set_penalty_last_n(64);
  s.set_seed(seed);
  (*s.mutable_logit_bias())[2] = -1.5f;
  return s;
}

// What `chord generate` computes for the sequence, in one process.
void GenerateLocally(const gguf::GgufFile& file, int n_tokens, Sequence* seq) {
  LocalGeneratorOptions options;
  options.n_ctx = 64;
  options.n_threads = 1;
  auto generator = LocalGenerator::Create(file, options);
  ASSERT_TRUE(generator.ok()) << generator.status();
  Sampler sampler;
  std::vector<int32_t> history = seq->prompt;
  auto logits = (*generator)->Feed(seq->prompt);
  for (int i = 0; i < n_tokens; ++i) {
    ASSERT_TRUE(logits.ok()) << logits.status();
    seq->top.push_back(Sampler::TopLogprobs(*logits, 3));
    const int32_t token =
        sampler.Sample(*logits, ToSamplingParams(seq->sampling), history, (*generator)->n_past());
    seq->generated.push_back(token);
    history.push_back(token);
    const int32_t next[1] = {token};
    logits = (*generator)->Feed(next);
  }
}

pb::Envelope Step(uint64_t plan, uint64_t step_id, const std::vector<const Sequence*>& seqs,
                  const std::vector<std::vector<int32_t>>& tokens,
                  const std::vector<uint32_t>& first) {
  pb::Envelope envelope;
  pb::StepHeader* step = envelope.mutable_step();
  step->set_plan_version(plan);
  step->set_step_id(step_id);
  step->set_n_embd(kModelEmbd);
  for (size_t i = 0; i < seqs.size(); ++i) {
    pb::SequenceChunk* chunk = step->add_sequences();
    chunk->set_sequence_id(seqs[i]->slot + 1000);
    chunk->set_slot(seqs[i]->slot);
    chunk->set_first_position(first[i]);
    for (int32_t t : tokens[i]) chunk->add_token_ids(static_cast<uint32_t>(t));
    chunk->set_sample(true);
    *chunk->mutable_sampling() = seqs[i]->sampling;
    chunk->set_logprobs(3);
  }
  return envelope;
}

void ExpectStepError(const wire::Message& m, uint64_t step_id, absl::StatusCode code,
                     const std::string& origin, const std::string& words) {
  ASSERT_TRUE(m.envelope.has_step_result());
  const pb::StepResult& r = m.envelope.step_result();
  EXPECT_EQ(r.step_id(), step_id);
  EXPECT_EQ(r.status().code(), static_cast<int>(code)) << r.status().message();
  EXPECT_EQ(r.status().origin_node(), origin);
  EXPECT_THAT(r.status().message(), HasSubstr(words));
  EXPECT_EQ(r.tokens_size(), 0);
}

// The model split [0, 2) + [2, 5) over two workers samples exactly the tokens
// (and log-probabilities) that one process does, for two sequences batched
// together, one greedy and one sampled; malformed steps in between are
// answered with errors and change nothing.
TEST_F(WorkerServiceTest, TwoStagesMatchLocalGenerationAndRejectBadSteps) {
  ASSERT_EQ(config_.n_embd, kModelEmbd);
  constexpr int kTokens = 12;
  Sequence a{0, {1, 403, 261, 300, 12}, Greedy(), {}, {}};
  Sequence b{2, {1, 89, 7, 150}, Random(77), {}, {}};
  GenerateLocally(*file_, kTokens, &a);
  GenerateLocally(*file_, kTokens, &b);

  metrics::Registry registry;
  metrics::WorkerMetrics w0_metrics(registry);
  WorkerOptions w0_options = Options("w0");
  w0_options.metrics = &w0_metrics;
  Start(w0_options);
  const std::string w0_data = Register("w0");
  Start(Options("w1"));
  const std::string w1_data = Register("w1");
  Assign("w0", 3, 0, 2, w1_data);
  Assign("w1", 3, 2, 5, "");
  const uint64_t kv_per_layer = uint64_t{kSlots} * kCtx * 2 * config_.n_embd_kv() * sizeof(float);
  for (int i = 0; i < 2; ++i) {
    const wire::Message ready = Expect(pb::Envelope::kStageReady);
    const pb::StageReady& r = ready.envelope.stage_ready();
    EXPECT_EQ(r.status().code(), 0) << ready.identity << ": " << r.status().message();
    EXPECT_EQ(r.plan_version(), 3u);
    EXPECT_GT(r.weight_bytes(), 0u);
    EXPECT_EQ(r.kv_cache_bytes(), kv_per_layer * (ready.identity == "w0" ? 2 : 3))
        << ready.identity;
  }
  zmq::socket_t push0(context_, zmq::socket_type::push), push1(context_, zmq::socket_type::push);
  push0.set(zmq::sockopt::linger, 0);
  push1.set(zmq::sockopt::linger, 0);
  push0.connect(w0_data);
  push1.connect(w1_data);

  const auto run_step = [&](uint64_t step_id, bool prefill) {
    std::vector<std::vector<int32_t>> tokens;
    std::vector<uint32_t> first;
    for (const Sequence* s : {&a, &b}) {
      const size_t done = step_id - 1;  // tokens generated before this step
      tokens.push_back(prefill ? s->prompt : std::vector<int32_t>{s->generated[done - 1]});
      first.push_back(prefill ? 0 : static_cast<uint32_t>(s->prompt.size() + done - 1));
    }
    ASSERT_TRUE(wire::Send(push0, Step(3, step_id, {&a, &b}, tokens, first)).ok());
    const wire::Message m = Expect(pb::Envelope::kStepResult);
    EXPECT_EQ(m.identity, "w1");
    const pb::StepResult& r = m.envelope.step_result();
    ASSERT_EQ(r.status().code(), 0) << r.status().message();
    EXPECT_EQ(r.step_id(), step_id);
    ASSERT_EQ(r.tokens_size(), 2);
    for (int i = 0; i < 2; ++i) {
      const Sequence& s = i == 0 ? a : b;
      const size_t k = step_id - 1;
      EXPECT_EQ(r.tokens(i).sequence_id(), s.slot + 1000u);
      EXPECT_EQ(static_cast<int32_t>(r.tokens(i).token_id()), s.generated[k])
          << "step " << step_id << " seq " << i;
      ASSERT_EQ(r.tokens(i).top_logprobs_size(), 3);
      for (int j = 0; j < 3; ++j) {
        EXPECT_EQ(static_cast<int32_t>(r.tokens(i).top_logprobs(j).id()), s.top[k][j].id);
        EXPECT_EQ(r.tokens(i).top_logprobs(j).logprob(), s.top[k][j].logprob);  // same bits
      }
    }
  };

  run_step(1, true);
  run_step(2, false);
  run_step(3, false);
  // Stage 0's step times, by phase. w0 observes after forwarding, so the result
  // can arrive first: wait a little for the third observation.
  for (int i = 0; i < 100 && w0_metrics.stage_step_seconds.With({"decode"}).snapshot().count < 2;
       ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(w0_metrics.stage_step_seconds.With({"prefill"}).snapshot().count, 1u);
  EXPECT_EQ(w0_metrics.stage_step_seconds.With({"decode"}).snapshot().count, 2u);
  EXPECT_GT(w0_metrics.stage_step_seconds.With({"prefill"}).snapshot().sum, 0.0);

  // Malformed steps: each answered by the stage that saw it, nothing else changes.
  ASSERT_TRUE(push0.send(zmq::str_buffer("not an envelope"), zmq::send_flags::none).has_value());
  ExpectStepError(Expect(pb::Envelope::kStepResult), 0, absl::StatusCode::kInvalidArgument, "w0",
                  "envelope does not parse");
  const uint32_t next_a = static_cast<uint32_t>(a.prompt.size() + 2);
  pb::Envelope bad = Step(3, 900, {&a}, {{a.generated[2]}}, {next_a});
  std::vector<float> short_payload(7, 0.5f);
  ASSERT_TRUE(wire::Send(push1, bad,
                         std::span<const uint8_t>(
                             reinterpret_cast<const uint8_t*>(short_payload.data()), 28))
                  .ok());
  ExpectStepError(Expect(pb::Envelope::kStepResult), 900, absl::StatusCode::kInvalidArgument, "w1",
                  "activation frame holds 28 bytes");
  bad.mutable_step()->set_step_id(901);
  bad.mutable_step()->mutable_sequences(0)->set_slot(kSlots);
  ASSERT_TRUE(wire::Send(push0, bad).ok());
  ExpectStepError(Expect(pb::Envelope::kStepResult), 901, absl::StatusCode::kInvalidArgument, "w0",
                  "slot 3 is out of range");
  bad = Step(3, 902, {&a}, {{a.generated[2]}}, {next_a + 1});
  ASSERT_TRUE(wire::Send(push0, bad).ok());
  ExpectStepError(Expect(pb::Envelope::kStepResult), 902, absl::StatusCode::kFailedPrecondition,
                  "w0", "does not continue slot 0");
  bad = Step(2, 903, {&a}, {{a.generated[2]}}, {next_a});
  ASSERT_TRUE(wire::Send(push0, bad).ok());
  ExpectStepError(Expect(pb::Envelope::kStepResult), 903, absl::StatusCode::kFailedPrecondition,
                  "w0", "is for plan 2");
  // Activations announced over NCCL reach a CPU stage, which has no link: refused, slot unchanged.
  bad = Step(3, 904, {&a}, {{a.generated[2]}}, {next_a});
  bad.mutable_step()->set_activations_over_nccl(true);
  ASSERT_TRUE(wire::Send(push1, bad).ok());
  ExpectStepError(Expect(pb::Envelope::kStepResult), 904, absl::StatusCode::kUnavailable, "w1",
                  "this stage has no working link");

  for (uint64_t step = 4; step <= kTokens; ++step) run_step(step, false);

  pb::Envelope shutdown;
  shutdown.mutable_shutdown()->set_reason("test over");
  SendTo("w0", shutdown);
  SendTo("w1", shutdown);
  for (auto& [id, worker] : workers_) {
    worker->thread.join();
    EXPECT_TRUE(worker->result.ok()) << id << ": " << worker->result;
  }
}

// A step that arrives after its deadline is not run: the stage answers
// DEADLINE_EXCEEDED on the control socket and its KV cache stays as it was,
// so the same step sent again in time continues the slot and samples what one
// process does. Steps without a deadline, or with one ahead, run.
TEST_F(WorkerServiceTest, DropsAStepThatArrivesAfterItsDeadline) {
  Sequence a{1, {1, 403, 261, 300, 12}, Greedy(), {}, {}};
  GenerateLocally(*file_, 3, &a);
  Start(Options("w0"));
  const std::string data = Register("w0");
  Assign("w0", 4, 0, 5, "");  // every layer: the last stage, which samples
  ASSERT_EQ(Expect(pb::Envelope::kStageReady).envelope.stage_ready().status().code(), 0);
  zmq::socket_t push(context_, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(data);
  const auto expect_token = [&](uint64_t step_id, size_t k) {
    const wire::Message m = Expect(pb::Envelope::kStepResult);
    const pb::StepResult& r = m.envelope.step_result();
    ASSERT_EQ(r.status().code(), 0) << r.status().message();
    EXPECT_EQ(r.step_id(), step_id);
    ASSERT_EQ(r.tokens_size(), 1);
    EXPECT_EQ(static_cast<int32_t>(r.tokens(0).token_id()), a.generated[k]);
  };
  const uint32_t next = static_cast<uint32_t>(a.prompt.size());

  ASSERT_TRUE(wire::Send(push, Step(4, 1, {&a}, {a.prompt}, {0})).ok());  // no deadline
  expect_token(1, 0);
  pb::Envelope late = Step(4, 2, {&a}, {{a.generated[0]}}, {next});
  late.mutable_step()->set_deadline_unix_micros(wire::UnixMicrosNow() - 250000);
  ASSERT_TRUE(wire::Send(push, late).ok());
  const wire::Message dropped = Expect(pb::Envelope::kStepResult);
  ExpectStepError(dropped, 2, absl::StatusCode::kDeadlineExceeded, "w0", "step 2 arrived");
  EXPECT_THAT(dropped.envelope.step_result().status().message(), HasSubstr("after its deadline"));
  EXPECT_EQ(dropped.envelope.step_result().plan_version(), 4u);

  pb::Envelope in_time = Step(4, 3, {&a}, {{a.generated[0]}}, {next});
  in_time.mutable_step()->set_deadline_unix_micros(wire::UnixMicrosNow() + 60'000'000);
  ASSERT_TRUE(wire::Send(push, in_time).ok());
  expect_token(3, 1);  // position `next` was free: the late step left the slot alone
  ASSERT_TRUE(wire::Send(push, Step(4, 4, {&a}, {{a.generated[1]}}, {next + 1})).ok());
  expect_token(4, 2);
}

// A one-stage pipeline's chained steps: sent before the step they follow has
// answered, they run on the tokens that step sampled (the same tokens as one
// process); one chained to a step that did not run here is refused.
TEST_F(WorkerServiceTest, ChainedStepsRunOnTheTokensTheStepBeforeSampled) {
  Sequence a{1, {1, 403, 261, 300, 12}, Random(11), {}, {}};
  Sequence b{2, {1, 79, 311}, Greedy(), {}, {}};
  GenerateLocally(*file_, 3, &a);
  GenerateLocally(*file_, 3, &b);
  Start(Options("w0"));
  const std::string data = Register("w0");
  Assign("w0", 4, 0, 5, "");  // every layer: the first stage and the last
  ASSERT_EQ(Expect(pb::Envelope::kStageReady).envelope.stage_ready().status().code(), 0);
  zmq::socket_t push(context_, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(data);
  const auto chained = [&](uint64_t step_id, uint64_t follows, const std::vector<uint32_t>& first) {
    pb::Envelope envelope = Step(4, step_id, {&a, &b}, {{}, {}}, first);
    envelope.mutable_step()->set_follows_step_id(follows);
    for (pb::SequenceChunk& chunk : *envelope.mutable_step()->mutable_sequences()) {
      chunk.set_token_pending(true);
    }
    return envelope;
  };
  const auto expect_tokens = [&](uint64_t step_id, size_t k) {
    const wire::Message m = Expect(pb::Envelope::kStepResult);
    const pb::StepResult& r = m.envelope.step_result();
    ASSERT_EQ(r.status().code(), 0) << r.status().message();
    EXPECT_EQ(r.step_id(), step_id);
    ASSERT_EQ(r.tokens_size(), 2);
    EXPECT_EQ(static_cast<int32_t>(r.tokens(0).token_id()), a.generated[k]);
    EXPECT_EQ(static_cast<int32_t>(r.tokens(1).token_id()), b.generated[k]);
  };
  const auto na = static_cast<uint32_t>(a.prompt.size());
  const auto nb = static_cast<uint32_t>(b.prompt.size());
  // Both chained steps queue behind the first before it has answered.
  ASSERT_TRUE(wire::Send(push, Step(4, 10, {&a, &b}, {a.prompt, b.prompt}, {0, 0})).ok());
  ASSERT_TRUE(wire::Send(push, chained(11, 10, {na, nb})).ok());
  ASSERT_TRUE(wire::Send(push, chained(12, 11, {na + 1, nb + 1})).ok());
  expect_tokens(10, 0);
  expect_tokens(11, 1);
  expect_tokens(12, 2);

  // Chained to a step that did not run here (it failed, or never came):
  // refused, and the slots are left as they were.
  ASSERT_TRUE(wire::Send(push, chained(13, 99, {na + 3, nb + 3})).ok());
  ExpectStepError(Expect(pb::Envelope::kStepResult), 13, absl::StatusCode::kUnavailable, "w0",
                  "step 13 is chained to step 99, whose tokens are not here");
  // A pending token outside a chained step.
  ASSERT_TRUE(wire::Send(push, chained(14, 0, {na + 2, nb + 2})).ok());
  ExpectStepError(Expect(pb::Envelope::kStepResult), 14, absl::StatusCode::kInvalidArgument, "w0",
                  "a pending token outside a chained step");
}

// Two stages: stage 0 holds a chained step until the last stage hands it the
// tokens of the step it follows, then runs it; the tokens are one process's.
TEST_F(WorkerServiceTest, TwoStagesRunChainedStepsOnTheLastStagesTokens) {
  Sequence a{1, {1, 403, 261, 300, 12}, Random(5), {}, {}};
  GenerateLocally(*file_, 3, &a);
  Start(Options("w0"));
  const std::string w0_data = Register("w0");
  Start(Options("w1"));
  const std::string w1_data = Register("w1");
  Assign("w0", 3, 0, 2, w1_data);
  Assign("w1", 3, 2, 5, "", w0_data);
  bool linked = false;
  for (int i = 0; i < 2; ++i) {
    const wire::Message ready = Expect(pb::Envelope::kStageReady);
    ASSERT_EQ(ready.envelope.stage_ready().status().code(), 0);
    if (ready.identity == "w1") linked = ready.envelope.stage_ready().first_stage_linked();
    if (ready.identity == "w0") {
      EXPECT_FALSE(ready.envelope.stage_ready().first_stage_linked());
    }
  }
  if (!linked) {
    // Not within the stage's first wait (a loaded machine): it says so again
    // once the link is up (the coordinator chains on that).
    const wire::Message again = Expect(pb::Envelope::kStageReady);
    EXPECT_EQ(again.identity, "w1");
    EXPECT_TRUE(again.envelope.stage_ready().first_stage_linked());
  }
  zmq::socket_t push(context_, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(w0_data);
  const auto step = [&](uint64_t step_id, uint64_t follows, std::vector<int32_t> tokens,
                        uint32_t first) {
    pb::Envelope envelope = Step(3, step_id, {&a}, {tokens}, {first});
    envelope.mutable_step()->set_follows_step_id(follows);
    envelope.mutable_step()->set_tokens_to_first_stage(true);
    if (follows != 0) envelope.mutable_step()->mutable_sequences(0)->set_token_pending(true);
    return envelope;
  };
  const auto n = static_cast<uint32_t>(a.prompt.size());
  // The chained steps reach stage 0 before the tokens they need.
  ASSERT_TRUE(wire::Send(push, step(20, 0, a.prompt, 0)).ok());
  ASSERT_TRUE(wire::Send(push, step(21, 20, {}, n)).ok());
  ASSERT_TRUE(wire::Send(push, step(22, 21, {}, n + 1)).ok());
  for (uint64_t id = 20; id <= 22; ++id) {
    const wire::Message m = Expect(pb::Envelope::kStepResult);
    const pb::StepResult& r = m.envelope.step_result();
    ASSERT_EQ(r.status().code(), 0) << r.status().message();
    EXPECT_EQ(r.step_id(), id);
    ASSERT_EQ(r.tokens_size(), 1);
    EXPECT_EQ(static_cast<int32_t>(r.tokens(0).token_id()), a.generated[id - 20]);
  }
}

// A last stage that cannot reach stage 0's data port says so in its
// StageReady (after a bounded wait), and still serves unchained steps.
TEST_F(WorkerServiceTest, ALastStageThatCannotReachStageZeroSaysSo) {
  Start(Options("w0"));
  const std::string w0_data = Register("w0");
  Start(Options("w1"));
  const std::string w1_data = Register("w1");
  // A loopback port nothing listens on (bound in a context of its own, whose
  // end waits until the port is let go).
  std::string dead;
  {
    zmq::context_t context;
    zmq::socket_t probe(context, zmq::socket_type::pull);
    probe.set(zmq::sockopt::linger, 0);
    probe.bind("tcp://127.0.0.1:*");
    dead = probe.get(zmq::sockopt::last_endpoint);
  }
  Assign("w0", 4, 0, 2, w1_data);
  Assign("w1", 4, 2, 5, "", dead);
  for (int i = 0; i < 2; ++i) {
    const wire::Message ready = Expect(pb::Envelope::kStageReady);
    ASSERT_EQ(ready.envelope.stage_ready().status().code(), 0);
    EXPECT_FALSE(ready.envelope.stage_ready().first_stage_linked()) << ready.identity;
  }
  Sequence a{1, {1, 403, 261, 300, 12}, Greedy(), {}, {}};
  GenerateLocally(*file_, 1, &a);
  zmq::socket_t push(context_, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(w0_data);
  ASSERT_TRUE(wire::Send(push, Step(4, 30, {&a}, {a.prompt}, {0})).ok());
  const wire::Message m = Expect(pb::Envelope::kStepResult);
  ASSERT_EQ(m.envelope.step_result().status().code(), 0);
  ASSERT_EQ(m.envelope.step_result().tokens_size(), 1);
  EXPECT_EQ(static_cast<int32_t>(m.envelope.step_result().tokens(0).token_id()), a.generated[0]);
}

TEST_F(WorkerServiceTest, RefusesARangeBeyondItsBudgetAndServesAsASpare) {
  WorkerOptions options = Options("small");
  options.memory_budget_bytes = 4096;
  Start(options);
  Register("small");
  Assign("small", 1, 0, 5, "");
  const wire::Message refused = Expect(pb::Envelope::kStageReady);
  const pb::StageReady& r = refused.envelope.stage_ready();
  EXPECT_EQ(r.status().code(), static_cast<int>(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(r.status().message(), HasSubstr("layers [0, 5) need a memory budget of at least"));
  EXPECT_THAT(r.status().message(), HasSubstr("the budget is 4096 bytes"));

  Assign("small", 2, 5, 5, "");  // a spare
  const wire::Message spare = Expect(pb::Envelope::kStageReady);
  EXPECT_EQ(spare.envelope.stage_ready().status().code(), 0);
  EXPECT_EQ(spare.envelope.stage_ready().plan_version(), 2u);
  EXPECT_EQ(spare.envelope.stage_ready().weight_bytes(), 0u);

  zmq::socket_t push(context_, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(workers_["small"]->service->data_endpoint());
  Sequence a{0, {1, 2}, Greedy(), {}, {}};
  ASSERT_TRUE(wire::Send(push, Step(2, 5, {&a}, {a.prompt}, {0})).ok());
  ExpectStepError(Expect(pb::Envelope::kStepResult), 5, absl::StatusCode::kFailedPrecondition,
                  "small", "holds no ready stage");

  pb::Envelope heartbeat;
  heartbeat.mutable_heartbeat()->set_plan_version(2);
  heartbeat.mutable_heartbeat()->set_sent_unix_micros(123456);
  SendTo("small", heartbeat);
  const wire::Message beat = Expect(pb::Envelope::kHeartbeat);
  EXPECT_EQ(beat.envelope.heartbeat().sent_unix_micros(), 123456u);
}

// A worker says Hello again when the coordinator falls silent (e.g. restarts),
// and keeps saying it while nobody answers.
TEST_F(WorkerServiceTest, RegistersAgainAfterCoordinatorSilence) {
  WorkerOptions options = Options("w");
  options.coordinator_timeout = 300ms;
  options.hello_retry = 100ms;
  Start(options);
  const std::string endpoint = Register("w");
  EXPECT_EQ(endpoint, workers_["w"]->service->data_endpoint());
  EXPECT_THAT(endpoint, HasSubstr("tcp://127.0.0.1:"));
  EXPECT_EQ(Register("w"), endpoint);  // after 300 ms of silence: Hello and RegisterWorker again
}

// The same split with the real loader: weights travel over ZeroMQ from the
// loader's weight service through LoaderClient, checksummed, and the model
// identity the coordinator announces is checked against the loader's.
TEST_F(WorkerServiceTest, FetchesItsLayersFromTheLoader) {
  zmq::context_t loader_context;
  auto sha = loader::Sha256Hex(file_->bytes());
  ASSERT_TRUE(sha.ok()) << sha.status();
  loader::WeightServiceOptions loader_options;
  loader_options.bind = "tcp://127.0.0.1:*";
  auto loader = loader::WeightService::Create(loader_context, *file_, *sha, "stories260K.gguf",
                                              loader_options);
  ASSERT_TRUE(loader.ok()) << loader.status();
  std::thread loader_thread([&] { EXPECT_TRUE((*loader)->Run().ok()); });
  model_sha_ = *sha;
  loader_endpoint_ = (*loader)->endpoint();
  connector_ = [](zmq::context_t& context, const std::string& endpoint,
                  const std::string& expected) {
    LoaderClientOptions options;
    options.node_id = "worker";
    return LoaderClient::Connect(context, endpoint, expected, options);
  };
  Sequence a{1, {1, 403, 261, 300, 12}, Greedy(), {}, {}};
  GenerateLocally(*file_, 1, &a);
  Start(Options("w0"));
  const std::string w0_data = Register("w0");
  Start(Options("w1"));
  const std::string w1_data = Register("w1");
  Assign("w0", 1, 0, 3, w1_data);
  Assign("w1", 1, 3, 5, "");
  for (int i = 0; i < 2; ++i) {
    const wire::Message ready = Expect(pb::Envelope::kStageReady);
    EXPECT_EQ(ready.envelope.stage_ready().status().code(), 0)
        << ready.envelope.stage_ready().status().message();
    EXPECT_GT(ready.envelope.stage_ready().weight_bytes(), 0u);
  }
  zmq::socket_t push(context_, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(w0_data);
  ASSERT_TRUE(wire::Send(push, Step(1, 1, {&a}, {a.prompt}, {0})).ok());
  const wire::Message m = Expect(pb::Envelope::kStepResult);
  ASSERT_EQ(m.envelope.step_result().tokens_size(), 1)
      << m.envelope.step_result().status().message();
  EXPECT_EQ(static_cast<int32_t>(m.envelope.step_result().tokens(0).token_id()), a.generated[0]);
  (*loader)->RequestStop();
  loader_thread.join();
}

// Stages over their budgets stream their layers through the shard cache and
// still sample exactly what one process does, step after step (each step
// wraps from the last layer of the range to the first).
TEST_F(WorkerServiceTest, StagesOverTheirBudgetStreamAndMatchLocalGeneration) {
  constexpr int kTokens = 6;
  Sequence a{0, {1, 403, 261, 300, 12}, Greedy(), {}, {}};
  Sequence b{2, {1, 89, 7, 150}, Random(77), {}, {}};
  GenerateLocally(*file_, kTokens, &a);
  GenerateLocally(*file_, kTokens, &b);
  auto layer = FetchedTensors::BytesNeeded(*file_, LlamaStage::LayerTensorNames(0));
  auto embd = FetchedTensors::BytesNeeded(*file_, LlamaStage::StageTensorNames(config_, {0, 3}));
  auto output = FetchedTensors::BytesNeeded(*file_, LlamaStage::StageTensorNames(config_, {3, 5}));
  ASSERT_TRUE(layer.ok() && embd.ok() && output.ok());
  WorkerOptions o0 = Options("w0");
  o0.memory_budget_bytes = *embd + 2 * *layer;  // 2 of its 3 layers: the window
  o0.prefetch_depth = 1;
  WorkerOptions o1 = Options("w1");
  o1.memory_budget_bytes = *output + *layer;  // 1 of 2 layers: no room to prefetch
  Start(o0);
  const std::string w0_data = Register("w0");
  Start(o1);
  const std::string w1_data = Register("w1");
  Assign("w0", 1, 0, 3, w1_data);
  Assign("w1", 1, 3, 5, "");
  for (int i = 0; i < 2; ++i) {
    const wire::Message ready = Expect(pb::Envelope::kStageReady);
    const pb::StageReady& r = ready.envelope.stage_ready();
    ASSERT_EQ(r.status().code(), 0) << r.status().message();
    EXPECT_EQ(r.weight_bytes(),
              ready.identity == "w0" ? o0.memory_budget_bytes : o1.memory_budget_bytes);
  }
  zmq::socket_t push(context_, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(w0_data);
  for (int k = 0; k < kTokens; ++k) {
    std::vector<std::vector<int32_t>> tokens;
    std::vector<uint32_t> first;
    for (const Sequence* s : {&a, &b}) {
      tokens.push_back(k == 0 ? s->prompt : std::vector<int32_t>{s->generated[k - 1]});
      first.push_back(k == 0 ? 0 : static_cast<uint32_t>(s->prompt.size() + k - 1));
    }
    ASSERT_TRUE(wire::Send(push, Step(1, k + 1, {&a, &b}, tokens, first)).ok());
    const wire::Message m = Expect(pb::Envelope::kStepResult);
    const pb::StepResult& r = m.envelope.step_result();
    ASSERT_EQ(r.status().code(), 0) << r.status().message();
    ASSERT_EQ(r.tokens_size(), 2);
    EXPECT_EQ(static_cast<int32_t>(r.tokens(0).token_id()), a.generated[k]) << "step " << k;
    EXPECT_EQ(static_cast<int32_t>(r.tokens(1).token_id()), b.generated[k]) << "step " << k;
  }
}

TEST(WeightThroughputTest, MeasuresAPositiveRate) {
  ThreadPool pool(1);
  auto rate = MeasureWeightThroughput(pool);
  ASSERT_TRUE(rate.ok()) << rate.status();
  EXPECT_GT(*rate, 1e6);  // any CPU reads more than 1 MB/s
  EXPECT_LT(*rate, 1e13);
}

}  // namespace
}  // namespace chord
