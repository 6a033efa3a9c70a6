// serve_bench: decode speed of `chord generate` in one process against the
// same model served by loader + coordinator + 1, 2, 3 workers (through gRPC),
// aggregate throughput of 1, 4 and 8 concurrent streams, and the inter-token
// latency of running streams while a 1,000-token prompt arrives. Prints tables
// (median of --runs runs). Not a test: numbers depend on the machine.
//
//   serve_bench --model a.gguf,b.gguf [--runs 3] [--tokens 64] [--threads 0]
//
// With --gpus N (CUDA workers): one worker on one GPU with its steps chained
// (the coordinator's default) and not, then, for N >= 2, N workers one per
// GPU, with NCCL links between them and with --no-nccl (activations through
// host memory and ZeroMQ): greedy tokens compared with one GPU,
// batch-1 decode, and aggregate tok/s of 64 and 128 concurrent sequences
// (128-token prompts, 128 new tokens each): over the wall time, prompts
// included, and while every stream decodes.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "httplib.h"

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "chord/v1/inference.grpc.pb.h"
#include "cli/serve/child_process.h"
#include "cli/serve/free_port.h"
#include "cli/serve/local_cluster.h"

namespace chord {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchFlags {
  std::vector<std::string> models;
  std::string bin_dir;
  int runs = 3;
  int tokens = 64;
  int threads = 0;  // per process; 0: cores / workers
  std::string backend = "cpu";  // the workers' (the in-process baseline runs on the CPU)
  int gpus = 0;                 // >= 1: the GPU pipeline table instead
  std::string child_log_level = "warn";  // the coordinator's and workers' (--log-level)
  int busy_poll_us = -1;                  // the coordinator's and workers'; -1: their default
  int nccl_min_rows = 0;                  // the workers' --nccl-min-rows; 0: their default
  bool chain_steps = true;                // the coordinator's (CPU table)
};

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double Median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(p * static_cast<double>(values.size())));
  return values[index];
}

int ThreadsFor(const BenchFlags& flags, int processes) {
  if (flags.threads > 0) return flags.threads;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / processes);
}

// `chord generate` reports "... tokens generated (X tok/s)" on stderr.
double InProcessTokensPerSecond(const BenchFlags& flags, const std::string& model) {
  auto chord = serve::ChildProcess::Start(
      "chord", flags.bin_dir + "/chord",
      {"generate", "--model", model, "--prompt", "Once upon a time", "--temperature", "0", "--ignore-eos",
       "--max-tokens", std::to_string(flags.tokens), "--ctx-size", "2048", "--threads",
       std::to_string(ThreadsFor(flags, 1))});
  if (!chord.ok()) return 0.0;
  absl::StatusOr<std::string> line = (*chord)->WaitForLine("tokens generated (", std::chrono::minutes(5));
  (*chord)->Stop(std::chrono::seconds(5));
  return line.ok() ? std::atof(line->c_str()) : 0.0;
}

struct Stream {
  int tokens = 0;
  Clock::time_point first;
  Clock::time_point last;
  std::vector<Clock::time_point> arrivals;  // one per message with tokens
  std::vector<int> arrival_tokens;          // tokens in each of those messages
  std::vector<uint32_t> ids;
  std::string error;  // when the call failed
};

Stream RunStream(v1::Inference::Stub& stub, const v1::GenerateRequest& request) {
  Stream stream;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.token_ids_size() == 0) continue;
    const Clock::time_point now = Clock::now();
    if (stream.tokens == 0) stream.first = now;
    stream.last = now;
    stream.tokens += response.token_ids_size();
    stream.ids.insert(stream.ids.end(), response.token_ids().begin(), response.token_ids().end());
    stream.arrivals.push_back(now);
    stream.arrival_tokens.push_back(response.token_ids_size());
  }
  if (const grpc::Status status = reader->Finish(); !status.ok()) {
    stream.tokens = 0;
    stream.error = absl::StrCat(static_cast<int>(status.error_code()), ": ", status.error_message());
  }
  return stream;
}

