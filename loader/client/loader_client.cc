#include "loader/client/loader_client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <queue>
#include <thread>
#include <utility>
#include <vector>

#include "common/base/log.h"
#include "common/base/status.h"
#include "common/wire/wire.h"

namespace chord {
namespace {

namespace pb = wire::pb;
using Clock = std::chrono::steady_clock;

// Errors a retry cannot fix: the request itself is wrong, or the loader refused us.
bool IsFinal(absl::StatusCode code) {
  return code == absl::StatusCode::kNotFound || code == absl::StatusCode::kInvalidArgument ||
         code == absl::StatusCode::kFailedPrecondition;
}

absl::Status ValidateOptions(const LoaderClientOptions& options) {
  if (options.chunk_bytes == 0 || options.chunk_bytes > kMaxTensorChunkBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("chunk_bytes %d is not in [1, %d]",
                                                      options.chunk_bytes, kMaxTensorChunkBytes));
  }
  if (options.max_outstanding < 1 || options.max_attempts < 1 || options.timeout.count() <= 0) {
    return absl::InvalidArgumentError("max_outstanding, max_attempts and timeout must be positive");
  }
  return absl::OkStatus();
}

// The reply's tensor table must be the one its own metadata declares.
absl::Status CheckTensorTable(const pb::ModelInfoReply& reply, const gguf::GgufFile& header) {
  const std::vector<gguf::TensorInfo>& tensors = header.tensors();
  if (static_cast<size_t>(reply.tensors_size()) != tensors.size()) {
    return absl::DataLossError(absl::StrFormat("the loader lists %d tensors, its metadata %d",
                                               reply.tensors_size(), tensors.size()));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const pb::TensorDescriptor& listed = reply.tensors(static_cast<int>(i));
    const gguf::TensorInfo& parsed = tensors[i];
    bool same = listed.name() == parsed.name &&
                listed.type() == static_cast<uint32_t>(parsed.type) &&
                listed.n_bytes() == parsed.n_bytes &&
                static_cast<size_t>(listed.dims_size()) == parsed.dims.size();
    for (size_t d = 0; same && d < parsed.dims.size(); ++d) {
      same = listed.dims(static_cast<int>(d)) == static_cast<uint64_t>(parsed.dims[d]);
    }
    if (!same) {
      return absl::DataLossError(absl::StrCat("tensor ", i, " (", listed.name(),
                                              ") differs between the loader's list and metadata"));
    }
  }
  return absl::OkStatus();
}

class LoaderClientImpl final : public LoaderClient {
 public:
  LoaderClientImpl(zmq::socket_t socket, std::string endpoint, const LoaderClientOptions& options)
      : socket_(std::move(socket)), endpoint_(std::move(endpoint)), options_(options) {}
  ~LoaderClientImpl() override { UnmapLocal(); }

  absl::Status Handshake(const std::string& expected_model_sha256);
  absl::StatusOr<LoaderModelInfo> FetchModelInfo() override;
  absl::Status FetchTensor(const gguf::TensorInfo& info, uint8_t* out) override {
    const gguf::TensorRead read{&info, out};
    return FetchTensors(std::span<const gguf::TensorRead>(&read, 1), nullptr);
  }
  absl::Status FetchTensors(std::span<const gguf::TensorRead> reads,
                            const std::atomic<bool>* cancel) override;
  uint64_t bytes_received() const override { return bytes_received_; }
  absl::Status RequestShutdown(const std::string& reason) override {
    pb::Envelope envelope;
    envelope.mutable_shutdown()->set_reason(reason);
    socket_.set(zmq::sockopt::linger, 1000);  // the message must survive the socket's close
    return SendEnvelope(envelope);
  }

 private:
  struct Chunk {
    size_t read = 0;  // which TensorRead
    uint64_t offset = 0;
    uint64_t length = 0;
    int attempts = 0;
  };
  struct InFlight {
    size_t chunk = 0;
    Clock::time_point deadline;
  };
  using RetryAt = std::pair<Clock::time_point, size_t>;  // (ready at, chunk)
  using RetryQueue = std::priority_queue<RetryAt, std::vector<RetryAt>, std::greater<>>;

