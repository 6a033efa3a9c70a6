// NcclLink over NCCL's point-to-point calls on a non-blocking communicator
// (so that joining and every transfer can time out). Each call on such a
// communicator is issued by a thread of NCCL's own, which costs more than a
// decode step's transfer (BENCHMARKS.md, "two GPUs").
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/log.h"
#include "common/base/status.h"
#include "worker/nccl_link.h"

namespace chord {
namespace {

using Clock = std::chrono::steady_clock;

static_assert(sizeof(ncclUniqueId) == 128, "the coordinator relays 128-byte ids");

absl::Status NcclError(ncclResult_t result, ncclComm_t comm, const char* what) {
  const char* detail = comm != nullptr ? ncclGetLastError(comm) : nullptr;
  return absl::UnavailableError(absl::StrCat(what, ": ", ncclGetErrorString(result),
                                             detail != nullptr && *detail != '\0' ? " (" : "",
                                             detail != nullptr ? detail : "",
                                             detail != nullptr && *detail != '\0' ? ")" : ""));
}

class NcclLinkImpl final : public NcclLink {
 public:
  NcclLinkImpl(const NcclLinkOptions& options, ncclComm_t comm)
      : NcclLink(options.rank, options.n_ranks),
        device_(options.device),
        transfer_timeout_(options.transfer_timeout),
        comm_(comm) {
    poll_hook_ = options.poll_hook;
  }
  ~NcclLinkImpl() override { Close(); }

  bool broken() const override { return comm_ == nullptr; }

  absl::Status Send(const float* device_rows, int64_t count, void* stream) override {
    if (!has_next()) return absl::InternalError("the last rank of an NCCL group sends to nobody");
    return Transfer(true, const_cast<float*>(device_rows), count, static_cast<cudaStream_t>(stream));
  }
  absl::Status Receive(float* device_rows, int64_t count, void* stream) override {
    if (!has_previous()) return absl::InternalError("rank 0 of an NCCL group receives from nobody");
    return Transfer(false, device_rows, count, static_cast<cudaStream_t>(stream));
  }
  absl::Status ReceiveQueued(float* device_rows, int64_t count, void* stream) override {
    if (!has_previous()) return absl::InternalError("rank 0 of an NCCL group receives from nobody");
    return Transfer(false, device_rows, count, static_cast<cudaStream_t>(stream),
                    /*wait=*/false);
  }
  absl::Status WaitFor(void* stream) override {
    const auto s = static_cast<cudaStream_t>(stream);
    if (comm_ == nullptr) {
      const cudaError_t e = cudaStreamSynchronize(s);
      return e == cudaSuccess ? absl::OkStatus() : Cuda(e, "cudaStreamSynchronize");
    }
    return Finish(ncclSuccess, s, "the work behind an NCCL transfer");
  }

  // Issues the exchange of the warm-up: one float each way with the
  // neighbours, grouped so that a rank's send and receive proceed together.
  absl::Status WarmUp(float* scratch, cudaStream_t stream) {
    if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) return Cuda(e, "cudaSetDevice");
    ncclResult_t r = ncclGroupStart();
    if (r == ncclSuccess && has_next()) r = ncclSend(scratch, 1, ncclFloat, rank() + 1, comm_, stream);
    if (r == ncclSuccess && has_previous()) {
      r = ncclRecv(scratch + 1, 1, ncclFloat, rank() - 1, comm_, stream);
    }
    const ncclResult_t ended = ncclGroupEnd();
    if (r == ncclSuccess) r = ended;
    return Finish(r, stream, "the NCCL warm-up exchange");
  }

 private:
  absl::Status Transfer(bool send, float* rows, int64_t count, cudaStream_t stream,
                        bool wait = true) {
    if (comm_ == nullptr) return absl::UnavailableError("the NCCL link is broken");
    if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) return Cuda(e, "cudaSetDevice");
    const ncclResult_t r =
        send ? ncclSend(rows, static_cast<size_t>(count), ncclFloat, rank() + 1, comm_, stream)
             : ncclRecv(rows, static_cast<size_t>(count), ncclFloat, rank() - 1, comm_, stream);
    return Finish(r, stream, send ? "ncclSend" : "ncclRecv", wait);
  }

