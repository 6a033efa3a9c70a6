#include "common/wire/poll.h"

#include <gtest/gtest.h>

#include <thread>

namespace chord::wire {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct Pair {
  zmq::context_t context{1};
  zmq::socket_t pull{context, zmq::socket_type::pull};
  zmq::socket_t push{context, zmq::socket_type::push};
  Pair() {
    pull.bind("inproc://poll_test");
    push.connect("inproc://poll_test");
  }
};

TEST(PollSpinningFirstTest, TakesAMessageThatComesWhileSpinning) {
  Pair pair;
  zmq::pollitem_t items[] = {{pair.pull.handle(), 0, ZMQ_POLLIN, 0}};
  const Clock::time_point start = Clock::now();
  std::thread sender([&] {
    std::this_thread::sleep_for(milliseconds(20));
    pair.push.send(zmq::str_buffer("step"), zmq::send_flags::none);
  });
  const int ready = PollSpinningFirst(items, start + milliseconds(2000), milliseconds(0));
  const Clock::duration waited = Clock::now() - start;
  sender.join();
  EXPECT_EQ(ready, 1);
  EXPECT_NE(items[0].revents & ZMQ_POLLIN, 0);
  EXPECT_GE(waited, milliseconds(20));
  EXPECT_LT(waited, milliseconds(1000));  // not the whole spin
}

TEST(PollSpinningFirstTest, BlocksForTheTimeoutOnceTheSpinIsOver) {
  Pair pair;
  zmq::pollitem_t items[] = {{pair.pull.handle(), 0, ZMQ_POLLIN, 0}};
  const Clock::time_point start = Clock::now();
  EXPECT_EQ(PollSpinningFirst(items, start + milliseconds(10), milliseconds(30)), 0);
  EXPECT_GE(Clock::now() - start, milliseconds(40));
  // A spin that ended in the past: blocking only.
  std::thread sender([&] {
    std::this_thread::sleep_for(milliseconds(10));
    pair.push.send(zmq::str_buffer("step"), zmq::send_flags::none);
  });
  EXPECT_EQ(PollSpinningFirst(items, Clock::time_point{}, milliseconds(5000)), 1);
  sender.join();
}

}  // namespace
}  // namespace chord::wire
