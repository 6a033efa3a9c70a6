// zmq::poll that first spins: polls without blocking until `spin_until`, then
// blocks for at most `timeout`. A thread blocked in poll is woken by the
// kernel when a message comes (tens to hundreds of microseconds on an idle
// host, paid at every hop of a pipeline step); one that spins takes it at
// once, at the price of its core while it spins. Callers spin only while a
// message is due soon (a step's answer, the next step).
#pragma once

#include <chrono>
#include <span>

#include "zmq.hpp"

namespace chord::wire {

// How long GPU stages and the coordinator of an all-GPU pipeline spin by
// default (their --busy-poll-us -1): longer than the gap between one step and
// the next at any batch size that decodes in under 20 ms a step. Measured on
// two H200 stages (BENCHMARKS.md, "Serving"): one-token steps 2.99 -> 2.79 ms
// over NCCL-linked stages, 2.96 -> 2.59 ms over ZeroMQ.
inline constexpr std::chrono::microseconds kAutoBusyPoll{20000};

// The number of items with events, as zmq::poll.
int PollSpinningFirst(std::span<zmq::pollitem_t> items,
                      std::chrono::steady_clock::time_point spin_until,
                      std::chrono::milliseconds timeout);

}  // namespace chord::wire