v1::GenerateRequest DecodeRequest(int max_tokens, uint64_t seed) {
  v1::GenerateRequest request;
  request.set_prompt("Once upon a time");
  request.set_max_tokens(static_cast<uint32_t>(max_tokens));
  request.set_ignore_eos(true);
  request.mutable_sampling()->set_temperature(seed == 0 ? 0.0f : 0.8f);
  request.mutable_sampling()->set_seed(seed);
  return request;
}

// Decode speed of one stream: tokens after the first over the time they took.
double SingleStreamTokensPerSecond(v1::Inference::Stub& stub, int tokens) {
  Stream stream = RunStream(stub, DecodeRequest(tokens, 0));
  if (stream.tokens < 2) return 0.0;
  return (stream.tokens - 1) / Seconds(stream.last - stream.first);
}

// A prompt of `length` token ids (varied by `seed`), sampled at temperature 0.8.
v1::GenerateRequest LongPromptRequest(int length, int max_tokens, uint64_t seed) {
  v1::GenerateRequest request;
  for (int i = 0; i < length; ++i) {
    request.mutable_prompt_token_ids()->add_ids(static_cast<uint32_t>(10 + (i * 7 + seed * 13) % 500));
  }
  request.set_max_tokens(static_cast<uint32_t>(max_tokens));
  request.set_ignore_eos(true);
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_seed(seed);
  return request;
}

// Aggregate speed of `n` concurrent streams: all their tokens over the wall
// time (prompts included), and the decode rate while every stream decodes
// (the tokens that arrive between the last stream's first token and the
// first stream's last, over that window).
struct Aggregate {
  double wall_tok_s = 0.0;
  double steady_tok_s = 0.0;
};

// With `prompt_tokens` > 0 each stream's prompt is that many token ids.
Aggregate AggregateTokensPerSecond(v1::Inference::Stub& stub, int n, int tokens, int prompt_tokens = 0) {
  std::vector<Stream> streams(n);
  std::vector<std::thread> threads;
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      streams[i] = RunStream(stub, prompt_tokens > 0 ? LongPromptRequest(prompt_tokens, tokens, 1 + i)
                                                     : DecodeRequest(tokens, 1 + i));
    });
  }
  for (std::thread& thread : threads) thread.join();
  const Clock::time_point end = Clock::now();
  int total = 0, failed = 0;
  Clock::time_point all_decoding = start, one_done = end;
  for (const Stream& stream : streams) {
    total += stream.tokens;
    if (!stream.error.empty() && failed++ == 0) {
      std::fprintf(stderr, "aggregate of %d streams: a stream failed: %s\n", n, stream.error.c_str());
    }
    if (stream.tokens == 0) continue;
    all_decoding = std::max(all_decoding, stream.first);
    one_done = std::min(one_done, stream.last);
  }
  if (failed > 0) std::fprintf(stderr, "aggregate of %d streams: %d failed\n", n, failed);
  Aggregate result{total / Seconds(end - start), 0.0};
  if (failed == 0 && one_done > all_decoding) {
    int window = 0;
    for (const Stream& stream : streams) {
      for (size_t i = 0; i < stream.arrivals.size(); ++i) {
        if (stream.arrivals[i] > all_decoding && stream.arrivals[i] <= one_done) window += stream.arrival_tokens[i];
      }
    }
    result.steady_tok_s = window / Seconds(one_done - all_decoding);
  }
  return result;
}

struct Latency {
  double median_ms = 0;
  double p99_ms = 0;
  double prefill_s = 0;
};

