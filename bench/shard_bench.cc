// Shard-cache benchmark: one stage holding a whole model, its weights served
// by a real chord-loader process (ipc or tcp, optionally paced with
// --max-bandwidth), decoding micro-batches of B sequences. Configurations:
//   (a) resident: every weight in memory (budget unlimited);
//   (b) streamed, prefetch off: budget a quarter of the shard, depth 0;
//   (c) streamed, prefetch on: same budget, depth derived (1-2).
// For each: aggregate decode tok/s (from the median step time), the fraction
// of time the stage stalled waiting for weights, bytes streamed per step, the
// bandwidth-bound speed (B x link rate / bytes per step, the link rate measured
// by fetching every layer once without compute), and the process's peak RSS
// against its budget. Prints a Markdown table (BENCHMARKS.md, "Shard cache").
//
//   shard_bench --bin-dir build/bin --model tinyllama-q4km.gguf --threads 2
//       --batches 1,4,8,16,32 --bandwidths 0,200M --transport ipc --steps 6
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_timing.h"
#include "cli/serve/child_process.h"
#include "common/base/log.h"
#include "common/base/status.h"
#include "common/config/cluster_config.h"
#include "common/model/model_config.h"
#include "kernels/cpu/thread_pool.h"
#include "loader/client/loader_client.h"
#include "worker/kv_cache.h"
#include "worker/models/llama.h"
#include "worker/shard/stage_weights.h"
#include "zmq.hpp"

namespace chord {
namespace {

using bench::Clock;
using bench::Median;
using bench::Seconds;

// VmHWM / VmRSS of this process in bytes.
uint64_t StatusBytes(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream fields(line.substr(key.size() + 1));
      uint64_t kib = 0;
      fields >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

// Starts the peak-RSS count over (Linux: "5" to clear_refs resets VmHWM).
void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

struct Setup {
  std::string name;
  uint64_t budget = 0;  // 0: resident
  int depth = -1;
};

struct Row {
  std::string setup;
  int batch = 0;
  double tok_s = 0;
  double stall_fraction = 0;
  double mib_per_step = 0;
  double bound_tok_s = 0;  // min(resident, bandwidth-bound); 0 when unknown
  uint64_t peak_rss = 0;
  uint64_t budget = 0;
  uint64_t kv_bytes = 0;
  double fetch_ms = 0, compute_ms = 0;
  int depth = 0;
};

class Bench {
 public:
  Bench(zmq::context_t& context, std::string endpoint, bool local_reads, int threads, int steps,
        int64_t n_ctx)
      : context_(context),
        endpoint_(std::move(endpoint)),
        local_reads_(local_reads),
        pool_(threads),
        steps_(steps),
        n_ctx_(n_ctx) {}

  absl::Status Connect() {
    ASSIGN_OR_RETURN(client_, NewClient());
    ASSIGN_OR_RETURN(LoaderModelInfo info, client_->FetchModelInfo());
    header_ = std::move(info.header);
    ASSIGN_OR_RETURN(config_, ReadModelConfig(*header_));
    range_ = {0, config_.n_layer};
    ASSIGN_OR_RETURN(shard_bytes_, FetchedTensors::BytesNeeded(
                                       *header_, LlamaStage::TensorNames(config_, range_)));
    return absl::OkStatus();
  }

  uint64_t shard_bytes() const { return shard_bytes_; }

  // Bytes/s of fetching every layer, nothing else running (the second of two
  // passes: the first warms the loader's checksum memo and the page cache).
  absl::StatusOr<double> MeasureLink() {
    double rate = 0;
    for (int pass = 0; pass < 2; ++pass) {
      uint64_t bytes = 0;
      const Clock::time_point start = Clock::now();
      for (int64_t l = range_.first; l < range_.end; ++l) {
        ASSIGN_OR_RETURN(
            std::unique_ptr<FetchedTensors> layer,
            FetchedTensors::FetchBatch(*header_, LlamaStage::LayerTensorNames(l),
                                       [this](std::span<const gguf::TensorRead> reads) {
                                         return client_->FetchTensors(reads);
                                       }));
        bytes += layer->bytes();
      }
      rate = static_cast<double>(bytes) / Seconds(start);
    }
    return rate;
  }

  absl::StatusOr<Row> Run(const Setup& setup, int batch) {
    ResetPeakRss();
    StageWeightsOptions options;
    options.label = "shard_bench";
    options.loader_endpoint = endpoint_;
    options.memory_budget_bytes = setup.budget;
    options.prefetch_depth = setup.depth;
    ASSIGN_OR_RETURN(StageWeights weights, FetchStageWeights(
                                               config_, header_, range_, *client_,
                                               [this] { return NewClient(); }, options));
    ASSIGN_OR_RETURN(
        std::unique_ptr<LlamaStage> stage,
        LlamaStage::Load(*weights.tensors, config_, range_, pool_, weights.layers.get()));
    KvCacheShape shape{config_.n_layer, batch, n_ctx_, config_.n_embd_kv(), DType::kF32};
    ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(shape));
    RETURN_IF_ERROR(cache.ReserveAll());
    const uint64_t kv_bytes = cache.bytes();
    std::mt19937 rng(17);
    std::uniform_int_distribution<int32_t> token(3, static_cast<int32_t>(config_.n_vocab - 1));
    std::vector<float> x(static_cast<size_t>(batch * config_.n_embd));
    std::vector<float> logits(static_cast<size_t>(batch * config_.n_vocab));
    std::vector<double> step_seconds;
    ShardCacheStats before;
    Clock::time_point measured_from;
    // One warm-up step (the cache settles, the depth is measured), then `steps_`.
    for (int step = 0; step <= steps_; ++step) {
      if (step == 1) {
        if (weights.layers) before = weights.layers->Stats();
        measured_from = Clock::now();
      }
      const Clock::time_point start = Clock::now();
      std::vector<int32_t> tokens(static_cast<size_t>(batch));
      std::vector<BatchToken> rows(static_cast<size_t>(batch));
      for (int b = 0; b < batch; ++b) {
        tokens[static_cast<size_t>(b)] = token(rng);
        rows[static_cast<size_t>(b)] = BatchToken{b, step};
      }
      RETURN_IF_ERROR(stage->Embed(tokens, x.data()));
      RETURN_IF_ERROR(stage->RunLayers(rows, x.data(), cache));
      RETURN_IF_ERROR(stage->Logits(x.data(), batch, logits.data()));
      if (step > 0) step_seconds.push_back(Seconds(start));
    }
    const double elapsed = Seconds(measured_from);
    Row row;
    row.setup = setup.name;
    row.batch = batch;
    row.tok_s = batch / Median(step_seconds);
    row.peak_rss = StatusBytes("VmHWM");
    row.budget = setup.budget;
    row.kv_bytes = kv_bytes;
    if (weights.layers) {
      const ShardCacheStats after = weights.layers->Stats();
      row.stall_fraction = (after.stall_seconds - before.stall_seconds) / elapsed;
      row.mib_per_step =
          static_cast<double>(after.bytes_fetched - before.bytes_fetched) / steps_ / 1048576.0;
      row.fetch_ms = after.fetch_seconds_per_layer * 1e3;
      row.compute_ms = after.compute_seconds_per_layer * 1e3;
      row.depth = after.prefetch_depth;
    }
    return row;
  }

 private:
  absl::StatusOr<std::unique_ptr<LoaderClient>> NewClient() {
    LoaderClientOptions options;
    options.node_id = "shard_bench";
    options.timeout = std::chrono::milliseconds(30000);  // paced links queue chunks
    options.local_reads = local_reads_;
    return LoaderClient::Connect(context_, endpoint_, "", options);
  }

  zmq::context_t& context_;
  std::string endpoint_;
  bool local_reads_;
  ThreadPool pool_;
  int steps_;
  int64_t n_ctx_;
  std::unique_ptr<LoaderClient> client_;
  std::shared_ptr<gguf::GgufFile> header_;
  ModelConfig config_;
  LayerRange range_;
  uint64_t shard_bytes_ = 0;
};

std::vector<std::string> Split(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ',')) parts.push_back(part);
  return parts;
}

