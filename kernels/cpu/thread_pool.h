// A persistent pool of worker threads for data-parallel loops.
//
// Threads are created once (never per token) and sleep on a condition variable
// between jobs. ParallelFor splits [0, n) into contiguous chunks, one per
// thread, so each index is processed by exactly one thread: results that are
// reduced inside one index do not depend on the thread count (chord's
// thread-count invariance contract).
//
// Thread-safety: ParallelFor may be called from one thread at a time (the
// owner's compute thread); it blocks until every chunk has finished.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace chord {

class ThreadPool {
 public:
  // n_threads <= 0 means one thread per hardware core.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end) on disjoint chunks covering [0, n). `grain` is the
  // smallest chunk worth handing to another thread.
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  void WorkerLoop(int index);

  const int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  // Guarded by mutex_:
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int job_chunks_ = 0;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stopping_ = false;
};

}  // namespace chord
