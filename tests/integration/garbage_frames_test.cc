// Garbage on every ZeroMQ socket a chord process binds: the coordinator's
// control ROUTER, each worker's data PULL and the loader's ROUTER. Rogue
// sockets of the matching peer type (DEALER, PUSH, DEALER) send empty
// messages, random bytes, truncated envelopes, too many frames, oversized
// frames, every wrong message type, well-formed messages with absurd fields,
// and a flood, while generations stream. Every process must stay up, every
// stream must carry exactly the in-process tokens, nothing may hang, and the
// deployment must serve normally afterwards.
//
// A rogue knows what a network peer could learn without being a member (the
// endpoints, the plan version from the public API) but not step ids: those are
// the coordinator's secret, so forged results and forged step failures must
// not reach a running request.
#include <atomic>
#include <chrono>
#include <cmath>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "chord/internal/v1/internal.pb.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_helpers.h"
#include "zmq.hpp"

namespace chord::testing {
namespace {

namespace pb = ::chord::internal::v1;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using Frames = std::vector<std::string>;

constexpr int64_t kCtxSize = 256;
constexpr int kMaxTokens = 60;
constexpr milliseconds kStreamDeadline{60000};
// stories260K: 512 tokens, 64-dimensional residual stream.
constexpr uint32_t kVocab = 512;
constexpr uint32_t kEmbd = 64;

std::string Serialize(const pb::Envelope& envelope) {
  std::string bytes;
  envelope.SerializeToString(&bytes);
  return bytes;
}

// One socket of a rogue peer. Sends never block for long: a peer that stops
// reading must not stall the test (what could not be sent is counted).
class Rogue {
 public:
  Rogue(zmq::context_t& context, zmq::socket_type type, const std::string& endpoint)
      : socket_(context, type) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::sndhwm, 100000);
    socket_.set(zmq::sockopt::sndtimeo, 2000);
    socket_.set(zmq::sockopt::rcvtimeo, 5000);
    socket_.connect(endpoint);
  }

  void Send(const Frames& frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      const auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      if (!socket_.send(zmq::buffer(frames[i]), flags)) {
        ++unsent_;
        return;  // a ZeroMQ message is all frames or none: the rest cannot go alone
      }
    }
  }
  void Send(const pb::Envelope& envelope) { Send(Frames{Serialize(envelope)}); }

  // The next envelope with body `body` this socket receives (DEALER only),
  // skipping others (heartbeats, earlier replies), or nullopt after 10 s.
  std::optional<pb::Envelope> Receive(pb::Envelope::BodyCase body) {
    const Clock::time_point until = Clock::now() + milliseconds(10000);
    while (Clock::now() < until) {
      zmq::message_t frame;
      if (!socket_.recv(frame)) return std::nullopt;
      pb::Envelope envelope;
      const bool parsed = envelope.ParseFromArray(frame.data(), static_cast<int>(frame.size()));
      while (frame.more()) (void)socket_.recv(frame);
      if (parsed && envelope.body_case() == body) return envelope;
    }
    return std::nullopt;
  }

  int unsent() const { return unsent_; }

 private:
  zmq::socket_t socket_;
  int unsent_ = 0;
};