int Main(int argc, char** argv) {
  CLI::App app{"shard_bench: decode speed of a stage whose weights stream through the shard cache"};
  std::string bin_dir = "build/bin", model, batches = "1,4,8,16,32", bandwidths = "0,200M",
              transport = "shm";
  int threads = 2, steps = 6;
  int64_t n_ctx = 64;
  double budget_fraction = 0.25;
  app.add_option("--bin-dir", bin_dir, "where chord-loader is")->capture_default_str();
  app.add_option("--model", model, "GGUF model")->required();
  app.add_option("--threads", threads, "compute threads")->capture_default_str();
  app.add_option("--steps", steps, "measured decode steps per row (after one warm-up step)")
      ->capture_default_str();
  app.add_option("--batches", batches, "micro-batch sizes")->capture_default_str();
  app.add_option("--bandwidths", bandwidths, "loader --max-bandwidth values (0: unlimited)")
      ->capture_default_str();
  app.add_option("--transport", transport,
                 "shm (ipc + the file mapped by the client, checksums over the socket), ipc or tcp")
      ->capture_default_str()
      ->check(CLI::IsMember({"shm", "ipc", "tcp"}));
  app.add_option("--budget-fraction", budget_fraction,
                 "streaming budget as a fraction of the shard")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  log::Init(log::Level::kWarn, false);

  std::printf("process RSS before any weights: %.0f MiB\n\n", StatusBytes("VmRSS") / 1048576.0);
  std::vector<int> batch_sizes;
  for (const std::string& b : Split(batches)) batch_sizes.push_back(std::stoi(b));
  std::printf(
      "| link | setup | batch | tok/s | stalled | MiB/step | bound tok/s | vs bound | "
      "fetch/compute ms per layer "
      "| depth | peak RSS MiB | budget MiB | KV MiB | RSS - budget - KV |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  std::vector<double> resident_tok_s(batch_sizes.size(), 0);
  for (const std::string& bandwidth : Split(bandwidths)) {
    absl::StatusOr<uint64_t> rate = ParseByteSize(bandwidth);
    if (!rate.ok()) {
      std::fprintf(stderr, "shard_bench: --bandwidths: %s\n",
                   std::string(rate.status().message()).c_str());
      return 2;
    }
    const std::string bind = transport != "tcp"
                                 ? absl::StrCat("ipc:///tmp/shard-bench-", getpid(), ".ipc")
                                 : std::string("tcp://127.0.0.1:0");
    auto loader = serve::ChildProcess::Start(
        "loader", bin_dir + "/chord-loader",
        {"--model", model, "--bind", bind, "--max-bandwidth", bandwidth, "--log-level", "warn"});
    if (!loader.ok()) {
      std::fprintf(stderr, "shard_bench: %s\n", loader.status().ToString().c_str());
      return 1;
    }
    absl::StatusOr<std::string> endpoint =
        (*loader)->WaitForLine("chord-loader listening on", std::chrono::seconds(300));
    if (!endpoint.ok()) {
      std::fprintf(stderr, "shard_bench: loader: %s\n", endpoint.status().ToString().c_str());
      return 1;
    }
    zmq::context_t context(1);
    Bench bench(context, *endpoint, transport == "shm", threads, steps, n_ctx);
    absl::Status status = bench.Connect();
    absl::StatusOr<double> link =
        status.ok() ? bench.MeasureLink() : absl::StatusOr<double>(status);
    if (!link.ok()) {
      std::fprintf(stderr, "shard_bench: %s\n", link.status().ToString().c_str());
      return 1;
    }
    const std::string link_name = absl::StrFormat(
        "%s %s (%.0f MiB/s)", transport, *rate == 0 ? "unlimited" : bandwidth, *link / 1048576.0);
    const auto budget =
        static_cast<uint64_t>(budget_fraction * static_cast<double>(bench.shard_bytes()));
    std::vector<Setup> setups = {{"(b) streamed, prefetch off", budget, 0},
                                 {"(c) streamed, prefetch on", budget, -1}};
    if (resident_tok_s[0] == 0) setups.insert(setups.begin(), Setup{"(a) resident", 0, -1});
    for (const Setup& setup : setups) {
      for (size_t i = 0; i < batch_sizes.size(); ++i) {
        absl::StatusOr<Row> row = bench.Run(setup, batch_sizes[i]);
        if (!row.ok()) {
          std::fprintf(stderr, "shard_bench: %s, batch %d: %s\n", setup.name.c_str(),
                       batch_sizes[i], row.status().ToString().c_str());
          return 1;
        }
        if (setup.budget == 0) resident_tok_s[i] = row->tok_s;
        if (setup.budget > 0 && row->mib_per_step > 0) {
          const double bandwidth_bound = row->batch * *link / (row->mib_per_step * 1048576.0);
          row->bound_tok_s = std::min(resident_tok_s[i], bandwidth_bound);
        }
        const uint64_t held = row->budget > 0 ? row->budget : bench.shard_bytes();
        const double overhead_mib =
            (static_cast<double>(row->peak_rss) - static_cast<double>(held) -
             static_cast<double>(row->kv_bytes)) /
            1048576.0;
        std::printf(
            "| %s | %s | %d | %.2f | %.0f%% | %.1f | %s | %s | %s | %s | %.0f | %s | %.0f | %.0f "
            "|\n",
            link_name.c_str(), row->setup.c_str(), row->batch, row->tok_s,
            100 * row->stall_fraction, row->mib_per_step,
            row->bound_tok_s > 0 ? absl::StrFormat("%.2f", row->bound_tok_s).c_str() : "",
            row->bound_tok_s > 0 ? absl::StrFormat("%.2f", row->tok_s / row->bound_tok_s).c_str()
                                 : "",
            row->budget > 0 ? absl::StrFormat("%.1f / %.1f", row->fetch_ms, row->compute_ms).c_str()
                            : "",
            row->budget > 0 ? std::to_string(row->depth).c_str() : "", row->peak_rss / 1048576.0,
            row->budget > 0 ? absl::StrFormat("%.0f", row->budget / 1048576.0).c_str() : "all",
            row->kv_bytes / 1048576.0, overhead_mib);
        std::fflush(stdout);
      }
    }
    (*loader)->Stop(std::chrono::seconds(5));
  }
  return 0;
}

}  // namespace
}  // namespace chord

int main(int argc, char** argv) { return chord::Main(argc, argv); }