// Inter-token gaps of 4 running streams while a 1,000-token prompt is
// prefilled (from its submission to its first token).
Latency LatencyUnderPrefill(v1::Inference::Stub& stub, int tokens) {
  std::vector<Stream> streams(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] { streams[i] = RunStream(stub, DecodeRequest(tokens * 4, 100 + i)); });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the streams are decoding
  v1::GenerateRequest big;
  for (int i = 0; i < 1000; ++i) big.mutable_prompt_token_ids()->add_ids(static_cast<uint32_t>(10 + (i * 7) % 200));
  big.set_max_tokens(1);
  big.mutable_sampling()->set_temperature(0.0f);
  const Clock::time_point submitted = Clock::now();
  Stream prefill = RunStream(stub, big);
  const Clock::time_point answered = prefill.tokens > 0 ? prefill.first : Clock::now();
  for (std::thread& thread : threads) thread.join();
  std::vector<double> gaps;
  for (const Stream& stream : streams) {
    for (size_t i = 1; i < stream.arrivals.size(); ++i) {
      if (stream.arrivals[i] < submitted || stream.arrivals[i - 1] > answered) continue;
      gaps.push_back(1000.0 * Seconds(stream.arrivals[i] - stream.arrivals[i - 1]));
    }
  }
  return {Median(gaps), Percentile(gaps, 0.99), Seconds(answered - submitted)};
}

// A child process's output line on stderr, after its name (step_timeline.py reads them).
void EchoChildLine(const std::string& child, std::string_view line) {
  std::fprintf(stderr, "[%s] %.*s\n", child.c_str(), static_cast<int>(line.size()), line.data());
}

void BenchModel(const BenchFlags& flags, const std::string& model) {
  std::printf("\nmodel %s, %d tokens per stream, median of %d runs\n", model.c_str(), flags.tokens, flags.runs);
  std::vector<double> local;
  for (int r = 0; r < flags.runs; ++r) local.push_back(InProcessTokensPerSecond(flags, model));
  std::printf("| setup | decode tok/s (1 stream) | 4 streams tok/s | 8 streams tok/s | ITL median ms | "
              "ITL p99 ms | 1000-token prefill s |\n|---|---|---|---|---|---|---|\n");
  std::printf("| in-process (%d threads) | %.1f | | | | | |\n", ThreadsFor(flags, 1), Median(local));
  std::fflush(stdout);
  for (int workers = 1; workers <= 3; ++workers) {
    serve::LocalClusterOptions options;
    options.bin_dir = flags.bin_dir;
    options.model = model;
    options.workers = workers;
    options.kv_slots = 9;
    options.ctx_size = 2048;
    options.threads_per_worker = ThreadsFor(flags, workers);
    options.log_args = {"--log-level", flags.child_log_level};
    options.on_line = EchoChildLine;
    options.worker_args = {"--backend", flags.backend};
    if (!flags.chain_steps) options.coordinator_args.push_back("--no-chain-steps");
    std::fprintf(stderr, "=== setup: %d workers\n", workers);
    auto cluster = serve::LocalCluster::Start(options);
    if (!cluster.ok()) {
      std::printf("| %d workers | failed: %s |\n", workers, cluster.status().ToString().c_str());
      continue;
    }
    auto stub = v1::Inference::NewStub(
        grpc::CreateChannel((*cluster)->grpc_address(), grpc::InsecureChannelCredentials()));
    SingleStreamTokensPerSecond(*stub, 8);  // warm-up
    std::vector<double> one, four, eight, itl_median, itl_p99, prefill;
    for (int r = 0; r < flags.runs; ++r) {
      one.push_back(SingleStreamTokensPerSecond(*stub, flags.tokens));
      four.push_back(AggregateTokensPerSecond(*stub, 4, flags.tokens).wall_tok_s);
      eight.push_back(AggregateTokensPerSecond(*stub, 8, flags.tokens).wall_tok_s);
      Latency latency = LatencyUnderPrefill(*stub, flags.tokens);
      itl_median.push_back(latency.median_ms);
      itl_p99.push_back(latency.p99_ms);
      prefill.push_back(latency.prefill_s);
    }
    const std::string per_worker = flags.backend == "cuda" ? std::string("GPU")
                                                            : absl::StrCat(options.threads_per_worker, " threads");
    std::printf("| chord serve, %d worker%s x %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f |\n", workers,
                workers == 1 ? "" : "s", per_worker.c_str(), Median(one), Median(four), Median(eight),
                Median(itl_median), Median(itl_p99), Median(prefill));
    std::fflush(stdout);
    (*cluster)->Stop(std::chrono::seconds(10));
  }
}

