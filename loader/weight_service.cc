#include "loader/weight_service.h"

#include <openssl/evp.h>
#include <xxhash.h>

#include <cerrno>
#include <chrono>
#include <utility>

#include "absl/strings/escaping.h"
#include "common/base/log.h"
#include "common/base/status.h"

namespace chord::loader {
namespace {

namespace pb = wire::pb;

// The payload frames borrow the file's mapping, which outlives the context.
void NoFree(void* /*data*/, void* /*hint*/) {}

std::string PeerName(const std::string& identity) { return absl::BytesToHexString(identity); }

constexpr auto kPollInterval = std::chrono::milliseconds(100);
constexpr auto kTotalsInterval = std::chrono::seconds(10);
constexpr int kMessagesPerWakeup = 64;

}  // namespace

absl::StatusOr<std::string> Sha256Hex(std::span<const uint8_t> bytes) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(),
                                                                  &EVP_MD_CTX_free);
  if (context == nullptr || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("cannot start a SHA-256 digest");
  }
  constexpr size_t kStep = size_t{64} << 20;
  for (size_t done = 0; done < bytes.size(); done += kStep) {
    const size_t n = std::min(kStep, bytes.size() - done);
    if (EVP_DigestUpdate(context.get(), bytes.data() + done, n) != 1) {
      return absl::InternalError("SHA-256 update failed");
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(context.get(), digest, &length) != 1) {
    return absl::InternalError("SHA-256 final failed");
  }
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), length));
}

absl::StatusOr<std::unique_ptr<WeightService>> WeightService::Create(
    zmq::context_t& context, const gguf::GgufFile& file, std::string model_sha256,
    std::string file_name, const WeightServiceOptions& options) {
  if (!file.tensors().empty() && file.tensors().front().data == nullptr) {
    return absl::InvalidArgumentError("the weight service needs a mapped file (GgufFile::Open)");
  }
  zmq::socket_t socket(context, zmq::socket_type::router);
  std::string endpoint;
  try {
    socket.set(zmq::sockopt::linger, 0);
    socket.set(zmq::sockopt::sndhwm, options.send_hwm);
    socket.set(zmq::sockopt::rcvhwm, options.receive_hwm);
    socket.set(zmq::sockopt::maxmsgsize, options.max_message_bytes);
    // Unroutable replies fail instead of vanishing, so a departed peer is logged.
    socket.set(zmq::sockopt::router_mandatory, 1);
    RETURN_IF_ERROR(wire::SecureServer(socket, options.curve));
    socket.bind(options.bind);
    endpoint = socket.get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& error) {
    return absl::UnavailableError(
        absl::StrCat("cannot bind the loader to ", options.bind, ": ", error.what()));
  }
  std::unique_ptr<WeightService> service(new WeightService(
      file, std::move(model_sha256), std::move(file_name), options, std::move(socket)));
  service->endpoint_ = std::move(endpoint);
  return service;
}

WeightService::WeightService(const gguf::GgufFile& file, std::string model_sha256,
                             std::string file_name, const WeightServiceOptions& options,
                             zmq::socket_t socket)
    : file_(file),
      model_sha256_(std::move(model_sha256)),
      file_name_(std::move(file_name)),
      node_id_(options.node_id),
      file_path_(options.file_path),
      max_bytes_per_second_(options.max_bytes_per_second),
      curve_(options.curve),
      socket_(std::move(socket)) {}

std::chrono::milliseconds WeightService::SendPaced() {
  // The link takes one chunk at a time: a chunk of n bytes leaves n / rate
  // seconds after the link became free (or after it arrived, if later).
  while (!paced_.empty()) {
    const Clock::time_point now = Clock::now();
    const PacedChunk& next = paced_.front();
    const auto transfer = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
        static_cast<double>(next.payload.size()) / static_cast<double>(max_bytes_per_second_)));
    const Clock::time_point due = std::max(link_free_at_, next.queued_at) + transfer;
    if (due > now) {
      return std::max(std::chrono::milliseconds(1),
                      std::chrono::ceil<std::chrono::milliseconds>(due - now));
    }
    SendChunk(next.identity, next.chunk,
              next.send_payload ? next.payload : std::span<const uint8_t>());
    link_free_at_ = due;
    paced_.pop_front();
  }
  return kPollInterval;
}

