// Fuzz target: every decoder of chord's internal messages, and the checks that
// a decoded message reaches. Input format: message_records.h. Each record is
// sent as real ZeroMQ frames over an inproc socket pair and read back with
// wire::Receive (frame count, envelope parse), then handed to what the chosen
// process runs on it:
//   worker data plane   ValidateStep + ReadStepPayload against a stage's limits,
//                       with the slots' lengths carried from step to step;
//   coordinator         WorkerPool::OnMessage and Tick (Hello, RegisterWorker,
//                       StageReady, ...: registration, planning, liveness);
//   loader              CheckHello, ValidateTensorRequest on a small model;
//   loader client       ParseModelInfoReply (metadata GGUF, tensor table) and
//                       MakeModelContext, as the coordinator builds its model;
//                       TensorChunk and Hello statuses;
//   worker control      CheckHello, RegisterReply status, FreeSlots bounds.
// Messages arrive in sequence, so state machines see whole conversations.
#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/base/log.h"
#include "google/protobuf/stubs/logging.h"
#include "common/gguf/gguf_file.h"
#include "common/wire/wire.h"
#include "coordinator/model_context.h"
#include "coordinator/worker_pool.h"
#include "fuzz/fuzz_target.h"
#include "fuzz/message_records.h"
#include "loader/client/loader_client.h"
#include "loader/weight_service.h"
#include "worker/step_validation.h"
#include "zmq.hpp"

namespace chord::fuzz {
namespace {

namespace pb = wire::pb;

constexpr char kModelSha256[] = "0123456789abcdef";

// Process-wide fixtures: an inproc socket pair and the model the receivers serve.
struct Fixture {
  zmq::context_t context{1};
  zmq::socket_t sender{context, zmq::socket_type::pair};
  zmq::socket_t receiver{context, zmq::socket_type::pair};
  std::unique_ptr<gguf::GgufFile> model;  // fuzz/data/tiny-model.gguf, with tensor data
  std::unique_ptr<coordinator::ModelContext> context_of_model;

  Fixture() {
    // Warnings about bad messages are the expected outcome: keep them quiet,
    // and protobuf's complaints about invalid UTF-8 in string fields too.
    log::Init(log::Level::kError, /*json=*/false);
    google::protobuf::SetLogHandler(nullptr);
    receiver.bind("inproc://chord-fuzz");
    sender.connect("inproc://chord-fuzz");
    absl::StatusOr<std::unique_ptr<gguf::GgufFile>> file =
        gguf::GgufFile::Open(DataPath("tiny-model.gguf"));
    FUZZ_CHECK(file.ok());
    model = *std::move(file);
    const std::span<const uint8_t> header_bytes = model->bytes().first(model->data_offset());
    absl::StatusOr<std::unique_ptr<gguf::GgufFile>> header = gguf::GgufFile::ParseHeader(
        std::string(reinterpret_cast<const char*>(header_bytes.data()), header_bytes.size()));
    FUZZ_CHECK(header.ok());
    absl::StatusOr<std::unique_ptr<coordinator::ModelContext>> made =
        coordinator::MakeModelContext(kModelSha256, "tiny-model.gguf", *std::move(header));
    FUZZ_CHECK(made.ok());
    context_of_model = *std::move(made);
  }
};

Fixture& GetFixture() {
  static Fixture* const fixture = new Fixture;
  return *fixture;
}

// Sends one record's frames and receives them as the process would.
absl::StatusOr<std::optional<wire::Message>> Transmit(Fixture& f, ByteReader& input, bool* router,
                                                      uint8_t* peer) {
  const uint8_t flags = input.Byte();
  const std::string_view envelope = input.Bytes(input.U16());
  const std::string_view payload = input.Bytes(input.U16());
  *router = flags & kRecordIdentity;
  *peer = flags >> 4;
  std::vector<zmq::const_buffer> frames;
  const std::string identity = std::string("peer") + static_cast<char>('a' + *peer);
  if (*router) frames.push_back(zmq::buffer(identity));
  frames.push_back(zmq::buffer(envelope.data(), envelope.size()));
  if (flags & kRecordPayload) frames.push_back(zmq::buffer(payload.data(), payload.size()));
  if (flags & kRecordExtraFrame) frames.push_back(zmq::const_buffer());
  for (size_t i = 0; i < frames.size(); ++i) {
    const zmq::send_flags more = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
    FUZZ_CHECK(f.sender.send(frames[i], more).has_value());
  }
  return wire::Receive(f.receiver, *router);
}

// The stage a StepHeader is checked against; the slots' lengths persist.
struct WorkerDataState {
  StepLimits limits;
  std::vector<int64_t> slot_lengths;

