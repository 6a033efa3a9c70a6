// Client side of the loader's weight service (see proto/chord/internal/v1/internal.proto):
// used by the coordinator (model metadata, tokenizer, identity) and by workers
// (metadata plus the tensors of their layer range).
//
// Tensors are fetched in chunks with a bounded number of requests outstanding
// (the credit window), each chunk's XXH3-64 is verified, and a chunk that fails
// its checksum or times out is asked for again, with backoff, up to a limit.
//
// Thread-safety: not thread-safe (it owns one ZeroMQ DEALER socket); use one
// client per thread. Errors: UNAVAILABLE when the loader cannot be reached or
// keeps failing, DATA_LOSS when data keeps failing its checksum,
// FAILED_PRECONDITION on a protocol or model mismatch, NOT_FOUND for an unknown tensor.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "common/gguf/gguf_file.h"
#include "common/wire/curve.h"
#include "common/wire/wire.h"
#include "zmq.hpp"

namespace chord {

// Largest TensorRequest.length a loader serves (proto/PROTOCOL.md).
inline constexpr uint64_t kMaxTensorChunkBytes = 16ull << 20;

struct LoaderClientOptions {
  std::string node_id;                // how the loader logs this peer
  std::string role = "worker";        // Hello role: "worker" or "coordinator"
  uint64_t chunk_bytes = 4ull << 20;  // bytes asked for per request, at most kMaxTensorChunkBytes
  int max_outstanding = 4;            // credit window: requests in flight
  std::chrono::milliseconds timeout{5000};  // per reply before a retry
  int max_attempts = 5;                     // per chunk, with exponential backoff
  // Over an ipc:// endpoint the loader is on this host: map its file and ask
  // for checksums only, copying the bytes from the mapping (one copy instead
  // of three through the socket). Falls back to payloads if that fails.
  bool local_reads = true;
  // CURVE when enabled: this process's keys and the loader's public key.
  wire::CurveSetup curve;
};

struct LoaderModelInfo {
  std::string model_sha256;
  std::string file_name;
  // Metadata and tensor table of the model file, parsed with GgufFile::ParseHeader
  // (tensor data pointers are null).
  std::unique_ptr<gguf::GgufFile> header;
};

// Decodes a loader's ModelInfoReply: its status (as the loader's error), then
// metadata_gguf (GgufFile::ParseHeader) and the tensor table, which must be the
// one that metadata declares. DATA_LOSS when the reply is inconsistent.
// Everything in the reply is untrusted; the model identity is checked by the caller.
absl::StatusOr<std::unique_ptr<gguf::GgufFile>> ParseModelInfoReply(
    const wire::pb::ModelInfoReply& reply);

class LoaderClient {
 public:
  // Connects and exchanges Hellos. `expected_model_sha256` may be empty (the
  // coordinator learns it from the loader); otherwise a loader serving another
  // model is refused.
  static absl::StatusOr<std::unique_ptr<LoaderClient>> Connect(
      zmq::context_t& context, const std::string& endpoint,
      const std::string& expected_model_sha256, const LoaderClientOptions& options);

  virtual ~LoaderClient() = default;

  virtual absl::StatusOr<LoaderModelInfo> FetchModelInfo() = 0;

  // Fills out[0, info.n_bytes) with the tensor's bytes, as they are in the file.
  virtual absl::Status FetchTensor(const gguf::TensorInfo& info, uint8_t* out) = 0;

  // Fills every read's buffer; the chunks of all of them are pipelined
  // together. CANCELLED soon after `*cancel` turns true. The default fetches
  // one tensor after the other.
  virtual absl::Status FetchTensors(std::span<const gguf::TensorRead> reads,
                                    const std::atomic<bool>* cancel = nullptr) {
    for (const gguf::TensorRead& read : reads) {
      if (cancel != nullptr && cancel->load()) return absl::CancelledError("fetch cancelled");
      if (absl::Status status = FetchTensor(*read.info, read.out); !status.ok()) return status;
    }
    return absl::OkStatus();
  }

  // Tensor bytes received since construction (payloads, or copied from the
  // mapped file for local reads).
  virtual uint64_t bytes_received() const = 0;

  // Asks the loader to exit (a coordinator that is shutting down its
  // deployment; the loader honours it only from a peer whose Hello role is
  // "coordinator"). Queued without waiting; delivered within a second of the
  // client's destruction.
  virtual absl::Status RequestShutdown(const std::string& reason) {
    return absl::UnimplementedError("this loader client cannot ask for a shutdown: " + reason);
  }
};

}  // namespace chord