// Greedy tokens of a few prompts, one at a time (batch 1: the same kernels
// whatever the split).
std::vector<std::vector<uint32_t>> GreedyTokens(v1::Inference::Stub& stub, int tokens) {
  std::vector<std::vector<uint32_t>> out;
  for (const char* prompt : {"Once upon a time", "The capital of France is", "def fibonacci(n):"}) {
    v1::GenerateRequest request;
    request.set_prompt(prompt);
    request.set_max_tokens(static_cast<uint32_t>(tokens));
    request.set_ignore_eos(true);
    request.mutable_sampling()->set_temperature(0.0f);
    out.push_back(RunStream(stub, request).ids);
  }
  return out;
}

// A worker's decode steps so far, from its /metrics: their count and the
// seconds they took inside the worker (from the step's arrival to the
// result sent on). {0, 0} when the metrics cannot be read.
struct StepTotals {
  double count = 0.0, seconds = 0.0;
};
StepTotals WorkerDecodeSteps(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(5, 0);
  const httplib::Result response = client.Get("/metrics");
  StepTotals totals;
  if (!response || response->status != 200) return totals;
  const auto value_of = [&](const std::string& series) {
    const size_t at = response->body.find(series + " ");
    return at == std::string::npos ? 0.0 : std::atof(response->body.c_str() + at + series.size() + 1);
  };
  totals.count = value_of("chord_stage_step_seconds_count{phase=\"decode\"}");
  totals.seconds = value_of("chord_stage_step_seconds_sum{phase=\"decode\"}");
  return totals;
}

