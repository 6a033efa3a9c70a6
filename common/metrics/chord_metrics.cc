#include "common/metrics/chord_metrics.h"

namespace chord::metrics {
namespace {

// vLLM's bucket bounds for the same histograms (seconds).
const std::vector<double> kTtftBuckets = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                          0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                          20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
const std::vector<double> kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                         0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
const std::vector<double> kE2eBuckets = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                         5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                         60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(Registry& registry)
    : request_success(registry.AddCounter("chord_request_success_total",
                                          "Count of finished requests, by finish reason.",
                                          {"finished_reason"})),
      time_to_first_token(registry
                              .AddHistogram("chord_time_to_first_token_seconds",
                                            "Time from a request's arrival to its first token.",
                                            kTtftBuckets)
                              .With({})),
      inter_token_latency(registry
                              .AddHistogram("chord_inter_token_latency_seconds",
                                            "Time between consecutive tokens of a request.",
                                            kItlBuckets)
                              .With({})),
      e2e_request_latency(registry
                              .AddHistogram("chord_e2e_request_latency_seconds",
                                            "Time from a request's arrival to its last token.",
                                            kE2eBuckets)
                              .With({})),
      num_requests_running(
          registry.AddGauge("chord_num_requests_running", "Requests being generated now.")
              .With({})),
      num_requests_waiting(
          registry.AddGauge("chord_num_requests_waiting", "Requests queued for a KV slot.")
              .With({})),
      prompt_tokens(
          registry.AddCounter("chord_prompt_tokens_total", "Prefill tokens processed.").With({})),
      generation_tokens(
          registry.AddCounter("chord_generation_tokens_total", "Tokens generated.").With({})),
      num_workers(registry.AddGauge("chord_num_workers", "Workers registered with the coordinator.")
                      .With({})),
      num_preemptions(registry
                          .AddCounter("chord_num_preemptions_total",
                                      "Sequences preempted (and later recomputed) for KV space.")
                          .With({})) {}

WorkerMetrics::WorkerMetrics(Registry& registry)
    : stage_step_seconds(registry.AddHistogram(
          "chord_stage_step_seconds", "Time one pipeline stage spends on one step, by phase.",
          ExponentialBuckets(0.0001, 2.0, 20), {"phase"})),
      kv_cache_usage_perc(
          registry.AddGauge("chord_kv_cache_usage_perc", "KV cache usage: 1 means 100 percent.")
              .With({})),
      shard_cache_hits(registry
                           .AddCounter("chord_shard_cache_hits_total",
                                       "Weight shard lookups served from the local cache.")
                           .With({})),
      shard_cache_misses(registry
                             .AddCounter("chord_shard_cache_misses_total",
                                         "Weight shard lookups fetched from the loader.")
                             .With({})),
      shard_cache_stall_seconds(registry
                                    .AddCounter("chord_shard_cache_stall_seconds_total",
                                                "Time steps waited for weight shards.")
                                    .With({})) {}

LoaderMetrics::LoaderMetrics(Registry& registry)
    : bytes_sent(registry
                     .AddCounter("chord_loader_bytes_sent_total",
                                 "Tensor bytes the loader sent to workers and the coordinator.")
                     .With({})),
      requests(registry.AddCounter("chord_loader_requests_total",
                                   "Requests the loader answered, by kind.", {"kind"})) {}

}  // namespace chord::metrics