absl::Status WeightService::Run() {
  auto next_totals = std::chrono::steady_clock::now() + kTotalsInterval;
  while (!stop_.load()) {
    const std::chrono::milliseconds wait = std::min(SendPaced(), kPollInterval);
    zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 1, wait);
    } catch (const zmq::error_t& error) {
      if (error.num() == EINTR) continue;  // a signal: look at stop_ again
      return absl::UnavailableError(absl::StrCat("loader poll: ", error.what()));
    }
    for (int i = 0; i < kMessagesPerWakeup && (items[0].revents & ZMQ_POLLIN); ++i) {
      // The identity frame first, so that a malformed rest can be blamed on its sender.
      zmq::message_t identity_frame;
      try {
        if (!socket_.recv(identity_frame, zmq::recv_flags::dontwait)) break;
      } catch (const zmq::error_t& error) {
        if (error.num() == EINTR) break;
        return absl::UnavailableError(absl::StrCat("loader receive: ", error.what()));
      }
      const std::string identity = identity_frame.to_string();
      if (!identity_frame.more()) {
        Drop(identity, "a message with no body");
        continue;
      }
      auto received = wire::Receive(socket_, /*router=*/false);
      if (!received.ok()) {
        Drop(identity, received.status().message());
        continue;
      }
      if (!received->has_value()) continue;
      wire::Message& message = **received;
      message.identity = identity;
      Handle(message);
    }
    if (std::chrono::steady_clock::now() >= next_totals) {
      LogTotals();
      next_totals = std::chrono::steady_clock::now() + kTotalsInterval;
    }
  }
  LogTotals();
  return absl::OkStatus();
}

void WeightService::Handle(wire::Message& message) {
  const std::string& identity = message.identity;
  const pb::Envelope& envelope = message.envelope;
  if (message.has_payload) {
    Drop(identity, "requests carry no payload frame");
    return;
  }
  auto known = accepted_.find(identity);
  if (known != accepted_.end() && !known->second) return;  // refused: ignored from then on
  if (envelope.has_hello()) {
    HandleHello(identity, envelope.hello());
    return;
  }
  if (envelope.has_shutdown() && coordinators_.contains(identity)) {
    // On plaintext links the Hello's role is all there is (single-node
    // loopback); with CURVE only the coordinator's own key may stop the loader.
    if (curve_.enabled() && (curve_.coordinator_public_key.empty() ||
                             message.peer_key != curve_.coordinator_public_key)) {
      Drop(identity, "Shutdown from a peer that does not hold the coordinator's CURVE key");
      return;
    }
    log::Info("loader: shutdown asked by %s: %s", PeerName(identity), envelope.shutdown().reason());
    RequestStop();
    return;
  }
  if (!envelope.has_model_info_request() && !envelope.has_tensor_request()) {
    Drop(identity, absl::StrCat("the loader does not serve body ", envelope.body_case()));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    ++stats_[PeerName(identity)].requests;
  }
  if (known == accepted_.end()) {
    // Answered rather than dropped, so that the peer learns why instead of timing out.
    // UNAUTHENTICATED tells the client to say Hello again: this is what a
    // worker sees after the loader restarted.
    const absl::Status refused =
        absl::UnauthenticatedError("this loader has had no Hello from you");
    pb::Envelope reply;
    if (envelope.has_model_info_request()) {
      *reply.mutable_model_info_reply()->mutable_status() = wire::ToProto(refused, node_id_);
    } else {
      pb::TensorChunk* chunk = reply.mutable_tensor_chunk();
      chunk->set_request_id(envelope.tensor_request().request_id());
      *chunk->mutable_status() = wire::ToProto(refused, node_id_);
    }
    log::Warn("loader: peer %s sent a request before its Hello", PeerName(identity));
    Reply(identity, reply);
    return;
  }
  if (envelope.has_model_info_request()) {
    HandleModelInfo(identity);
  } else {
    HandleTensorRequest(identity, envelope.tensor_request());
  }
}