  // One message, or nullopt once `deadline` passes. Malformed frames are dropped.
  absl::StatusOr<std::optional<wire::Message>> ReceiveUntil(Clock::time_point deadline);
  absl::Status SendEnvelope(const pb::Envelope& envelope);
  absl::StatusOr<LoaderModelInfo> BuildModelInfo(const pb::ModelInfoReply& reply);
  // Opens the loader's file when it is on this host (see LoaderClientOptions::local_reads).
  void MapLocal(const pb::ModelInfoReply& reply);
  void UnmapLocal();
  Clock::duration Backoff(int attempts) const;
  void SendChunkRequest(const gguf::TensorInfo& info, size_t index, Chunk& chunk,
                        std::map<uint64_t, InFlight>& in_flight);
  absl::Status CheckReads(std::span<const gguf::TensorRead> reads) const;
  // Copies a verified chunk into `out`; DATA_LOSS when it is not what was asked for.
  absl::Status AcceptChunk(const gguf::TensorInfo& info, const Chunk& chunk,
                           const wire::Message& message, uint8_t* out);
  // Schedules another attempt, or returns `error` once the chunk is out of attempts.
  absl::Status Retry(size_t index, const Chunk& chunk, const absl::Status& error,
                     RetryQueue& retries) const;

  zmq::socket_t socket_;
  const std::string endpoint_;
  const LoaderClientOptions options_;
  std::string model_sha256_;
  uint64_t next_request_id_ = 1;
  uint64_t bytes_received_ = 0;
  int local_fd_ = -1;  // the loader's file, read with pread; -1: payloads
  uint64_t local_size_ = 0;
  uint64_t data_offset_ = 0;  // where tensor data starts in that file
};

absl::StatusOr<std::optional<wire::Message>> LoaderClientImpl::ReceiveUntil(
    Clock::time_point deadline) {
  while (true) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() < 0) return std::optional<wire::Message>();
    zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 1, left);
    } catch (const zmq::error_t& error) {
      if (error.num() == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("poll: ", error.what()));
    }
    if (!(items[0].revents & ZMQ_POLLIN)) {
      if (Clock::now() >= deadline) return std::optional<wire::Message>();
      continue;
    }
    auto received = wire::Receive(socket_, /*router=*/false, /*dont_wait=*/true);
    if (received.ok()) {
      if (received->has_value()) return received;
      continue;
    }
    if (received.status().code() != absl::StatusCode::kDataLoss) return received.status();
    log::Warn("loader client: dropped a message from %s: %s", endpoint_,
              received.status().message());
  }
}

absl::Status LoaderClientImpl::SendEnvelope(const pb::Envelope& envelope) {
  return wire::Send(socket_, envelope, {}, {}, /*dont_wait=*/true);
}

absl::Status LoaderClientImpl::Handshake(const std::string& expected_model_sha256) {
  pb::Envelope hello;
  *hello.mutable_hello() = wire::MakeHello(options_.role, options_.node_id, expected_model_sha256);
  RETURN_IF_ERROR(SendEnvelope(hello));
  const Clock::time_point deadline = Clock::now() + options_.timeout;
  while (true) {
    ASSIGN_OR_RETURN(std::optional<wire::Message> message, ReceiveUntil(deadline));
    if (!message.has_value()) {
      return absl::UnavailableError(absl::StrFormat("loader %s did not answer the Hello in %d ms",
                                                    endpoint_, options_.timeout.count()));
    }
    if (!message->envelope.has_hello()) continue;
    const pb::Hello& reply = message->envelope.hello();
    RETURN_IF_ERROR(wire::CheckHello(reply, expected_model_sha256));
    if (reply.role() != "loader" || reply.model_sha256().empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(endpoint_, " is a '", reply.role(), "', not a loader serving a model"));
    }
    model_sha256_ = reply.model_sha256();
    return absl::OkStatus();
  }
}

Clock::duration LoaderClientImpl::Backoff(int attempts) const {
  const int shift = std::clamp(attempts - 1, 0, 20);
  return std::min<Clock::duration>(std::chrono::milliseconds(10) * (1 << shift), options_.timeout);
}

