// A persistent pool of worker threads for data-parallel loops.
//
// Threads are created once (never per token). Between jobs a worker first
// spins briefly (a decode step issues hundreds of short jobs back to back, and
// a condition-variable wake-up costs several microseconds each), then sleeps
// on a condition variable. ParallelFor splits [0, n) into contiguous chunks,
// several per thread, that the threads (the caller included) claim one at a
// time: a thread the OS deschedules (other processes want the cores: a
// coordinator, a loader, another worker) holds up only the chunk it took, not
// a fixed share of every job. Each index is processed by exactly one thread in
// one call, so results that are reduced inside one index do not depend on the
// thread count or on which thread ran it (chord's thread-count invariance
// contract).
//
// Thread-safety: ParallelFor may be called from one thread at a time (the
// owner's compute thread); it blocks until every chunk has finished.
#pragma once

#include <atomic>
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

  // Inside a ParallelFor body: the index in [0, size()) of the thread running
  // it (0 is the caller's thread), e.g. to pick per-thread scratch memory.
  static int ThreadIndex();

  // Calls fn(begin, end) on disjoint chunks covering [0, n). `grain` is the
  // smallest chunk worth handing to another thread.
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  void WorkerLoop(int index);
  // Claims and runs chunks of the job of `generation` until none is left.
  void RunChunks(uint64_t generation);

  const int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  // Written under mutex_ before generation_ is bumped:
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int job_chunks_ = 0;
  // Read without the lock while spinning; changed under mutex_.
  std::atomic<uint64_t> generation_{0};
  // The next chunk to claim, tagged with its job's generation (high 32 bits)
  // so that a thread that read an earlier job can never claim a later one's.
  std::atomic<uint64_t> next_chunk_{0};
  std::atomic<int> done_chunks_{0};
  std::atomic<bool> stopping_{false};
};

}  // namespace chord