void WeightService::HandleHello(const std::string& identity, const pb::Hello& hello) {
  pb::Envelope reply;
  *reply.mutable_hello() = wire::MakeHello("loader", node_id_, model_sha256_);
  const absl::Status checked = wire::CheckHello(hello, model_sha256_);
  if (!checked.ok()) {
    log::Warn("loader: refusing peer %s (%s): %s", PeerName(identity), hello.node_id(),
              checked.message());
    *reply.mutable_hello()->mutable_status() =
        wire::ToProto(absl::FailedPreconditionError(checked.message()), node_id_);
    accepted_[identity] = false;
  } else {
    log::Info("loader: peer %s connected (%s %s)", PeerName(identity), hello.role(),
              hello.node_id());
    accepted_[identity] = true;
    if (hello.role() == "coordinator") coordinators_.insert(identity);
  }
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_[PeerName(identity)].node_id = hello.node_id();
  }
  Reply(identity, reply);
}

void WeightService::HandleModelInfo(const std::string& identity) {
  pb::Envelope reply;
  pb::ModelInfoReply* info = reply.mutable_model_info_reply();
  info->set_model_sha256(model_sha256_);
  info->set_file_name(file_name_);
  info->set_file_path(file_path_);
  info->set_data_offset(file_.data_offset());
  const std::span<const uint8_t> header = file_.bytes().first(file_.data_offset());
  info->set_metadata_gguf(reinterpret_cast<const char*>(header.data()), header.size());
  for (const gguf::TensorInfo& tensor : file_.tensors()) {
    pb::TensorDescriptor* descriptor = info->add_tensors();
    descriptor->set_name(tensor.name);
    descriptor->set_type(static_cast<uint32_t>(tensor.type));
    for (int64_t dim : tensor.dims) descriptor->add_dims(static_cast<uint64_t>(dim));
    descriptor->set_n_bytes(tensor.n_bytes);
  }
  log::Debug("loader: model info to %s (%d header bytes)", PeerName(identity), header.size());
  Reply(identity, reply);
}

absl::StatusOr<const gguf::TensorInfo*> ValidateTensorRequest(const gguf::GgufFile& file,
                                                               const pb::TensorRequest& request) {
  const gguf::TensorInfo* tensor = file.FindTensor(request.name());
  if (tensor == nullptr) return absl::NotFoundError(absl::StrCat("no tensor ", request.name()));
  if (request.length() == 0 || request.length() > kMaxTensorChunkBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("length %d of %s is not in [1, %d]",
                                                      request.length(), request.name(),
                                                      kMaxTensorChunkBytes));
  }
  if (request.offset() > tensor->n_bytes || request.length() > tensor->n_bytes - request.offset()) {
    return absl::InvalidArgumentError(absl::StrFormat("range [%d, +%d) is outside %s (%d bytes)",
                                                      request.offset(), request.length(),
                                                      request.name(), tensor->n_bytes));
  }
  return tensor;
}

uint64_t WeightService::Checksum(const std::string& name, uint64_t offset,
                                 std::span<const uint8_t> bytes) {
  // Workers ask for the same chunks step after step (their chunk size is
  // fixed), so each chunk's checksum is computed once. Bounded: a peer asking
  // for ever-new ranges only resets the memo.
  constexpr size_t kMaxMemo = 1 << 20;
  ChunkKey key{name, offset, bytes.size()};
  if (const auto found = checksums_.find(key); found != checksums_.end()) return found->second;
  if (checksums_.size() >= kMaxMemo) checksums_.clear();
  const uint64_t sum = XXH3_64bits(bytes.data(), bytes.size());
  checksums_.emplace(std::move(key), sum);
  return sum;
}