absl::StatusOr<LoaderModelInfo> LoaderClientImpl::FetchModelInfo() {
  pb::Envelope request;
  request.mutable_model_info_request();
  for (int attempt = 1; attempt <= options_.max_attempts; ++attempt) {
    RETURN_IF_ERROR(SendEnvelope(request));
    const Clock::time_point deadline = Clock::now() + options_.timeout;
    while (true) {
      ASSIGN_OR_RETURN(std::optional<wire::Message> message, ReceiveUntil(deadline));
      if (!message.has_value()) break;
      // Anything else is a late answer to an earlier request.
      if (message->envelope.has_model_info_reply()) {
        return BuildModelInfo(message->envelope.model_info_reply());
      }
    }
    log::Warn("loader client: no model info from %s (attempt %d of %d)", endpoint_, attempt,
              options_.max_attempts);
    std::this_thread::sleep_for(Backoff(attempt));
  }
  return absl::UnavailableError(absl::StrFormat("loader %s sent no model info after %d attempts",
                                                endpoint_, options_.max_attempts));
}

void LoaderClientImpl::MapLocal(const pb::ModelInfoReply& reply) {
  UnmapLocal();
  if (!options_.local_reads || !endpoint_.starts_with("ipc://") || reply.file_path().empty())
    return;
  const int fd = open(reply.file_path().c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < reply.data_offset()) {
    log::Info("loader client: cannot read %s (%s); weights come over the socket", reply.file_path(),
              std::strerror(errno));
    if (fd >= 0) close(fd);
    return;
  }
  local_fd_ = fd;
  local_size_ = static_cast<uint64_t>(st.st_size);
  data_offset_ = reply.data_offset();
  log::Debug("loader client: reading weights from %s (same host), checksums from %s",
             reply.file_path(), endpoint_);
}

void LoaderClientImpl::UnmapLocal() {
  if (local_fd_ >= 0) close(local_fd_);
  local_fd_ = -1;
}

// Reads [at, at + length) of `fd` into `out`; false on an error or a short file.
bool ReadFully(int fd, uint64_t at, uint64_t length, uint8_t* out) {
  while (length > 0) {
    const ssize_t n = pread(fd, out, length, static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    out += n;
    at += static_cast<uint64_t>(n);
    length -= static_cast<uint64_t>(n);
  }
  return true;
}

absl::StatusOr<LoaderModelInfo> LoaderClientImpl::BuildModelInfo(const pb::ModelInfoReply& reply) {
  if (reply.has_status()) RETURN_IF_ERROR(wire::FromProto(reply.status()));
  if (reply.model_sha256() != model_sha256_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "loader ", endpoint_, " now serves model ", reply.model_sha256(), ", not ", model_sha256_));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<gguf::GgufFile> header, ParseModelInfoReply(reply));
  MapLocal(reply);
  LoaderModelInfo info;
  info.model_sha256 = reply.model_sha256();
  info.file_name = reply.file_name();
  info.header = std::move(header);
  return info;
}

void LoaderClientImpl::SendChunkRequest(const gguf::TensorInfo& info, size_t index, Chunk& chunk,
                                        std::map<uint64_t, InFlight>& in_flight) {
  const uint64_t id = next_request_id_++;
  pb::Envelope envelope;
  pb::TensorRequest* request = envelope.mutable_tensor_request();
  request->set_request_id(id);
  request->set_name(info.name);
  request->set_offset(chunk.offset);
  request->set_length(chunk.length);
  request->set_checksum_only(local_fd_ >= 0);
  ++chunk.attempts;
  in_flight[id] = InFlight{index, Clock::now() + options_.timeout};
  // A send the socket cannot take now is left to time out like a lost reply.
  const absl::Status sent = SendEnvelope(envelope);
  if (!sent.ok())
    log::Warn("loader client: request for %s not sent: %s", info.name, sent.message());
}