void BenchGpus(const BenchFlags& flags, const std::string& model) {
  constexpr int kPrompt = 128, kNew = 128, kMaxStreams = 128;
  std::printf("\nmodel %s on %d GPUs, median of %d runs; batch-1 decode over %d tokens; aggregate: "
              "%d-token prompts, %d new tokens each\n",
              model.c_str(), flags.gpus, flags.runs, flags.tokens, kPrompt, kNew);
  std::printf("| setup | greedy tokens = 1 GPU | batch-1 tok/s | ms/token | 64 seqs tok/s | 128 seqs tok/s | "
              "64 seqs decoding tok/s | 128 seqs decoding tok/s |\n"
              "|---|---|---|---|---|---|---|---|\n");
  struct Setup {
    std::string name;
    int workers;
    bool nccl;
    bool chained = true;     // the coordinator's --chain-steps
    bool one_gpu = false;    // every worker on GPU 0
  };
  // One GPU with its steps chained (the default) and without; on one GPU,
  // two stages there too (a ZeroMQ hop between them); then the pipelines over
  // several GPUs.
  std::vector<Setup> setups = {{"1 worker, 1 GPU", 1, true},
                               {"1 worker, 1 GPU, steps not chained", 1, true, false}};
  if (flags.gpus == 1) {
    setups.push_back({"2 workers on 1 GPU", 2, false, true, true});
    setups.push_back({"2 workers on 1 GPU, steps not chained", 2, false, false, true});
  }
  if (flags.gpus >= 2) {
    setups.push_back({absl::StrCat(flags.gpus, " workers, 1 GPU each, NCCL"), flags.gpus, true});
    setups.push_back({absl::StrCat(flags.gpus, " workers, 1 GPU each, ZeroMQ"), flags.gpus, false});
  }
  std::vector<std::vector<uint32_t>> reference;
  double one_gpu_128 = 0.0, one_gpu_batch1 = 0.0, one_gpu_steady_128 = 0.0;
  for (const Setup& setup : setups) {
    serve::LocalClusterOptions options;
    options.bin_dir = flags.bin_dir;
    options.model = model;
    options.workers = setup.workers;
    for (int d = 0; d < setup.workers; ++d) options.worker_devices.push_back(setup.one_gpu ? 0 : d);
    options.kv_slots = kMaxStreams;
    options.ctx_size = kPrompt + kNew + 64;
    options.log_args = {"--log-level", flags.child_log_level};
    options.on_line = EchoChildLine;
    options.worker_args = {"--backend", flags.backend};
    if (!setup.nccl) options.worker_args.push_back("--no-nccl");
    if (flags.nccl_min_rows > 0) {
      options.worker_args.insert(options.worker_args.end(),
                                 {"--nccl-min-rows", std::to_string(flags.nccl_min_rows)});
    }
    // The workers' metrics say how much of a step each spends inside it
    // (the rest of a token is the hops, the coordinator and waiting).
    std::vector<int> metrics_ports;
    for (int w = 0; w < setup.workers; ++w) {
      metrics_ports.push_back(serve::FreeLoopbackPort());
      options.per_worker_args.push_back({"--metrics-port", std::to_string(metrics_ports.back()),
                                         "--metrics-host", "127.0.0.1"});
    }
    options.coordinator_args = {"--kv-tokens", std::to_string(options.kv_slots * options.ctx_size),
                                "--kv-type", "f16"};
    if (!setup.chained) options.coordinator_args.push_back("--no-chain-steps");
    if (flags.busy_poll_us >= 0) {
      for (auto* args : {&options.coordinator_args, &options.worker_args}) {
        args->insert(args->end(), {"--busy-poll-us", std::to_string(flags.busy_poll_us)});
      }
    }
    // Splits the children's lines (stderr) by setup, for bench/step_timeline.py.
    std::fprintf(stderr, "=== setup: %s\n", setup.name.c_str());
    auto cluster = serve::LocalCluster::Start(options);
    if (!cluster.ok()) {
      std::printf("| %s | failed: %s |\n", setup.name.c_str(), cluster.status().ToString().c_str());
      continue;
    }
    auto stub = v1::Inference::NewStub(
        grpc::CreateChannel((*cluster)->grpc_address(), grpc::InsecureChannelCredentials()));
    const std::vector<std::vector<uint32_t>> greedy = GreedyTokens(*stub, 32);
    if (reference.empty()) reference = greedy;
    SingleStreamTokensPerSecond(*stub, 8);  // warm-up
    std::vector<double> one, s64, s128, steady64, steady128;
    // Per worker: decode steps of the batch-1 runs, of the 128-stream runs.
    std::vector<StepTotals> in_batch1(metrics_ports.size()), in_128(metrics_ports.size());
    const auto count_steps = [&](std::vector<StepTotals>& totals, const auto& run) {
      std::vector<StepTotals> before;
      for (const int port : metrics_ports) before.push_back(WorkerDecodeSteps(port));
      run();
      for (size_t w = 0; w < metrics_ports.size(); ++w) {
        const StepTotals after = WorkerDecodeSteps(metrics_ports[w]);
        totals[w].count += after.count - before[w].count;
        totals[w].seconds += after.seconds - before[w].seconds;
      }
    };
    for (int r = 0; r < flags.runs; ++r) {
      count_steps(in_batch1, [&] { one.push_back(SingleStreamTokensPerSecond(*stub, flags.tokens)); });
      const Aggregate a64 = AggregateTokensPerSecond(*stub, 64, kNew, kPrompt);
      Aggregate a128;
      count_steps(in_128,
                  [&] { a128 = AggregateTokensPerSecond(*stub, kMaxStreams, kNew, kPrompt); });
      s64.push_back(a64.wall_tok_s);
      s128.push_back(a128.wall_tok_s);
      steady64.push_back(a64.steady_tok_s);
      steady128.push_back(a128.steady_tok_s);
    }
    const double batch1 = Median(one), agg128 = Median(s128), steady = Median(steady128);
    if (one_gpu_batch1 == 0.0) {
      one_gpu_batch1 = batch1;
      one_gpu_128 = agg128;
      one_gpu_steady_128 = steady;
    }
    std::printf("| %s | %s | %.1f (%.2fx) | %.2f | %.0f | %.0f (%.2fx) | %.0f | %.0f (%.2fx) |\n",
                setup.name.c_str(), greedy == reference && !greedy[0].empty() ? "yes" : "NO", batch1,
                batch1 / one_gpu_batch1, batch1 > 0 ? 1000.0 / batch1 : 0.0, Median(s64), agg128,
                agg128 / one_gpu_128, Median(steady64), steady, steady / one_gpu_steady_128);
    // A decode step inside each worker, against the wall time of a token
    // (batch 1) or of a step of all 128 streams (steady decoding).
    const auto inside = [](const std::vector<StepTotals>& totals) {
      std::string out;
      for (size_t w = 0; w < totals.size(); ++w) {
        if (totals[w].count <= 0) continue;
        absl::StrAppendFormat(&out, "%sw%d %.3f ms x %.0f", out.empty() ? "" : ", ", w,
                              1000.0 * totals[w].seconds / totals[w].count, totals[w].count);
      }
      return out.empty() ? std::string("no metrics") : out;
    };
    std::printf("(%s: a decode step inside each worker: batch 1 %s (a token %.3f ms); 128 streams %s "
                "(a step of all 128 while steady %.3f ms))\n",
                setup.name.c_str(), inside(in_batch1).c_str(), batch1 > 0 ? 1000.0 / batch1 : 0.0,
                inside(in_128).c_str(), steady > 0 ? 1000.0 * kMaxStreams / steady : 0.0);
    std::fflush(stdout);
    (*cluster)->Stop(std::chrono::seconds(10));
  }
}

}  // namespace
}  // namespace chord