// Garbage that every socket gets: empty frames, random bytes, too many
// frames, an oversized frame, and the cuts of a valid envelope.
std::vector<Frames> CommonGarbage(std::mt19937_64& rng, const pb::Envelope& valid) {
  std::vector<Frames> out;
  out.push_back({""});
  out.push_back({"", ""});
  out.push_back({"", "", ""});
  auto random_bytes = [&](size_t n) {
    std::string bytes(n, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    return bytes;
  };
  for (int i = 0; i < 300; ++i) out.push_back({random_bytes(1 + rng() % 2048)});
  for (int i = 0; i < 50; ++i) out.push_back({random_bytes(1 + rng() % 64), random_bytes(rng() % 4096)});
  out.push_back(Frames(20, Serialize(valid)));                 // too many frames
  out.push_back({Serialize(valid), "", "", random_bytes(10)});  // valid head, junk tail
  out.push_back({random_bytes(8 << 20)});                        // 8 MiB of noise
  const std::string bytes = Serialize(valid);
  for (size_t cut = 1; cut < bytes.size(); ++cut) out.push_back({bytes.substr(0, cut)});
  // Every body type, empty: the wrong message for most sockets.
  for (int body = 1; body <= 15; ++body) {
    pb::Envelope envelope;
    const auto* field = pb::Envelope::descriptor()->FindFieldByNumber(body);
    if (field == nullptr) continue;
    envelope.GetReflection()->MutableMessage(&envelope, field);
    out.push_back({Serialize(envelope)});
  }
  return out;
}

pb::Envelope HelloEnvelope(uint32_t version, const std::string& role) {
  pb::Envelope envelope;
  envelope.mutable_hello()->set_protocol_version(version);
  envelope.mutable_hello()->set_role(role);
  envelope.mutable_hello()->set_node_id("rogue");
  return envelope;
}

// Well-formed control messages with absurd contents. Forged StepResults carry
// tokens for every plausible sequence id, for a range of step ids: were step
// ids guessable, they would land in the running streams.
std::vector<Frames> CoordinatorGarbage(uint64_t plan_version) {
  std::vector<Frames> out;
  for (uint64_t step_id = 0; step_id < 3000; ++step_id) {
    pb::Envelope envelope;
    pb::StepResult& result = *envelope.mutable_step_result();
    result.set_plan_version(plan_version);
    result.set_step_id(step_id);
    if (step_id % 2 == 0) {
      for (uint64_t sequence = 0; sequence < 16; ++sequence) {
        pb::SampledToken& token = *result.add_tokens();
        token.set_sequence_id(sequence);
        token.set_token_id(static_cast<uint32_t>((step_id + sequence) % kVocab));
      }
    } else {
      result.mutable_status()->set_code(3);  // INVALID_ARGUMENT: would end the request
      result.mutable_status()->set_message("forged");
    }
    out.push_back({Serialize(envelope)});
  }
  // A registration before any Hello, Hellos of other protocol versions.
  pb::Envelope registration;
  registration.mutable_register_worker()->set_worker_id("rogue");
  registration.mutable_register_worker()->set_data_endpoint("tcp://127.0.0.1:1");
  out.push_back({Serialize(registration)});
  for (uint32_t version : {0u, 2u, 0xFFFFFFFFu}) out.push_back({Serialize(HelloEnvelope(version, "worker"))});
  pb::Envelope stage_ready;
  stage_ready.mutable_stage_ready()->set_plan_version(plan_version);
  out.push_back({Serialize(stage_ready)});
  pb::Envelope free_slots;
  for (uint32_t slot : {0u, 7u, 1000000u, 0xFFFFFFFFu}) free_slots.mutable_free_slots()->add_slots(slot);
  out.push_back({Serialize(free_slots)});
  return out;
}

// After a good Hello: registrations no worker could honour. Each must be
// refused rather than put into a plan (which would stall every request until
// the bogus stage timed out).
std::vector<pb::Envelope> BadRegistrations() {
  std::vector<pb::Envelope> out;
  auto make = [&](const std::string& id, const std::string& endpoint, double speed) {
    pb::Envelope envelope;
    pb::RegisterWorker& r = *envelope.mutable_register_worker();
    r.set_worker_id(id);
    r.set_data_endpoint(endpoint);
    r.set_weight_bytes_per_second(speed);
    r.set_kv_slots(0xFFFFFFFFu);
    r.set_n_ctx(0xFFFFFFFFu);
    out.push_back(envelope);
  };
  make("", "tcp://127.0.0.1:1", 1e9);
  make("rogue", "", 1e9);
  make("rogue", "not an endpoint", 1e9);
  make("rogue", "tcp://127.0.0.1:1", std::numeric_limits<double>::quiet_NaN());
  make("rogue", "tcp://127.0.0.1:1", -5);
  make("rogue", "tcp://127.0.0.1:1", std::numeric_limits<double>::infinity());
  make(std::string(100000, 'x'), "tcp://127.0.0.1:1", 1e9);
  return out;
}

// Step headers for the current plan that break one rule each. None may touch a
// KV cache, and the failure a stage reports for them names a step id that the
// coordinator never issued.
std::vector<Frames> WorkerGarbage(uint64_t plan_version, std::mt19937_64& rng) {
  std::vector<Frames> out;
  auto header = [&](uint64_t step_id) {
    pb::Envelope envelope;
    envelope.mutable_step()->set_plan_version(plan_version);
    envelope.mutable_step()->set_step_id(step_id);
    envelope.mutable_step()->set_n_embd(kEmbd);
    return envelope;
  };
  auto chunk = [](pb::Envelope& e, uint32_t slot, uint32_t first, std::vector<uint32_t> tokens) {
    pb::SequenceChunk& c = *e.mutable_step()->add_sequences();
    c.set_sequence_id(1);
    c.set_slot(slot);
    c.set_first_position(first);
    for (uint32_t t : tokens) c.add_token_ids(t);
    c.set_sample(true);
    return &c;
  };
  for (uint64_t step_id = 0; step_id < 2000; ++step_id) {
    pb::Envelope e = header(step_id);
    switch (step_id % 8) {
      case 0: chunk(e, 0xFFFFFFFFu, 0, {1, 2}); break;                       // slot out of range
      case 1: chunk(e, 0, 0xFFFFFFF0u, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17}); break;
      case 2: chunk(e, 0, 0, {1, 0xFFFFFFFFu}); break;                       // token id >= vocab
      case 3: e.mutable_step()->set_n_embd(0xFFFFFFFFu); chunk(e, 0, 0, {1}); break;
      case 4: chunk(e, 0, 0, {}); break;                                     // no tokens
      case 5: chunk(e, 0, 0, {1})->mutable_sampling()->set_temperature(NAN); break;
      case 6: (*chunk(e, 0, 0, {1})->mutable_sampling()->mutable_logit_bias())[0xFFFFFFFFu] = 1; break;
      case 7: chunk(e, 0, 0, {1})->set_logprobs(0xFFFFFFFFu); break;
    }
    out.push_back({Serialize(e)});
  }
  // Counts: a chunk over n_ctx, a step with 100000 one-token chunks on one slot.
  pb::Envelope long_chunk = header(rng());
  chunk(long_chunk, 1, 0, std::vector<uint32_t>(kCtxSize + 1, 1));
  out.push_back({Serialize(long_chunk)});
  pb::Envelope many = header(rng());
  for (uint32_t i = 0; i < 100000; ++i) chunk(many, 2, i, {1});
  out.push_back({Serialize(many)});
  // Payload frames that disagree with the header (a first stage takes none;
  // a later one needs exactly tokens x n_embd floats).
  pb::Envelope with_payload = header(rng());
  chunk(with_payload, 3, 0, {1, 2});
  const std::string envelope = Serialize(with_payload);
  for (size_t bytes : {size_t{0}, size_t{3}, size_t{2 * kEmbd * 4 - 1}, size_t{2 * kEmbd * 4 + 4},
                       size_t{1} << 20}) {
    out.push_back({envelope, std::string(bytes, '\x7f')});
  }
  out.push_back({Serialize(header(rng())), std::string(2 * kEmbd * 4, '\0')});  // no sequences
  // Other plans' steps.
  for (uint64_t plan : {uint64_t{0}, plan_version + 1, std::numeric_limits<uint64_t>::max()}) {
    pb::Envelope e = header(rng());
    e.mutable_step()->set_plan_version(plan);
    chunk(e, 4, 0, {1});
    out.push_back({Serialize(e)});
  }
  return out;
}