absl::Status LoaderClientImpl::AcceptChunk(const gguf::TensorInfo& info, const Chunk& chunk,
                                           const wire::Message& message, uint8_t* out) {
  const pb::TensorChunk& reply = message.envelope.tensor_chunk();
  if (reply.has_status()) RETURN_IF_ERROR(wire::FromProto(reply.status()));
  if (local_fd_ >= 0 && !message.has_payload && reply.name() == info.name &&
      reply.offset() == chunk.offset && reply.length() == chunk.length) {
    // pread copies straight from the page cache into place: no socket copies,
    // and the file's pages do not count in this process's memory.
    const uint64_t at = data_offset_ + info.offset + chunk.offset;
    uint8_t* into = out + chunk.offset;
    if (at > local_size_ || chunk.length > local_size_ - at ||
        !ReadFully(local_fd_, at, chunk.length, into) ||
        XXH3_64bits(into, chunk.length) != reply.xxh3_64()) {
      UnmapLocal();  // not the loader's bytes after all: use payloads from now on
      return absl::DataLossError(absl::StrFormat("chunk [%d, +%d) of %s differs in the local file",
                                                 chunk.offset, chunk.length, info.name));
    }
    bytes_received_ += chunk.length;
    return absl::OkStatus();
  }
  if (reply.name() != info.name || reply.offset() != chunk.offset ||
      reply.length() != chunk.length || !message.has_payload ||
      message.payload.size() != chunk.length) {
    return absl::DataLossError(
        absl::StrFormat("chunk of %s: asked for [%d, +%d), got %s [%d, +%d) with %d payload bytes",
                        info.name, chunk.offset, chunk.length, reply.name(), reply.offset(),
                        reply.length(), message.has_payload ? message.payload.size() : 0));
  }
  if (XXH3_64bits(message.payload.data(), message.payload.size()) != reply.xxh3_64()) {
    return absl::DataLossError(absl::StrFormat("chunk [%d, +%d) of %s fails its checksum",
                                               chunk.offset, chunk.length, info.name));
  }
  std::memcpy(out + chunk.offset, message.payload.data(), chunk.length);
  return absl::OkStatus();
}

absl::Status LoaderClientImpl::Retry(size_t index, const Chunk& chunk, const absl::Status& error,
                                     RetryQueue& retries) const {
  if (chunk.attempts >= options_.max_attempts) {
    return absl::Status(error.code(), absl::StrFormat("%s (gave up after %d attempts)",
                                                      error.message(), chunk.attempts));
  }
  log::Warn("loader client: %s; asking again (attempt %d of %d)", error.message(),
            chunk.attempts + 1, options_.max_attempts);
  retries.emplace(Clock::now() + Backoff(chunk.attempts), index);
  return absl::OkStatus();
}

absl::Status LoaderClientImpl::CheckReads(std::span<const gguf::TensorRead> reads) const {
  for (const gguf::TensorRead& read : reads) {
    if (read.info == nullptr || (read.info->n_bytes > 0 && read.out == nullptr))
      return absl::InvalidArgumentError("a tensor read needs a tensor and an output buffer");
  }
  return absl::OkStatus();
}

