#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>

namespace chord {
namespace {

void ChunkBounds(int64_t n, int chunks, int index, int64_t* begin, int64_t* end) {
  const int64_t base = n / chunks;
  const int64_t extra = n % chunks;
  *begin = index * base + std::min<int64_t>(index, extra);
  *end = *begin + base + (index < extra ? 1 : 0);
}

// How long an idle thread polls before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(200);

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Polls `done` until it returns true or kSpin has passed; returns its last value.
template <typename Done>
bool SpinUntil(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (done()) return true;
    CpuRelax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return done();
  }
}

// Chunks per thread: enough that a descheduled thread costs a fraction of a
// job, few enough that claiming stays cheap next to a chunk's work.
constexpr int kChunksPerThread = 4;

thread_local int current_thread_index = 0;

}  // namespace

int ThreadPool::ThreadIndex() { return current_thread_index; }

ThreadPool::ThreadPool(int n_threads)
    : n_threads_(n_threads > 0
                     ? n_threads
                     : std::max(1, static_cast<int>(std::thread::hardware_concurrency()))) {
  // The calling thread runs chunks itself, so only n - 1 threads are started.
  for (int i = 1; i < n_threads_; ++i) {
    threads_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_.store(true);
  }
  start_cv_.notify_all();
  for (std::thread& thread : threads_) thread.join();
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t useful = (n + grain - 1) / grain;
  if (n_threads_ == 1 || useful <= 1) {
    fn(0, n);
    return;
  }
  const int chunks = static_cast<int>(std::min<int64_t>(useful, int64_t{n_threads_} * kChunksPerThread));
  uint64_t generation;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_n_ = n;
    job_chunks_ = chunks;
    done_chunks_.store(0);
    generation = generation_.load() + 1;
    next_chunk_.store(generation << 32, std::memory_order_relaxed);
    generation_.store(generation, std::memory_order_release);
  }
  start_cv_.notify_all();
  RunChunks(generation);
  if (!SpinUntil([&] { return done_chunks_.load(std::memory_order_acquire) == chunks; })) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [&] { return done_chunks_.load() == chunks; });
  }
}

void ThreadPool::RunChunks(uint64_t generation) {
  const std::function<void(int64_t, int64_t)>* job;
  int64_t n;
  int chunks;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (generation_.load() != generation) return;  // that job is over
    job = job_;
    n = job_n_;
    chunks = job_chunks_;
  }
  uint64_t claim = next_chunk_.load(std::memory_order_relaxed);
  for (;;) {
    if ((claim >> 32) != (generation & 0xffffffffu) || static_cast<int>(claim & 0xffffffffu) >= chunks) {
      return;
    }
    if (!next_chunk_.compare_exchange_weak(claim, claim + 1, std::memory_order_acq_rel)) continue;
    const int chunk = static_cast<int>(claim & 0xffffffffu);
    int64_t begin, end;
    ChunkBounds(n, chunks, chunk, &begin, &end);
    (*job)(begin, end);
    if (done_chunks_.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) {
      // Taking the lock orders this notify after a waiter's predicate check.
      std::lock_guard<std::mutex> lock(mutex_);
      done_cv_.notify_one();
    }
    claim = next_chunk_.load(std::memory_order_relaxed);
  }
}

void ThreadPool::WorkerLoop(int index) {
  current_thread_index = index;
  uint64_t seen = 0;
  for (;;) {
    SpinUntil(
        [&] { return stopping_.load() || generation_.load(std::memory_order_acquire) != seen; });
    {
      std::unique_lock<std::mutex> lock(mutex_);
      start_cv_.wait(lock, [&] { return stopping_.load() || generation_.load() != seen; });
      if (stopping_.load()) return;
      seen = generation_.load();
    }
    RunChunks(seen);
  }
}

}  // namespace chord
