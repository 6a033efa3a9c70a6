#include "worker/shard/shard_cache.h"

#include <algorithm>
#include <cmath>

#include "common/base/log.h"

namespace chord {
namespace {

// Weight of the newest sample in the moving averages of fetch and compute time.
constexpr double kAverageWeight = 0.25;

void Average(double& average, double sample) {
  average = average == 0 ? sample : average + kAverageWeight * (sample - average);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShardCache>> ShardCache::Create(LayerRange range,
                                                               std::vector<uint64_t> layer_bytes,
                                                               ShardCacheOptions options,
                                                               FetchFn fetch) {
  if (range.first >= range.end ||
      static_cast<int64_t>(layer_bytes.size()) != range.end - range.first) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the shard cache needs one size per layer of [%d, %d), got %d sizes",
                        range.first, range.end, layer_bytes.size()));
  }
  const uint64_t largest = *std::max_element(layer_bytes.begin(), layer_bytes.end());
  if (options.capacity_bytes < largest) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the shard cache's %d bytes cannot hold one layer (%d bytes)",
                        options.capacity_bytes, largest));
  }
  if (options.max_attempts < 1) options.max_attempts = 1;
  return std::unique_ptr<ShardCache>(
      new ShardCache(range, std::move(layer_bytes), std::move(options), std::move(fetch)));
}

ShardCache::ShardCache(LayerRange range, std::vector<uint64_t> layer_bytes,
                       ShardCacheOptions options, FetchFn fetch)
    : range_(range),
      layer_bytes_(std::move(layer_bytes)),
      options_(std::move(options)),
      fetch_(std::move(fetch)),
      entries_(layer_bytes_.size()) {
  // The fewest layers that fit whatever the mix: fill with the largest first.
  std::vector<uint64_t> sorted = layer_bytes_;
  std::sort(sorted.rbegin(), sorted.rend());
  uint64_t used = 0;
  for (const uint64_t bytes : sorted) {
    if (used + bytes > options_.capacity_bytes) break;
    used += bytes;
    ++layers_that_fit_;
  }
  stats_.prefetch_depth = Depth();
  fetcher_ = std::thread([this] { FetchLoop(); });
}

ShardCache::~ShardCache() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    cancel_fetch_.store(true);
  }
  changed_.notify_all();
  fetcher_.join();
}

int ShardCache::max_prefetch_depth() const {
  // The window holds the acquired layer plus D more.
  return static_cast<int>(std::max<int64_t>(0, layers_that_fit_ - 1));
}

int64_t ShardCache::Distance(int64_t from, int64_t to) const {
  const int64_t n = range_.end - range_.first;
  return ((to - from) % n + n) % n;
}

int ShardCache::Depth() const {
  int depth = options_.prefetch_depth;
  if (depth < 0) {
    depth = 2;  // until both times are measured
    if (stats_.fetch_seconds_per_layer > 0 && stats_.compute_seconds_per_layer > 0) {
      const double ratio = stats_.fetch_seconds_per_layer / stats_.compute_seconds_per_layer;
      depth = std::clamp(static_cast<int>(std::ceil(ratio)), 1, 2);
    }
  }
  const int64_t n = range_.end - range_.first;
  return static_cast<int>(std::min<int64_t>({depth, max_prefetch_depth(), n - 1}));
}

bool ShardCache::Pinned(int64_t layer) const {
  const Entry& entry = entries_[static_cast<size_t>(layer - range_.first)];
  if (entry.pins > 0 || entry.state == State::kFetching) return true;
  return cursor_ >= 0 && Distance(cursor_, layer) <= stats_.prefetch_depth;
}