int main(int argc, char** argv) {
  chord::BenchFlags flags;
  CLI::App app{"serve_bench: in-process vs served decode speed, concurrency and latency under prefill"};
  app.add_option("--model", flags.models, "GGUF models (comma-separated or repeated)")->required()->delimiter(',');
  app.add_option("--bin-dir", flags.bin_dir, "directory of chord and the chord-* binaries (default: this one's)");
  app.add_option("--runs", flags.runs, "runs per measurement (the median is printed)")->capture_default_str();
  app.add_option("--tokens", flags.tokens, "tokens per stream")->capture_default_str();
  app.add_option("--threads", flags.threads, "threads per process (0: cores / processes)")->capture_default_str();
  app.add_option("--child-log-level", flags.child_log_level,
                 "the --log-level of the coordinator and workers (debug: a line per pipeline "
                 "step with its timing, on stderr)")
      ->capture_default_str();
  app.add_option("--nccl-min-rows", flags.nccl_min_rows,
                 "with --gpus: the workers' --nccl-min-rows (0: their default)")
      ->capture_default_str();
  app.add_option("--busy-poll-us", flags.busy_poll_us,
                 "with --gpus: the coordinator's and workers' --busy-poll-us (-1: their default)")
      ->capture_default_str();
  app.add_flag("--chain-steps,!--no-chain-steps", flags.chain_steps,
               "without --gpus: the coordinator's --chain-steps (with --gpus both are measured)");
  app.add_option("--backend", flags.backend, "the workers' backend: cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--gpus", flags.gpus,
                 "one GPU with its steps chained and not; N >= 2: then N GPUs, one CUDA worker each "
                 "(NCCL links, then ZeroMQ)")
      ->check(CLI::Range(1, 64));
  CLI11_PARSE(app, argc, argv);
  if (flags.bin_dir.empty()) flags.bin_dir = chord::serve::SelfDirectory();
  for (const std::string& model : flags.models) {
    if (flags.gpus >= 1) {
      chord::BenchGpus(flags, model);
    } else {
      chord::BenchModel(flags, model);
    }
  }
  return 0;
}
