#include "kernels/cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace chord {
namespace {

TEST(ThreadPoolTest, EveryIndexRunsExactlyOnce) {
  for (int threads : {1, 2, 5}) {
    ThreadPool pool(threads);
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.ParallelFor(n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)]++;
      });
      for (auto& h : hits) EXPECT_EQ(h.load(), 1);
    }
  }
}

TEST(ThreadPoolTest, ReusesThreadsAcrossManyJobs) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  for (int job = 0; job < 2000; ++job) {
    pool.ParallelFor(10, 1, [&](int64_t begin, int64_t end) { total += end - begin; });
  }
  EXPECT_EQ(total.load(), 20000);
}

// Chunks are claimed, not dealt: while the thread that took the first chunk is
// held up (as by the OS giving its core to another process), the other thread
// runs every remaining chunk; a fixed split would leave half of them waiting.
TEST(ThreadPoolTest, AHeldUpThreadDoesNotHoldBackTheRestOfTheJob) {
  ThreadPool pool(2);
  std::atomic<int> others_done{0};
  bool first_saw_all_others = false;
  pool.ParallelFor(8, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i != 0) {
        ++others_done;
        continue;
      }
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (others_done.load() < 7 && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      first_saw_all_others = others_done.load() == 7;
    }
  });
  EXPECT_TRUE(first_saw_all_others);
}

TEST(ThreadPoolTest, ThreadIndexNamesOneThreadOfThePool) {
  ThreadPool pool(4);
  std::mutex mutex;
  std::map<int, std::thread::id> threads;
  bool consistent = true;
  for (int job = 0; job < 200; ++job) {
    pool.ParallelFor(64, 1, [&](int64_t, int64_t) {
      const int index = ThreadPool::ThreadIndex();
      std::lock_guard lock(mutex);
      if (index < 0 || index >= pool.size()) consistent = false;
      auto [it, inserted] = threads.emplace(index, std::this_thread::get_id());
      if (!inserted && it->second != std::this_thread::get_id()) consistent = false;
    });
  }
  EXPECT_TRUE(consistent);
  EXPECT_EQ(threads.at(0), std::this_thread::get_id());
}

}  // namespace
}  // namespace chord