// The chunks of every tensor share one credit window, so that small tensors
// do not each cost a round trip with the pipe drained.
absl::Status LoaderClientImpl::FetchTensors(std::span<const gguf::TensorRead> reads,
                                            const std::atomic<bool>* cancel) {
  RETURN_IF_ERROR(CheckReads(reads));
  std::vector<Chunk> chunks;
  for (size_t r = 0; r < reads.size(); ++r) {
    const uint64_t n = reads[r].info->n_bytes;
    for (uint64_t offset = 0; offset < n; offset += options_.chunk_bytes) {
      chunks.push_back(Chunk{r, offset, std::min(options_.chunk_bytes, n - offset), 0});
    }
  }
  std::map<uint64_t, InFlight> in_flight;  // by request_id; replies to anything else are stale
  RetryQueue retries;
  size_t next_fresh = 0;
  size_t done = 0;
  const size_t window = static_cast<size_t>(options_.max_outstanding);
  while (done < chunks.size()) {
    // Replies still in flight are dropped as stale by the next fetch.
    if (cancel != nullptr && cancel->load()) return absl::CancelledError("fetch cancelled");
    for (auto it = in_flight.begin(); it != in_flight.end();) {
      if (it->second.deadline > Clock::now()) {
        ++it;
        continue;
      }
      const size_t index = it->second.chunk;
      it = in_flight.erase(it);
      const absl::Status timed_out = absl::UnavailableError(absl::StrFormat(
          "no reply from %s for chunk [%d, +%d) of %s in %d ms", endpoint_, chunks[index].offset,
          chunks[index].length, reads[chunks[index].read].info->name, options_.timeout.count()));
      RETURN_IF_ERROR(Retry(index, chunks[index], timed_out, retries));
    }
    while (in_flight.size() < window) {
      size_t index;
      if (!retries.empty() && retries.top().first <= Clock::now()) {
        index = retries.top().second;
        retries.pop();
      } else if (next_fresh < chunks.size()) {
        index = next_fresh++;
      } else {
        break;
      }
      SendChunkRequest(*reads[chunks[index].read].info, index, chunks[index], in_flight);
    }
    Clock::time_point wake = Clock::now() + options_.timeout;
    for (const auto& [id, request] : in_flight) wake = std::min(wake, request.deadline);
    if (!retries.empty() && in_flight.size() < window) wake = std::min(wake, retries.top().first);
    ASSIGN_OR_RETURN(std::optional<wire::Message> message, ReceiveUntil(wake));
    if (!message.has_value() || !message->envelope.has_tensor_chunk()) continue;
    if (message->has_payload) bytes_received_ += message->payload.size();
    const auto found = in_flight.find(message->envelope.tensor_chunk().request_id());
    if (found == in_flight.end()) continue;  // a late reply to a request already re-asked
    const size_t index = found->second.chunk;
    in_flight.erase(found);
    const gguf::TensorRead& read = reads[chunks[index].read];
    const absl::Status accepted = AcceptChunk(*read.info, chunks[index], *message, read.out);
    if (accepted.ok()) {
      ++done;
    } else if (absl::IsUnauthenticated(accepted)) {
      // The loader does not know us: it restarted. Say Hello again (replies
      // to the other requests in flight are lost with it: they time out and
      // are asked again), then ask for this chunk again.
      log::Warn("loader client: %s forgot this client (restarted?); saying Hello again", endpoint_);
      RETURN_IF_ERROR(Handshake(model_sha256_));
      RETURN_IF_ERROR(Retry(index, chunks[index], accepted, retries));
    } else if (IsFinal(accepted.code())) {
      return accepted;
    } else {
      RETURN_IF_ERROR(Retry(index, chunks[index], accepted, retries));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<gguf::GgufFile>> ParseModelInfoReply(
    const pb::ModelInfoReply& reply) {
  if (reply.has_status()) RETURN_IF_ERROR(wire::FromProto(reply.status()));
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> header =
      gguf::GgufFile::ParseHeader(reply.metadata_gguf());
  if (!header.ok()) {
    return absl::DataLossError(
        absl::StrCat("the loader's model metadata does not parse: ", header.status().message()));
  }
  RETURN_IF_ERROR(CheckTensorTable(reply, **header));
  return header;
}

absl::StatusOr<std::unique_ptr<LoaderClient>> LoaderClient::Connect(
    zmq::context_t& context, const std::string& endpoint, const std::string& expected_model_sha256,
    const LoaderClientOptions& options) {
  RETURN_IF_ERROR(ValidateOptions(options));
  zmq::socket_t socket(context, zmq::socket_type::dealer);
  try {
    const int hwm = 2 * options.max_outstanding + 16;
    socket.set(zmq::sockopt::linger, 0);
    socket.set(zmq::sockopt::sndhwm, hwm);
    socket.set(zmq::sockopt::rcvhwm, hwm);
    RETURN_IF_ERROR(wire::SecureClient(socket, options.curve, options.curve.loader_public_key));
    socket.connect(endpoint);
  } catch (const zmq::error_t& error) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot connect to loader ", endpoint, ": ", error.what()));
  }
  auto client = std::make_unique<LoaderClientImpl>(std::move(socket), endpoint, options);
  RETURN_IF_ERROR(client->Handshake(expected_model_sha256));
  return std::unique_ptr<LoaderClient>(std::move(client));
}

}  // namespace chord