// Tensor requests no loader can serve, and messages a loader never takes.
std::vector<Frames> LoaderGarbage() {
  std::vector<Frames> out;
  auto request = [&](const std::string& name, uint64_t offset, uint64_t length) {
    pb::Envelope envelope;
    pb::TensorRequest& r = *envelope.mutable_tensor_request();
    r.set_request_id(offset ^ length);
    r.set_name(name);
    r.set_offset(offset);
    r.set_length(length);
    out.push_back({Serialize(envelope)});
  };
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  for (const std::string& name : {std::string(), std::string("no.such.tensor"), std::string(70000, 'n'),
                                  std::string("token_embd.weight")}) {
    request(name, 0, 0);
    request(name, max, 1);
    request(name, 1, max);
    request(name, max - 10, 100);
    request(name, 0, uint64_t{1} << 40);
    request(name, 1 << 30, 16);
  }
  pb::Envelope info;
  info.mutable_model_info_request();
  out.push_back({Serialize(info), "a payload where none belongs"});
  pb::Envelope shutdown;  // from a peer that said Hello as a worker: ignored
  shutdown.mutable_shutdown()->set_reason("rogue");
  out.push_back({Serialize(shutdown)});
  return out;
}

class GarbageFramesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const std::string& prompt : prompts_) {
      absl::StatusOr<nlohmann::json> local = RunChordJson(
          {"generate", "--json", "--model", CHORD_DEFAULT_MODEL, "--prompt", prompt,
           "--temperature", "0", "--ignore-eos", "--max-tokens", std::to_string(kMaxTokens),
           "--ctx-size", std::to_string(kCtxSize), "--threads", "1"});
      ASSERT_TRUE(local.ok()) << local.status();
      expected_.push_back((*local)["token_ids"].get<std::vector<int32_t>>());
    }
    auto cluster = StartCluster(CHORD_DEFAULT_MODEL, 3, 8, kCtxSize);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
    stub_ = Connect(cluster_->grpc_address());
  }

  // Generations, one after another (the prompts in turn), until `stop`; any
  // stream that differs from the in-process tokens is a failure.
  void StreamUntil(const std::atomic<bool>& stop, std::atomic<int>* streams) {
    auto stub = Connect(cluster_->grpc_address());
    for (size_t i = 0; !stop.load(); i = (i + 1) % prompts_.size()) {
      const StreamResult result = Generate(*stub, GreedyRequest(prompts_[i], kMaxTokens), kStreamDeadline);
      ASSERT_TRUE(result.status.ok()) << "'" << prompts_[i] << "': " << result.status.error_message();
      ASSERT_EQ(result.token_ids, expected_[i]) << "'" << prompts_[i] << "'";
      ++*streams;
    }
  }

  // Every child still runs; then a normal generation, and the scheduler idles.
  void ExpectHealthy() {
    for (size_t i = 0; i < cluster_->size(); ++i) {
      EXPECT_FALSE(cluster_->child(i).Poll().has_value())
          << cluster_->child(i).name() << " exited:\n" << cluster_->child(i).Output();
    }
    for (size_t i = 0; i < prompts_.size(); ++i) {
      const StreamResult result = Generate(*stub_, GreedyRequest(prompts_[i], kMaxTokens), kStreamDeadline);
      EXPECT_TRUE(result.status.ok()) << result.status.error_message();
      EXPECT_EQ(result.token_ids, expected_[i]);
    }
    EXPECT_TRUE(WaitUntilIdle(*stub_, milliseconds(10000)));
  }

  std::string Logs() {
    std::string out;
    for (size_t i = 0; i < cluster_->size(); ++i) {
      const std::string output = cluster_->child(i).Output();
      out += "--- " + cluster_->child(i).name() + ":\n" +
             output.substr(output.size() > 3000 ? output.size() - 3000 : 0) + "\n";
    }
    return out;
  }

  const std::vector<std::string> prompts_ = {"Once upon a time", "Lily wanted", "The little dog"};
  std::vector<std::vector<int32_t>> expected_;
  std::unique_ptr<serve::LocalCluster> cluster_;
  std::unique_ptr<v1::Inference::Stub> stub_;
  zmq::context_t context_;
};

