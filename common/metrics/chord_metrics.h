// The metrics each chord process exports. Names follow vLLM's (`vllm:x`
// becomes `chord_x`) and Prometheus's rules (base units, counters in _total),
// so dashboards written for vLLM carry over. Each struct registers its
// families on construction; a process builds the one for its role.
//
// Thread-safety: as Registry (all updates are thread-safe). Ownership: the
// references point into `registry`, which must outlive the struct.
#pragma once

#include "common/metrics/metrics.h"

namespace chord::metrics {

// Coordinator: the request-level view (what a client sees).
struct CoordinatorMetrics {
  explicit CoordinatorMetrics(Registry& registry);

  Family<Counter>& request_success;  // label finished_reason: stop, length, abort, error
  Histogram& time_to_first_token;    // seconds from arrival to the first token
  Histogram& inter_token_latency;    // seconds between tokens of one request
  Histogram& e2e_request_latency;    // seconds from arrival to the last token
  Gauge& num_requests_running;
  Gauge& num_requests_waiting;
  Counter& prompt_tokens;
  Counter& generation_tokens;
  Gauge& num_workers;  // workers registered now
  Counter& num_preemptions;  // sequences preempted when the KV cache was full
};

// Worker: one pipeline stage.
struct WorkerMetrics {
  explicit WorkerMetrics(Registry& registry);

  Family<Histogram>& stage_step_seconds;  // label phase: prefill, decode
  Gauge& kv_cache_usage_perc;             // 0..1, as vLLM's
  Counter& shard_cache_hits;
  Counter& shard_cache_misses;
  Counter& shard_cache_stall_seconds;  // time steps waited for weights
};

// Loader: the weight service.
struct LoaderMetrics {
  explicit LoaderMetrics(Registry& registry);

  Counter& bytes_sent;
  Family<Counter>& requests;  // label kind: served, dropped (malformed/refused)
};

}  // namespace chord::metrics
