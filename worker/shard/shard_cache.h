// The shard cache: holds as many of a stage's layers as a byte budget allows
// and fetches the others ahead of demand, so that a worker can run a layer
// range larger than its memory.
//
// The unit is a whole layer (its nine tensors, in one FetchedTensors). The
// compute thread walks the range in order, step after step, so the access
// order is known: layer l, l+1, ..., end-1, then first, first+1, ... The
// cache uses that:
//  - Prefetch window: when layer l is acquired, layers l+1 .. l+D (wrapping
//    from the last layer to the first) are requested in that order. Layers in
//    the window, in flight, or acquired are pinned: never evicted.
//  - Eviction: the unpinned layer whose next use is furthest away goes first.
//    For a cyclic scan this is the optimal (Belady) choice, and unlike plain
//    LRU (which in a cyclic scan evicts exactly the layer needed next and so
//    streams the whole range every step) it keeps a fixed set of layers
//    resident and streams only the rest.
//  - Budget: bytes of the layers held plus those being fetched never exceed
//    `capacity_bytes`; space is reserved before a fetch allocates anything.
//  - Depth D: fixed, 0 (prefetch off: every absent layer is a synchronous load),
//    or derived from the measured fetch and compute time per layer: a fetch
//    that takes r layers of compute needs ceil(r) layers of lead, capped at 2
//    because once transfer dominates any depth >= 1 keeps the link busy, and a
//    deeper window only takes room from the layers that stay resident.
//  - Failures: a failed fetch releases its reservation; Acquire asks again
//    (synchronously) until `max_attempts` fetches of that layer have failed,
//    then returns the error.
//
// Thread-safety: Acquire/Release come from one compute thread; one fetch
// thread owned by the cache runs the fetch function; Stats() from anywhere.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/fetched_tensors.h"
#include "worker/models/llama.h"

namespace chord {

struct ShardCacheOptions {
  uint64_t capacity_bytes = 0;  // for layers: held plus being fetched
  int prefetch_depth = -1;      // layers ahead; 0: off; -1: derived from measured times
  int max_attempts = 3;         // failed fetches of one layer before Acquire gives up
  // While Acquire waits, `wait_hook` runs every `wait_hook_period` on the
  // compute thread (the worker answers heartbeats from it).
  std::function<void()> wait_hook;
  std::chrono::milliseconds wait_hook_period{50};
};

struct ShardCacheStats {
  uint64_t hits = 0;            // Acquire found the layer in memory
  uint64_t misses = 0;          // Acquire had to wait for it
  uint64_t sync_loads = 0;      // misses nothing had asked for: fetched on demand
  double stall_seconds = 0;     // time Acquire spent waiting
  uint64_t fetches = 0;         // layers fetched
  uint64_t failed_fetches = 0;  // fetches that failed (and were asked again)
  uint64_t bytes_fetched = 0;
  uint64_t evictions = 0;
  uint64_t bytes_reserved = 0;         // held plus being fetched, now
  uint64_t peak_bytes_reserved = 0;    // the most ever: never above capacity
  int prefetch_depth = 0;              // the window in use now
  double fetch_seconds_per_layer = 0;  // moving averages
  double compute_seconds_per_layer = 0;
};

class ShardCache final : public LayerSource {
 public:
  // Fetches one layer's tensors; runs on the fetch thread. Should return
  // CANCELLED soon after `cancel` becomes true.
  using FetchFn = std::function<absl::StatusOr<std::unique_ptr<FetchedTensors>>(
      int64_t layer, const std::atomic<bool>& cancel)>;

  // `layer_bytes[i]` is what layer range.first + i takes once fetched.
  // INVALID_ARGUMENT when the capacity cannot hold the largest layer.
  static absl::StatusOr<std::unique_ptr<ShardCache>> Create(LayerRange range,
                                                            std::vector<uint64_t> layer_bytes,
                                                            ShardCacheOptions options,
                                                            FetchFn fetch);
  ~ShardCache() override;

  // Fetches layers in order from the first while they fit without evicting,
  // calling `progress(layers_done, layers_to_fetch)` after each; returns the
  // first fetch error.
  absl::Status Fill(const std::function<void(int64_t, int64_t)>& progress);

  absl::StatusOr<const TensorSource*> Acquire(int64_t layer) override;
  void Release(int64_t layer) override;

  ShardCacheStats Stats() const;
  // Layers that fit at once, and the most the window can hold (0: no room to prefetch).
  int64_t layers_that_fit() const { return layers_that_fit_; }
  uint64_t capacity_bytes() const { return options_.capacity_bytes; }
  int max_prefetch_depth() const;

 private:
  enum class State { kAbsent, kQueued, kFetching, kReady };
  struct Entry {
    State state = State::kAbsent;
    std::unique_ptr<FetchedTensors> tensors;
    int pins = 0;      // Acquire without Release yet
    int failures = 0;  // consecutive failed fetches
    absl::Status error;
  };
  using Clock = std::chrono::steady_clock;

  ShardCache(LayerRange range, std::vector<uint64_t> layer_bytes, ShardCacheOptions options,
             FetchFn fetch);
  void FetchLoop();

  // All below need mutex_ held.
  Entry& At(int64_t layer) { return entries_[static_cast<size_t>(layer - range_.first)]; }
  uint64_t BytesOf(int64_t layer) const {
    return layer_bytes_[static_cast<size_t>(layer - range_.first)];
  }
  int64_t Distance(int64_t from, int64_t to) const;  // steps of the cyclic scan
  int Depth() const;
  bool Pinned(int64_t layer) const;
  // Reserves room for `layer`, evicting unpinned layers (and, for a layer
  // the compute thread waits for, window layers not in use); false when it cannot.
  bool Reserve(int64_t layer, bool demand);
  void Enqueue(int64_t layer, bool front);
  void CancelOutsideWindow();
  void Schedule();  // requests the window's absent layers, in order, while they fit

  const LayerRange range_;
  const std::vector<uint64_t> layer_bytes_;
  const ShardCacheOptions options_;
  const FetchFn fetch_;
  int64_t layers_that_fit_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<Entry> entries_;
  std::deque<int64_t> queue_;
  int64_t cursor_ = -1;    // the layer last acquired; -1 before the first
  int64_t fetching_ = -1;  // the layer the fetch thread works on
  std::atomic<bool> cancel_fetch_{false};
  bool stop_ = false;
  ShardCacheStats stats_;
  Clock::time_point acquired_at_{};
  std::thread fetcher_;
};

}  // namespace chord
