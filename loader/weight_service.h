// The loader's weight service: serves one mapped GGUF file to many peers over a
// ZeroMQ ROUTER socket, as proto/PROTOCOL.md ("Loader") describes: Hello,
// ModelInfoRequest -> ModelInfoReply, TensorRequest -> TensorChunk + payload;
// a Shutdown from a coordinator peer stops Run().
//
// Payload frames point straight into the file's mapping (zero copy), so the
// GgufFile must outlive the ZeroMQ context the service's socket belongs to:
// ZeroMQ may still hold those frames in its queues until the context is closed.
//
// Every message is untrusted. A frame that does not parse, a body the loader
// does not serve, or a request from a peer that has not said Hello is logged
// with the peer's identity and dropped (or answered with a status); nothing a
// peer sends can crash the process. Sends never block: a peer whose queue is
// full (high-water mark) loses that reply and re-asks after its timeout.
//
// Threading: one thread runs Run(); the socket is used by that thread only.
// RequestStop() and Stats() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <tuple>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/gguf/gguf_file.h"
#include "common/wire/curve.h"
#include "common/wire/wire.h"
#include "loader/client/loader_client.h"
#include "zmq.hpp"

namespace chord::loader {

// Lowercase hex SHA-256 of `bytes` (OpenSSL EVP). INTERNAL if OpenSSL fails.
absl::StatusOr<std::string> Sha256Hex(std::span<const uint8_t> bytes);

// Checks a peer's TensorRequest against `file`: a tensor it holds, a length in
// [1, kMaxTensorChunkBytes], a range inside the tensor. Returns the tensor, or
// NOT_FOUND / INVALID_ARGUMENT naming the request's fields.
absl::StatusOr<const gguf::TensorInfo*> ValidateTensorRequest(
    const gguf::GgufFile& file, const wire::pb::TensorRequest& request);

struct WeightServiceOptions {
  std::string bind = "tcp://127.0.0.1:5556";  // port 0 or "*": the OS picks one
  std::string node_id = "loader";
  std::string file_path;   // absolute; told to peers so that same-host ones can map the file
  int send_hwm = 1000;     // messages queued per peer before replies are dropped
  int receive_hwm = 1000;  // requests queued per peer before ZeroMQ stops reading
  int64_t max_message_bytes =
      1 << 20;  // inbound messages are small; larger ones disconnect the peer
  // Paces tensor chunks to this many payload bytes per second over all peers,
  // as a slow disk or network would (0: as fast as the socket takes them).
  uint64_t max_bytes_per_second = 0;
  // CURVE on the socket when enabled (the context's ZAP handler admits peers);
  // then only the peer holding curve.coordinator_public_key may send Shutdown.
  wire::CurveSetup curve;
};

// What the service has done for one peer (keyed by its ROUTER identity, in hex).
struct PeerStats {
  std::string node_id;  // from the peer's Hello; empty before it
  uint64_t requests = 0;
  uint64_t bytes_sent = 0;  // payload bytes
  uint64_t dropped = 0;     // malformed or refused messages
};

class WeightService {
 public:
  // Binds the socket. `file` must be opened with GgufFile::Open (tensor data
  // mapped) and outlive `context`. `model_sha256` is the file's identity.
  static absl::StatusOr<std::unique_ptr<WeightService>> Create(zmq::context_t& context,
                                                               const gguf::GgufFile& file,
                                                               std::string model_sha256,
                                                               std::string file_name,
                                                               const WeightServiceOptions& options);

  // The bound endpoint, with the port the OS picked (e.g. "tcp://127.0.0.1:41234").
  const std::string& endpoint() const { return endpoint_; }

  // Serves until RequestStop(). Returns an error only when the socket fails.
  absl::Status Run();
  void RequestStop() { stop_.store(true); }

  std::map<std::string, PeerStats> Stats() const;

 private:
  using Clock = std::chrono::steady_clock;
  // A chunk waiting for the paced link.
  struct PacedChunk {
    std::string identity;
    wire::pb::TensorChunk chunk;
    std::span<const uint8_t> payload;  // what the link carries (and paces)
    bool send_payload = true;
    Clock::time_point queued_at;
  };

  WeightService(const gguf::GgufFile& file, std::string model_sha256, std::string file_name,
                const WeightServiceOptions& options, zmq::socket_t socket);

  void Handle(wire::Message& message);
  void HandleHello(const std::string& identity, const wire::pb::Hello& hello);
  void HandleModelInfo(const std::string& identity);
  void HandleTensorRequest(const std::string& identity, const wire::pb::TensorRequest& request);
  void SendChunk(const std::string& identity, const wire::pb::TensorChunk& chunk,
                 std::span<const uint8_t> payload);
  // XXH3-64 of a tensor chunk, memoized.
  uint64_t Checksum(const std::string& name, uint64_t offset, std::span<const uint8_t> bytes);
  // Sends the paced chunks whose time has come; returns how long until the next one.
  std::chrono::milliseconds SendPaced();
  void Reply(const std::string& identity, const wire::pb::Envelope& envelope);
  void Drop(const std::string& identity, absl::string_view why);
  void LogTotals();

  const gguf::GgufFile& file_;
  const std::string model_sha256_;
  const std::string file_name_;
  const std::string node_id_;
  const std::string file_path_;
  const uint64_t max_bytes_per_second_;
  const wire::CurveSetup curve_;
  zmq::socket_t socket_;
  std::deque<PacedChunk> paced_;
  using ChunkKey = std::tuple<std::string, uint64_t, uint64_t>;  // tensor, offset, length
  std::map<ChunkKey, uint64_t> checksums_;
  Clock::time_point link_free_at_{};  // when the paced link has sent what it took
  std::string endpoint_;
  std::atomic<bool> stop_{false};

  // Peers that completed a Hello; refused ones are remembered and ignored.
  std::map<std::string, bool> accepted_;
  std::set<std::string> coordinators_;  // accepted peers whose Hello role is "coordinator"
  mutable std::mutex stats_mutex_;
  std::map<std::string, PeerStats> stats_;  // guarded by stats_mutex_
  uint64_t logged_bytes_ = 0;
};

}  // namespace chord::loader