void WeightService::HandleTensorRequest(const std::string& identity,
                                        const pb::TensorRequest& request) {
  pb::TensorChunk chunk;
  chunk.set_request_id(request.request_id());
  chunk.set_name(request.name());
  chunk.set_offset(request.offset());
  absl::StatusOr<const gguf::TensorInfo*> tensor = ValidateTensorRequest(file_, request);
  if (!tensor.ok()) {
    log::Warn("loader: peer %s: %s", PeerName(identity), tensor.status().message());
    *chunk.mutable_status() = wire::ToProto(tensor.status(), node_id_);
    SendChunk(identity, chunk, {});
    return;
  }
  const std::span<const uint8_t> payload((*tensor)->data + request.offset(), request.length());
  chunk.set_length(payload.size());
  chunk.set_xxh3_64(Checksum(request.name(), request.offset(), payload));
  const bool send_payload = !request.checksum_only();
  if (max_bytes_per_second_ > 0) {
    paced_.push_back(PacedChunk{identity, std::move(chunk), payload, send_payload, Clock::now()});
    return;
  }
  SendChunk(identity, chunk, send_payload ? payload : std::span<const uint8_t>());
}

void WeightService::SendChunk(const std::string& identity, const pb::TensorChunk& chunk,
                              std::span<const uint8_t> payload) {
  std::string envelope;
  {
    pb::Envelope message;
    *message.mutable_tensor_chunk() = chunk;
    if (!message.SerializeToString(&envelope)) {
      log::Error("loader: cannot serialize a tensor chunk");
      return;
    }
  }
  const auto more = zmq::send_flags::sndmore | zmq::send_flags::dontwait;
  const auto last = zmq::send_flags::dontwait;
  try {
    // With router_mandatory a full or departed peer fails on the first frame;
    // once it is accepted the remaining frames of the message follow.
    if (!socket_.send(zmq::buffer(identity), more)) {
      log::Warn("loader: peer %s is not reading; chunk %d dropped", PeerName(identity),
                chunk.request_id());
      return;
    }
    socket_.send(zmq::buffer(envelope), payload.empty() ? last : more);
    if (!payload.empty()) {
      zmq::message_t frame(const_cast<uint8_t*>(payload.data()), payload.size(), &NoFree);
      socket_.send(frame, last);
    }
  } catch (const zmq::error_t& error) {
    log::Warn("loader: cannot send to peer %s: %s", PeerName(identity), error.what());
    return;
  }
  std::lock_guard<std::mutex> lock(stats_mutex_);
  stats_[PeerName(identity)].bytes_sent += payload.size();
}

void WeightService::Reply(const std::string& identity, const pb::Envelope& envelope) {
  const absl::Status sent = wire::Send(socket_, envelope, {}, identity, /*dont_wait=*/true);
  if (!sent.ok()) log::Warn("loader: reply to %s lost: %s", PeerName(identity), sent.message());
}

void WeightService::Drop(const std::string& identity, absl::string_view why) {
  log::Warn("loader: dropped a message from peer %s: %s", PeerName(identity), why);
  std::lock_guard<std::mutex> lock(stats_mutex_);
  ++stats_[PeerName(identity)].dropped;
}

void WeightService::LogTotals() {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  uint64_t total = 0;
  for (const auto& [peer, stats] : stats_) total += stats.bytes_sent;
  if (total == logged_bytes_) return;
  logged_bytes_ = total;
  for (const auto& [peer, stats] : stats_) {
    log::Info("loader: peer %s (%s): %d requests, %d bytes sent, %d dropped", peer, stats.node_id,
              stats.requests, stats.bytes_sent, stats.dropped);
  }
}

std::map<std::string, PeerStats> WeightService::Stats() const {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  return stats_;
}

}  // namespace chord::loader