  // Waits for the call to be issued (a non-blocking communicator may still be
  // connecting) and then, with `wait_for_stream`, for the stream, polling both
  // with the hook between polls; aborts the communicator on any error or at
  // the timeout.
  absl::Status Finish(ncclResult_t issued, cudaStream_t stream, const char* what,
                      bool wait_for_stream = true) {
    const Clock::time_point deadline = Clock::now() + transfer_timeout_;
    ncclResult_t state = issued;
    int polls = 0;
    while (state == ncclInProgress || state == ncclSuccess) {
      if (state == ncclInProgress) {
        if (ncclResult_t r = ncclCommGetAsyncError(comm_, &state); r != ncclSuccess) state = r;
        if (state == ncclSuccess) continue;  // issued: wait for the stream next
      } else if (!wait_for_stream) {
        return absl::OkStatus();
      } else {
        const cudaError_t done = cudaStreamQuery(stream);
        if (done == cudaSuccess) return absl::OkStatus();
        if (done != cudaErrorNotReady) return Fail(Cuda(done, what));
        // A transfer whose peer vanished never finishes: NCCL reports it here.
        ncclResult_t async = ncclSuccess;
        if (ncclResult_t r = ncclCommGetAsyncError(comm_, &async); r != ncclSuccess) async = r;
        if (async != ncclSuccess && async != ncclInProgress) {
          state = async;
          break;
        }
      }
      if (Clock::now() > deadline) {
        return Fail(absl::UnavailableError(absl::StrFormat(
            "%s did not finish within %d ms (is the neighbouring stage gone?)", what,
            transfer_timeout_.count())));
      }
      // Spin briefly (transfers take microseconds), then yield and let the
      // worker answer its heartbeats.
      if (++polls % 64 == 0) {
        if (poll_hook_) poll_hook_();
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    return Fail(NcclError(state, comm_, what));
  }

  absl::Status Fail(absl::Status status) {
    log::Warn("NCCL link (rank %d of %d): %s; falling back to ZeroMQ", rank(), n_ranks(),
              status.message());
    Close();
    return status;
  }

  static absl::Status Cuda(cudaError_t e, const char* what) {
    return absl::UnavailableError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
  }

  void Close() {
    if (comm_ == nullptr) return;
    // Abort rather than destroy: it neither waits for a peer nor for
    // operations that may never finish.
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  int device_;
  std::chrono::milliseconds transfer_timeout_;
  ncclComm_t comm_;
};

}  // namespace

bool NcclBuilt() { return true; }

void SetNcclEnvironment(const std::string& socket_interface) {
  // NVLink SHARP multicast stays off (it needs fabric settings chord never
  // changes); children inherit it.
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  if (!socket_interface.empty()) setenv("NCCL_SOCKET_IFNAME", socket_interface.c_str(), 1);
}

absl::StatusOr<std::string> NewNcclUniqueId() {
  ncclUniqueId id;
  if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
    return NcclError(r, nullptr, "ncclGetUniqueId");
  }
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<NcclLink>> NcclLink::Connect(const NcclLinkOptions& options) {
  if (options.n_ranks < 2 || options.rank < 0 || options.rank >= options.n_ranks) {
    return absl::InvalidArgumentError(
        absl::StrFormat("NCCL rank %d of %d is not a place in a group", options.rank, options.n_ranks));
  }
  if (options.unique_id.size() != sizeof(ncclUniqueId)) {
    return absl::InvalidArgumentError(absl::StrFormat("an NCCL unique id has %d bytes, not %d",
                                                      sizeof(ncclUniqueId), options.unique_id.size()));
  }
  if (cudaError_t e = cudaSetDevice(options.device); e != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("cudaSetDevice: ", cudaGetErrorString(e)));
  }
  ncclUniqueId id;
  std::memcpy(id.internal, options.unique_id.data(), sizeof(id.internal));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t state = ncclCommInitRankConfig(&comm, options.n_ranks, id, options.rank, &config);
  const Clock::time_point deadline = Clock::now() + options.connect_timeout;
  while (state == ncclInProgress) {
    if (options.cancelled && options.cancelled()) {
      ncclCommAbort(comm);
      return absl::CancelledError("joining the NCCL group was cancelled (a new plan came)");
    }
    if (Clock::now() > deadline) {
      ncclCommAbort(comm);
      return absl::DeadlineExceededError(absl::StrFormat(
          "the NCCL group (%d ranks) did not form within %d ms", options.n_ranks,
          options.connect_timeout.count()));
    }
    if (options.poll_hook) options.poll_hook();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (ncclResult_t r = ncclCommGetAsyncError(comm, &state); r != ncclSuccess) state = r;
  }
  if (state != ncclSuccess) {
    absl::Status status = NcclError(state, comm, "joining the NCCL group");
    if (comm != nullptr) ncclCommAbort(comm);
    return status;
  }
  auto link = std::make_unique<NcclLinkImpl>(options, comm);
  float* scratch = nullptr;
  cudaStream_t stream = nullptr;
  absl::Status warmed = absl::OkStatus();
  if (cudaError_t e = cudaMalloc(&scratch, 2 * sizeof(float)); e != cudaSuccess) {
    warmed = absl::UnavailableError(absl::StrCat("cudaMalloc: ", cudaGetErrorString(e)));
  } else if (cudaError_t s = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); s != cudaSuccess) {
    warmed = absl::UnavailableError(absl::StrCat("cudaStreamCreate: ", cudaGetErrorString(s)));
  } else {
    warmed = link->WarmUp(scratch, stream);
  }
  if (stream != nullptr) cudaStreamDestroy(stream);
  if (scratch != nullptr) cudaFree(scratch);
  if (!warmed.ok()) return warmed;
  return std::unique_ptr<NcclLink>(std::move(link));
}

}  // namespace chord