bool ShardCache::Reserve(int64_t layer, bool demand) {
  const uint64_t needed = BytesOf(layer);
  const int64_t from = cursor_ >= 0 ? cursor_ : range_.first;
  while (options_.capacity_bytes - stats_.bytes_reserved < needed) {
    // Unpinned ready layers first, furthest next use first. A demanded layer
    // may also take the room of window layers not yet in use (queued ones,
    // then fetched ones), which the window then asks for again.
    int64_t victim = -1;
    int victim_rank = 0;
    for (int64_t l = range_.first; l < range_.end; ++l) {
      const Entry& entry = At(l);
      int rank = 0;
      if (entry.state == State::kReady && !Pinned(l)) {
        rank = 3;
      } else if (demand && l != layer && entry.pins == 0 && entry.state == State::kQueued) {
        rank = 2;
      } else if (demand && l != layer && entry.pins == 0 && entry.state == State::kReady) {
        rank = 1;
      } else {
        continue;
      }
      if (rank > victim_rank ||
          (rank == victim_rank && Distance(from, l) > Distance(from, victim))) {
        victim = l;
        victim_rank = rank;
      }
    }
    if (victim < 0) return false;
    Entry& evicted = At(victim);
    if (evicted.state == State::kQueued) {
      queue_.erase(std::find(queue_.begin(), queue_.end(), victim));
    } else {
      evicted.tensors.reset();
      ++stats_.evictions;
    }
    evicted.state = State::kAbsent;
    stats_.bytes_reserved -= BytesOf(victim);
  }
  stats_.bytes_reserved += needed;
  stats_.peak_bytes_reserved = std::max(stats_.peak_bytes_reserved, stats_.bytes_reserved);
  return true;
}

void ShardCache::Enqueue(int64_t layer, bool front) {
  At(layer).state = State::kQueued;
  if (front) {
    queue_.push_front(layer);
  } else {
    queue_.push_back(layer);
  }
  changed_.notify_all();
}

void ShardCache::CancelOutsideWindow() {
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (Pinned(*it)) {
      ++it;
      continue;
    }
    At(*it).state = State::kAbsent;
    stats_.bytes_reserved -= BytesOf(*it);
    it = queue_.erase(it);
  }
  if (fetching_ >= 0 && cursor_ >= 0 && Distance(cursor_, fetching_) > stats_.prefetch_depth) {
    cancel_fetch_.store(true);
  }
}

void ShardCache::Schedule() {
  if (cursor_ < 0) return;
  for (int k = 1; k <= stats_.prefetch_depth; ++k) {
    const int64_t layer = range_.first + (cursor_ - range_.first + k) % (range_.end - range_.first);
    Entry& entry = At(layer);
    if (entry.state != State::kAbsent) continue;
    if (entry.failures >= options_.max_attempts) return;  // Acquire reports it
    if (!Reserve(layer, /*demand=*/false)) return;  // keep the order: nothing later jumps ahead
    Enqueue(layer, /*front=*/false);
  }
}

