// Small RAII wrappers around CUDA runtime objects and the conversion of CUDA
// errors into absl::Status, shared by the GPU kernels' launchers and the GPU
// stage. Every CUDA call's result is checked: a failed call becomes an error
// status naming the call (INTERNAL, or UNAVAILABLE for errors after which the
// device context is unusable), never a crash or an ignored error.
//
// Thread-safety: the wrappers are move-only owners; use each from one thread
// at a time. Ownership: each wrapper frees what it holds on destruction.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/base/status.h"

namespace chord::cuda {

// OK for cudaSuccess; otherwise an error naming `what` and the CUDA error.
// Sticky errors (the context is lost) map to UNAVAILABLE, others to INTERNAL.
absl::Status CudaStatus(cudaError_t error, const char* what);

// The last launch error of this thread, as CudaStatus (clears it).
absl::Status LastLaunchStatus(const char* what);

// True when at least one CUDA device is usable by this process.
bool HasCudaDevice();

#define CHORD_CUDA_RETURN(expr) RETURN_IF_ERROR(::chord::cuda::CudaStatus((expr), #expr))

// A device allocation of `bytes` bytes (uninitialized).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// A non-blocking stream.
class Stream {
 public:
  Stream() = default;
  static absl::StatusOr<Stream> Create();
  Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream();

  cudaStream_t get() const { return stream_; }
  absl::Status Synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
};

// An event for ordering work across streams (Create, without timing) or for
// timing it (CreateTimed).
class Event {
 public:
  Event() = default;
  static absl::StatusOr<Event> Create();
  static absl::StatusOr<Event> CreateTimed();
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event();

  cudaEvent_t get() const { return event_; }
  absl::Status Record(cudaStream_t stream) const;
  // Work issued to `stream` from now on waits for the last Record's work.
  absl::Status MakeWait(cudaStream_t stream) const;
  absl::Status Synchronize() const;
  // Milliseconds from `earlier`'s last Record to this one's, both timed
  // events whose work is done.
  absl::StatusOr<float> MillisecondsSince(const Event& earlier) const;

 private:
  cudaEvent_t event_ = nullptr;
};

// An executable CUDA graph captured from a stream.
class Graph {
 public:
  Graph() = default;
  Graph(Graph&& other) noexcept
      : graph_(std::exchange(other.graph_, nullptr)), exec_(std::exchange(other.exec_, nullptr)) {}
  Graph& operator=(Graph&& other) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  ~Graph();

  // Begins capturing the work issued to `stream`.
  static absl::Status BeginCapture(cudaStream_t stream);
  // Ends the capture begun on `stream` and instantiates it.
  static absl::StatusOr<Graph> EndCapture(cudaStream_t stream);
  absl::Status Launch(cudaStream_t stream) const;
  bool valid() const { return exec_ != nullptr; }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace chord::cuda
