// The events of one Generate call, from the scheduler thread to the gRPC
// handler thread that streams them. Thread-safe (one producer, one consumer).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

#include "absl/status/status.h"
#include "chord/v1/inference.pb.h"

namespace chord::coordinator {

struct StreamEvent {
  chord::v1::GenerateResponse response;  // has `final` on the last event
  absl::Status status;                   // not OK: the call fails with it (last event)
  bool last() const { return !status.ok() || response.has_final(); }
};

class RequestStream {
 public:
  void Push(StreamEvent event) {
    {
      std::lock_guard lock(mutex_);
      events_.push_back(std::move(event));
    }
    ready_.notify_one();
  }
  // The next event, or nullopt after `timeout` without one.
  std::optional<StreamEvent> Pop(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    if (!ready_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return std::nullopt;
    StreamEvent event = std::move(events_.front());
    events_.pop_front();
    return event;
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<StreamEvent> events_;
};

}  // namespace chord::coordinator