TEST_F(GarbageFramesTest, EveryBoundSocketSurvivesGarbageWhileRequestsStream) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::cout << "garbage seed " << seed << std::endl;
  const v1::ServerInfo info = ServerInfo(*stub_);
  ASSERT_EQ(info.workers_size(), 3) << info.DebugString();
  const uint64_t plan = info.plan_version();

  std::atomic<bool> stop{false};
  std::atomic<int> streams{0};
  std::thread generations([&] { StreamUntil(stop, &streams); });
  // Joined on every way out of this test, a failed assertion included.
  struct Joiner {
    std::atomic<bool>& stop;
    std::thread& thread;
    ~Joiner() {
      stop = true;
      if (thread.joinable()) thread.join();
    }
  } joiner{stop, generations};
  const Clock::time_point started = Clock::now();

  // Coordinator control ROUTER, from DEALERs.
  {
    pb::Envelope valid;
    valid.mutable_step_result()->set_plan_version(plan);
    valid.mutable_step_result()->add_tokens()->set_token_id(1);
    Rogue stranger(context_, zmq::socket_type::dealer, cluster_->control_endpoint());
    for (const Frames& frames : CommonGarbage(rng, valid)) stranger.Send(frames);
    for (const Frames& frames : CoordinatorGarbage(plan)) stranger.Send(frames);
    // A peer that said a good Hello, then registers with nonsense.
    Rogue greeted(context_, zmq::socket_type::dealer, cluster_->control_endpoint());
    greeted.Send(HelloEnvelope(1, "worker"));
    std::optional<pb::Envelope> hello = greeted.Receive(pb::Envelope::kHello);
    EXPECT_TRUE(hello.has_value());
    for (const pb::Envelope& registration : BadRegistrations()) {
      greeted.Send(registration);
      std::optional<pb::Envelope> reply = greeted.Receive(pb::Envelope::kRegisterReply);
      EXPECT_TRUE(reply.has_value()) << registration.ShortDebugString().substr(0, 300);
      if (reply.has_value()) {
        EXPECT_NE(reply->register_reply().status().code(), 0)
            << "accepted: " << registration.ShortDebugString().substr(0, 300);
      }
    }
  }
  // Each worker's data PULL, from PUSH sockets.
  for (const v1::WorkerInfo& worker : info.workers()) {
    pb::Envelope valid;
    valid.mutable_step()->set_plan_version(plan);
    valid.mutable_step()->set_n_embd(kEmbd);
    Rogue rogue(context_, zmq::socket_type::push, worker.address());
    for (const Frames& frames : CommonGarbage(rng, valid)) rogue.Send(frames);
    for (const Frames& frames : WorkerGarbage(plan, rng)) rogue.Send(frames);
  }
  // The loader's ROUTER, from DEALERs: before any Hello, after a refused one,
  // and after a good one.
  {
    pb::Envelope valid;
    valid.mutable_tensor_request()->set_name("token_embd.weight");
    valid.mutable_tensor_request()->set_length(64);
    Rogue stranger(context_, zmq::socket_type::dealer, cluster_->loader_endpoint());
    for (const Frames& frames : CommonGarbage(rng, valid)) stranger.Send(frames);
    for (const Frames& frames : LoaderGarbage()) stranger.Send(frames);
    Rogue refused(context_, zmq::socket_type::dealer, cluster_->loader_endpoint());
    refused.Send(HelloEnvelope(7, "worker"));
    for (const Frames& frames : LoaderGarbage()) refused.Send(frames);
    Rogue greeted(context_, zmq::socket_type::dealer, cluster_->loader_endpoint());
    greeted.Send(HelloEnvelope(1, "worker"));
    for (const Frames& frames : LoaderGarbage()) greeted.Send(frames);
    for (const Frames& frames : CommonGarbage(rng, valid)) greeted.Send(frames);
  }
  // A flood on every socket at once: bounded queues, no starvation.
  {
    std::vector<std::thread> flooders;
    std::vector<std::string> endpoints = {cluster_->control_endpoint(), cluster_->loader_endpoint()};
    for (const v1::WorkerInfo& worker : info.workers()) endpoints.push_back(worker.address());
    for (size_t i = 0; i < endpoints.size(); ++i) {
      flooders.emplace_back([&, i, flood_seed = rng()] {
        std::mt19937_64 flood_rng(flood_seed);
        const bool data = i >= 2;
        Rogue rogue(context_, data ? zmq::socket_type::push : zmq::socket_type::dealer, endpoints[i]);
        for (int n = 0; n < 20000; ++n) {
          std::string bytes(1 + flood_rng() % 200, '\0');
          for (char& c : bytes) c = static_cast<char>(flood_rng());
          rogue.Send(Frames{bytes});
        }
      });
    }
    for (std::thread& flooder : flooders) flooder.join();
  }
  // Streams that start after the last garbage was sent also run while what
  // the sockets queued drains: wait for three more (bounded).
  const Clock::time_point garbage_done = Clock::now();
  const int streams_before = streams.load();
  while (streams.load() < streams_before + 3 && Clock::now() - garbage_done < milliseconds(30000)) {
    std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_GE(streams.load(), streams_before + 3) << "generations stalled after the garbage";
  stop = true;
  generations.join();
  std::cout << streams << " streams checked while garbage arrived ("
            << std::chrono::duration_cast<milliseconds>(garbage_done - started).count() << " ms)"
            << std::endl;
  EXPECT_GT(streams.load(), 0);
  ExpectHealthy();
  // The loader still answers a well-behaved peer.
  Rogue peer(context_, zmq::socket_type::dealer, cluster_->loader_endpoint());
  peer.Send(HelloEnvelope(1, "worker"));
  std::optional<pb::Envelope> hello = peer.Receive(pb::Envelope::kHello);
  ASSERT_TRUE(hello.has_value() && hello->has_hello()) << Logs();
  pb::Envelope info_request;
  info_request.mutable_model_info_request();
  peer.Send(info_request);
  std::optional<pb::Envelope> model = peer.Receive(pb::Envelope::kModelInfoReply);
  ASSERT_TRUE(model.has_value() && model->has_model_info_reply()) << Logs();
  EXPECT_EQ(model->model_info_reply().status().code(), 0);
  EXPECT_GT(model->model_info_reply().tensors_size(), 0);
  if (HasFailure()) std::cout << Logs();
}

}  // namespace
}  // namespace chord::testing
