#include "common/wire/poll.h"

namespace chord::wire {

int PollSpinningFirst(std::span<zmq::pollitem_t> items,
                      std::chrono::steady_clock::time_point spin_until,
                      std::chrono::milliseconds timeout) {
  while (std::chrono::steady_clock::now() < spin_until) {
    const int ready = zmq::poll(items.data(), items.size(), std::chrono::milliseconds(0));
    if (ready > 0) return ready;
  }
  return zmq::poll(items.data(), items.size(), timeout);
}

}  // namespace chord::wire