absl::Status ShardCache::Fill(const std::function<void(int64_t, int64_t)>& progress) {
  std::unique_lock<std::mutex> lock(mutex_);
  std::vector<int64_t> filling;
  for (int64_t l = range_.first; l < range_.end; ++l) {
    if (At(l).state != State::kAbsent) continue;
    if (options_.capacity_bytes - stats_.bytes_reserved < BytesOf(l)) break;  // no evicting
    Reserve(l, /*demand=*/false);
    Enqueue(l, /*front=*/false);
    filling.push_back(l);
  }
  const auto total = static_cast<int64_t>(filling.size());
  for (int64_t done = 0; done < total; ++done) {
    const int64_t layer = filling[static_cast<size_t>(done)];
    Entry& entry = At(layer);
    while (entry.state != State::kReady) {
      changed_.wait(lock, [&] {
        return stop_ || entry.state == State::kReady || entry.state == State::kAbsent;
      });
      if (stop_) return absl::CancelledError("the shard cache is closing");
      if (entry.state != State::kAbsent) continue;
      if (entry.failures >= options_.max_attempts) {
        return absl::Status(entry.error.code(),
                            absl::StrFormat("layer %d: %s (after %d attempts)", layer,
                                            entry.error.message(), entry.failures));
      }
      if (Reserve(layer, /*demand=*/true)) Enqueue(layer, /*front=*/true);
    }
    if (progress) {
      lock.unlock();
      progress(done + 1, total);
      lock.lock();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<const TensorSource*> ShardCache::Acquire(int64_t layer) {
  if (layer < range_.first || layer >= range_.end) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layer %d is not in the shard [%d, %d)", layer, range_.first, range_.end));
  }
  std::unique_lock<std::mutex> lock(mutex_);
  const Clock::time_point asked = Clock::now();
  cursor_ = layer;
  stats_.prefetch_depth = Depth();
  CancelOutsideWindow();
  Entry& entry = At(layer);
  bool waited = false;
  Clock::time_point hooked = asked;
  while (entry.state != State::kReady) {
    if (!waited) {
      waited = true;
      ++stats_.misses;
      if (entry.state == State::kAbsent && entry.failures == 0) ++stats_.sync_loads;
    }
    if (entry.state == State::kAbsent) {
      if (entry.failures >= options_.max_attempts) {
        const absl::Status error = entry.error;
        entry.failures = 0;  // a later step may try again
        return absl::Status(error.code(), absl::StrFormat("layer %d: %s (after %d attempts)", layer,
                                                          error.message(), options_.max_attempts));
      }
      if (Reserve(layer, /*demand=*/true)) Enqueue(layer, /*front=*/true);
    }
    Schedule();
    changed_.wait_for(lock, options_.wait_hook_period, [&] {
      return stop_ || entry.state == State::kReady || entry.state == State::kAbsent;
    });
    if (stop_) return absl::CancelledError("the shard cache is closing");
    if (options_.wait_hook && Clock::now() - hooked >= options_.wait_hook_period) {
      lock.unlock();
      options_.wait_hook();
      lock.lock();
      hooked = Clock::now();
    }
  }
  if (waited) {
    stats_.stall_seconds += std::chrono::duration<double>(Clock::now() - asked).count();
  } else {
    ++stats_.hits;
  }
  ++entry.pins;
  Schedule();
  acquired_at_ = Clock::now();
  return entry.tensors.get();
}

void ShardCache::Release(int64_t layer) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (layer < range_.first || layer >= range_.end || At(layer).pins == 0) return;
    --At(layer).pins;
    Average(stats_.compute_seconds_per_layer,
            std::chrono::duration<double>(Clock::now() - acquired_at_).count());
  }
  changed_.notify_all();
}

ShardCacheStats ShardCache::Stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void ShardCache::FetchLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    changed_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    const int64_t layer = queue_.front();
    queue_.pop_front();
    At(layer).state = State::kFetching;
    fetching_ = layer;
    cancel_fetch_.store(false);
    lock.unlock();
    const Clock::time_point started = Clock::now();
    absl::StatusOr<std::unique_ptr<FetchedTensors>> fetched = fetch_(layer, cancel_fetch_);
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    lock.lock();
    fetching_ = -1;
    Entry& entry = At(layer);
    if (fetched.ok() && !cancel_fetch_.load()) {
      entry.tensors = *std::move(fetched);
      entry.state = State::kReady;
      entry.failures = 0;
      ++stats_.fetches;
      stats_.bytes_fetched += BytesOf(layer);
      Average(stats_.fetch_seconds_per_layer, seconds);
    } else {
      entry.state = State::kAbsent;
      stats_.bytes_reserved -= BytesOf(layer);
      if (!cancel_fetch_.load()) {
        entry.error = fetched.status();
        ++entry.failures;
        ++stats_.failed_fetches;
        log::Warn("shard cache: fetching layer %d failed (%d of %d): %s", layer, entry.failures,
                  options_.max_attempts, entry.error.ToString());
      }
    }
    changed_.notify_all();
    if (!stop_) Schedule();
  }
}

}  // namespace chord
