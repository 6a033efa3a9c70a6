// GPU-to-GPU activation links between consecutive GPU stages, over NCCL
// (PROTOCOL.md, "NCCL links"). A run of consecutive stages on NCCL-capable
// CUDA workers shares one communicator, rank = position in the run; stage r
// sends its step's residual stream to rank r + 1 and receives from r - 1,
// while the step's header still travels over ZeroMQ (which stays the control
// path, and carries the activations whenever a link is absent or broken).
//
// NCCL matches sends and receives between two ranks in the order they are
// issued; both ends follow the order of the steps on the ZeroMQ data link, and
// a receiver takes every transfer announced to it, even for a step it then
// refuses, so the two never drift apart.
//
// Every wait polls (joining on a non-blocking communicator, each transfer on
// its CUDA stream), runs a hook between polls (the worker answers heartbeats
// there) and gives up after a timeout: the communicator is then aborted, the
// link reports broken() and the caller falls back to ZeroMQ. Built with NCCL
// in CUDA builds; elsewhere Connect says UNIMPLEMENTED.
//
// Thread-safety: one thread at a time (Connect may run on another thread
// than the later transfers).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace chord {

// True when this build can make NCCL links.
bool NcclBuilt();

// NCCL's process-wide settings, applied before its first call and inherited
// by children: NVLink multicast (NVLS) off, always; NCCL_SOCKET_IFNAME =
// `socket_interface` when not empty, so NCCL's bootstrap and socket traffic
// stay on the interface the cluster file names.
void SetNcclEnvironment(const std::string& socket_interface);

// A new group's id (128 bytes), made by its rank 0. UNIMPLEMENTED without
// NCCL; UNAVAILABLE when NCCL cannot open its bootstrap socket.
absl::StatusOr<std::string> NewNcclUniqueId();

struct NcclLinkOptions {
  int device = 0;  // CUDA ordinal
  int rank = 0;
  int n_ranks = 0;  // >= 2
  std::string unique_id;
  // Joining the group (every rank must join; the others may still be
  // loading their weights) and, separately, any one transfer.
  std::chrono::milliseconds connect_timeout{std::chrono::minutes(5)};
  std::chrono::milliseconds transfer_timeout{std::chrono::seconds(10)};
  std::function<void()> poll_hook;  // run between polls; may be empty
  // Connect gives up early (CANCELLED) once this returns true.
  std::function<bool()> cancelled;
};

class NcclLink {
 public:
  // Joins the group and exchanges one value with each neighbour, so that
  // the connections exist before the first step. DEADLINE_EXCEEDED when the
  // group does not form in time; UNAVAILABLE on an NCCL or CUDA error.
  static absl::StatusOr<std::unique_ptr<NcclLink>> Connect(const NcclLinkOptions& options);
  virtual ~NcclLink() = default;

  int rank() const { return rank_; }
  int n_ranks() const { return n_ranks_; }
  bool has_previous() const { return rank_ > 0; }
  bool has_next() const { return rank_ + 1 < n_ranks_; }
  // A transfer failed or timed out: the communicator is gone.
  virtual bool broken() const = 0;

  // `count` floats at `device_rows` (GPU memory) to rank + 1 / from rank - 1,
  // issued on `stream` (a cudaStream_t) after the work already there, and
  // waited for. UNAVAILABLE (and broken() from then on) on failure.
  virtual absl::Status Send(const float* device_rows, int64_t count, void* stream) = 0;
  virtual absl::Status Receive(float* device_rows, int64_t count, void* stream) = 0;
  // Receive issued on `stream` but not waited for: work queued after it runs
  // once the rows land, with no host round trip between (a receiving stage
  // queues its layers behind it while the previous stage still computes).
  // Whoever waits on that stream next must do so through WaitFor: a transfer
  // whose peer is gone never finishes.
  virtual absl::Status ReceiveQueued(float* device_rows, int64_t count, void* stream) = 0;
  // Waits for everything queued on `stream`, as Send and Receive wait for
  // their transfer: polling, the hook between polls, UNAVAILABLE (and
  // broken()) on an NCCL error or past the transfer timeout. Once broken(),
  // a plain wait (aborting the communicator ended its transfers).
  virtual absl::Status WaitFor(void* stream) = 0;

  void set_poll_hook(std::function<void()> hook) { poll_hook_ = std::move(hook); }

 protected:
  NcclLink(int rank, int n_ranks) : rank_(rank), n_ranks_(n_ranks) {}
  std::function<void()> poll_hook_;

 private:
  int rank_;
  int n_ranks_;
};

// Whether a stage sends a step of `rows` rows to the next stage over `link`:
// the link exists, has a next rank and works, and the step has at least
// `min_rows` rows (smaller ones ride the ZeroMQ message, which is faster for
// them; the header tells the receiver which way the rows come).
inline bool SendsOverLink(const NcclLink* link, int64_t rows, int64_t min_rows) {
  return link != nullptr && link->has_next() && !link->broken() && rows >= min_rows;
}

}  // namespace chord