  explicit WorkerDataState(const ModelConfig& config) {
    limits.plan_version = 1;
    limits.stage_ready = true;
    limits.n_embd = config.n_embd;
    limits.n_vocab = config.n_vocab;
    limits.kv_slots = 4;
    limits.n_ctx = 64;
    limits.max_step_tokens = 256;
    slot_lengths.assign(static_cast<size_t>(limits.kv_slots), 0);
  }
};

void ToWorkerData(WorkerDataState& state, const wire::Message& message, uint8_t peer) {
  const pb::Envelope& envelope = message.envelope;
  if (envelope.has_free_slots()) {  // as StageExecutor::FreeSlots
    for (uint32_t slot : envelope.free_slots().slots()) {
      if (slot < state.slot_lengths.size()) state.slot_lengths[slot] = 0;
    }
    return;
  }
  if (!envelope.has_step()) return;
  // Odd peers play the first stage (no payload), even ones a later stage.
  state.limits.first_stage = peer & 1;
  const absl::StatusOr<int64_t> total = ValidateStep(envelope.step(), state.limits, state.slot_lengths);
  if (!total.ok()) return;
  int64_t counted = 0;
  for (const pb::SequenceChunk& chunk : envelope.step().sequences()) {
    FUZZ_CHECK(chunk.slot() < state.slot_lengths.size());
    FUZZ_CHECK(static_cast<int64_t>(chunk.first_position()) + chunk.token_ids_size() <=
               state.limits.n_ctx);
    for (uint32_t token : chunk.token_ids()) FUZZ_CHECK(token < state.limits.n_vocab);
    counted += chunk.token_ids_size();
  }
  FUZZ_CHECK(*total == counted && *total > 0 && *total <= state.limits.max_step_tokens);
  std::vector<float> x;
  if (!ReadStepPayload(message, state.limits, *total, &x).ok()) return;
  FUZZ_CHECK(x.size() == (state.limits.first_stage ? 0 : static_cast<size_t>(*total * state.limits.n_embd)));
  // What the stage's KV cache then holds, as StageExecutor records it.
  for (const pb::SequenceChunk& chunk : envelope.step().sequences()) {
    state.slot_lengths[chunk.slot()] = chunk.first_position() + chunk.token_ids_size();
  }
}

void ToCoordinator(coordinator::WorkerPool& pool, const wire::Message& message,
                   coordinator::Clock::time_point now, int64_t n_layer) {
  std::vector<coordinator::OutgoingControl> out = pool.OnMessage(message.identity, message.envelope, now);
  const std::vector<coordinator::OutgoingControl> ticked = pool.Tick(now);
  out.insert(out.end(), ticked.begin(), ticked.end());
  for (const coordinator::OutgoingControl& control : out) {
    FUZZ_CHECK(control.envelope.IsInitialized());
    if (control.envelope.has_assign_layers()) {
      FUZZ_CHECK(pool.n_stages() > 0);  // a plan places every layer somewhere
      const pb::AssignLayers& assign = control.envelope.assign_layers();
      FUZZ_CHECK(assign.first_layer() <= assign.end_layer());
      FUZZ_CHECK(static_cast<int64_t>(assign.end_layer()) <= n_layer);
      FUZZ_CHECK(assign.stage_index() < assign.n_stages() || assign.first_layer() == assign.end_layer());
    }
  }
  if (pool.serving()) FUZZ_CHECK(pool.Capacity().ok());
  chord::v1::ServerInfo info;
  pool.FillServerInfo(&info);
}

void ToLoader(Fixture& f, const wire::Message& message) {
  const pb::Envelope& envelope = message.envelope;
  if (envelope.has_hello()) (void)wire::CheckHello(envelope.hello(), kModelSha256);
  if (!envelope.has_tensor_request()) return;
  const pb::TensorRequest& request = envelope.tensor_request();
  const absl::StatusOr<const gguf::TensorInfo*> tensor = loader::ValidateTensorRequest(*f.model, request);
  if (!tensor.ok()) return;
  FUZZ_CHECK(request.length() > 0 && request.offset() + request.length() <= (*tensor)->n_bytes);
  // The loader sends these bytes: reading them must stay inside the mapping.
  volatile uint8_t first = (*tensor)->data[request.offset()];
  volatile uint8_t last = (*tensor)->data[request.offset() + request.length() - 1];
  (void)first;
  (void)last;
}

void ToLoaderClient(const wire::Message& message) {
  const pb::Envelope& envelope = message.envelope;
  if (envelope.has_hello()) (void)wire::CheckHello(envelope.hello(), kModelSha256);
  if (envelope.has_tensor_chunk()) (void)wire::FromProto(envelope.tensor_chunk().status());
  if (!envelope.has_model_info_reply()) return;
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> header = ParseModelInfoReply(envelope.model_info_reply());
  if (!header.ok()) return;
  FUZZ_CHECK(static_cast<size_t>(envelope.model_info_reply().tensors_size()) == (*header)->tensors().size());
  (void)coordinator::MakeModelContext(envelope.model_info_reply().model_sha256(),
                                      envelope.model_info_reply().file_name(), *std::move(header));
}

void ToWorkerControl(const wire::Message& message) {
  const pb::Envelope& envelope = message.envelope;
  if (envelope.has_hello()) (void)wire::CheckHello(envelope.hello(), kModelSha256);
  if (envelope.has_register_reply()) (void)wire::FromProto(envelope.register_reply().status());
  if (envelope.has_status()) (void)wire::FromProto(envelope.status());
}

int Run(const uint8_t* data, size_t size) {
  Fixture& f = GetFixture();
  ByteReader input(data, size);
  const auto receiver = static_cast<Receiver>(input.Byte() % static_cast<uint8_t>(Receiver::kCount));
  const ModelConfig& config = f.context_of_model->config;
  WorkerDataState worker_data(config);
  coordinator::WorkerPoolOptions options;
  options.kv_slots = 4;
  options.n_ctx = 64;
  options.loader_endpoint = "ipc:///tmp/chord-fuzz-loader";
  coordinator::WorkerPool pool(options, *f.context_of_model);
  coordinator::Clock::time_point now{};  // a fixed start: runs are reproducible
  for (int i = 0; i < kMaxRecords && !input.empty(); ++i) {
    bool router = false;
    uint8_t peer = 0;
    absl::StatusOr<std::optional<wire::Message>> received = Transmit(f, input, &router, &peer);
    if (!received.ok()) {
      FUZZ_CHECK(received.status().code() == absl::StatusCode::kDataLoss);
      continue;
    }
    FUZZ_CHECK(received->has_value());  // the frames were sent before Receive
    const wire::Message& message = **received;
    // Every Status field converts to an absl::Status, whatever its code.
    if (message.envelope.has_status()) (void)wire::FromProto(message.envelope.status());
    now += std::chrono::milliseconds(250 * (peer + 1));  // lets workers time out now and then
    switch (receiver) {
      case Receiver::kWorkerData: ToWorkerData(worker_data, message, peer); break;
      case Receiver::kCoordinator: ToCoordinator(pool, message, now, config.n_layer); break;
      case Receiver::kLoader: ToLoader(f, message); break;
      case Receiver::kLoaderClient: ToLoaderClient(message); break;
      case Receiver::kWorkerControl: ToWorkerControl(message); break;
      case Receiver::kCount: break;
    }
  }
  return 0;
}

}  // namespace

int FuzzMessage(const uint8_t* data, size_t size) { return Run(data, size); }

}  // namespace chord::fuzz

CHORD_FUZZ_ENTRY(chord::fuzz::FuzzMessage)
