// CPU benchmark: for each GGUF model given, decode tok/s, prefill tok/s for
// 64- and 512-token prompts, batched decode (4 and 16 sequences, aggregate
// tok/s), and decode's achieved weight bandwidth against a memory-read
// bandwidth measured in the same run. Prints a Markdown table (BENCHMARKS.md).
//
//   cpu_bench --threads 2 --runs 5 [--weights copy|mmap|both] [--kv-type f32|f16] MODEL.gguf...
//
// Numbers are medians over --runs; every run uses fresh token ids (the
// weights decide the speed, not the ids).
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_timing.h"
#include "common/base/status.h"
#include "common/gguf/gguf_file.h"
#include "common/model/model_config.h"
#include "kernels/cpu/multi_dot.h"
#include "kernels/cpu/thread_pool.h"
#include "worker/kv_cache.h"
#include "worker/models/llama.h"
#include "worker/models/tensor_source.h"

namespace chord {
namespace {

using bench::Clock;
using bench::Median;
using bench::Seconds;

// The tensors of a GGUF file copied into anonymous memory (2 MiB-aligned,
// transparent huge pages requested), instead of read through the file mapping.
class CopiedTensorSource final : public TensorSource {
 public:
  CopiedTensorSource(const gguf::GgufFile& file, const std::vector<std::string>& names) {
    uint64_t total = 0;
    for (const std::string& name : names) {
      if (const gguf::TensorInfo* info = file.FindTensor(name))
        total += (info->n_bytes + 63) & ~uint64_t{63};
    }
    size_ = std::max<uint64_t>(total, 1);
    void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    base_ = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
    if (base_ == nullptr) return;
    madvise(base_, size_, MADV_HUGEPAGE);
    uint64_t offset = 0;
    for (const std::string& name : names) {
      const gguf::TensorInfo* info = file.FindTensor(name);
      if (info == nullptr) continue;
      gguf::TensorInfo copy = *info;
      std::memcpy(base_ + offset, info->data, info->n_bytes);
      copy.data = base_ + offset;
      offset += (info->n_bytes + 63) & ~uint64_t{63};
      tensors_.emplace(name, std::move(copy));
    }
  }
  ~CopiedTensorSource() override {
    if (base_ != nullptr) munmap(base_, size_);
  }
  bool ok() const { return base_ != nullptr; }
  const gguf::TensorInfo* Find(std::string_view name) const override {
    auto it = tensors_.find(std::string(name));
    return it == tensors_.end() ? nullptr : &it->second;
  }

 private:
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  std::unordered_map<std::string, gguf::TensorInfo> tensors_;
};

// Bytes/s that the pool's threads read from a buffer far larger than the caches.
double MeasureReadBandwidth(ThreadPool& pool, int runs) {
  const int64_t n = int64_t{1} << 27;  // 1 GiB of uint64
  std::vector<uint64_t> buffer(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) buffer[static_cast<size_t>(i)] = static_cast<uint64_t>(i);
  std::vector<double> rates;
  std::vector<uint64_t> sinks(static_cast<size_t>(pool.size()) * 8);
  for (int r = 0; r < runs; ++r) {
    const auto start = Clock::now();
    pool.ParallelFor(pool.size(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t lo = n / pool.size() * c,
                      hi = c + 1 == pool.size() ? n : n / pool.size() * (c + 1);
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int64_t i = lo; i + 4 <= hi; i += 4) {
          s0 += buffer[static_cast<size_t>(i)];
          s1 += buffer[static_cast<size_t>(i + 1)];
          s2 += buffer[static_cast<size_t>(i + 2)];
          s3 += buffer[static_cast<size_t>(i + 3)];
        }
        sinks[static_cast<size_t>(c) * 8] = s0 + s1 + s2 + s3;
      }
    });
    rates.push_back(static_cast<double>(n) * 8.0 / Seconds(start));
  }
  return Median(rates);
}

struct Row {
  std::string model, weights;
  double model_mib = 0, decode = 0, prefill64 = 0, prefill512 = 0, batch4 = 0, batch16 = 0,
         bandwidth = 0;
};

class Runner {
 public:
  Runner(LlamaStage& stage, KvCache& cache, std::mt19937& rng)
      : stage_(stage), cache_(cache), rng_(rng), n_embd_(stage.config().n_embd) {}

  // Runs `n_slots` sequences from position `start` for `length` tokens per
  // call, all sequences in one batch; returns seconds.
  double Step(int64_t n_slots, int64_t start, int64_t length) {
    std::vector<int32_t> ids(static_cast<size_t>(n_slots * length));
    std::uniform_int_distribution<int32_t> id(3, static_cast<int32_t>(stage_.config().n_vocab - 1));
    for (int32_t& v : ids) v = id(rng_);
    std::vector<BatchToken> batch;
    for (int64_t s = 0; s < n_slots; ++s) {
      for (int64_t p = 0; p < length; ++p) batch.push_back({s, start + p});
    }
    x_.resize(ids.size() * static_cast<size_t>(n_embd_));
    logits_.resize(static_cast<size_t>(n_slots * stage_.config().n_vocab));
    const auto begin = Clock::now();
    Check(stage_.Embed(ids, x_.data()));
    Check(stage_.RunLayers(batch, x_.data(), cache_));
    // Logits of each sequence's last token only, as generation needs.
    for (int64_t s = 0; s < n_slots; ++s) {
      std::memmove(x_.data() + s * n_embd_, x_.data() + (s * length + length - 1) * n_embd_,
                   static_cast<size_t>(n_embd_) * sizeof(float));
    }
    Check(stage_.Logits(x_.data(), n_slots, logits_.data()));
    return Seconds(begin);
  }

 private:
  static void Check(const absl::Status& status) {
    if (!status.ok()) {
      std::fprintf(stderr, "cpu_bench: %s\n", status.ToString().c_str());
      std::exit(1);
    }
  }
  LlamaStage& stage_;
  KvCache& cache_;
  std::mt19937& rng_;
  int64_t n_embd_;
  std::vector<float> x_, logits_;
};

// Decode tok/s of one sequence after a short prompt; batched decode likewise.
double DecodeRate(Runner& runner, int64_t n_slots, int steps) {
  runner.Step(n_slots, 0, 8);
  double total = 0;
  for (int i = 0; i < steps; ++i) total += runner.Step(n_slots, 8 + i, 1);
  return static_cast<double>(n_slots * steps) / total;
}

Row Measure(const std::string& path, bool copy, DType kv_type, ThreadPool& pool, int runs) {
  auto file = gguf::GgufFile::Open(path);
  if (!file.ok()) {
    std::fprintf(stderr, "cpu_bench: %s\n", file.status().ToString().c_str());
    std::exit(1);
  }
  const ModelConfig config = ReadModelConfig(**file).value();
  const LayerRange range{0, config.n_layer};
  const std::vector<std::string> names = LlamaStage::TensorNames(config, range);
  GgufTensorSource mapped(**file);
  std::unique_ptr<CopiedTensorSource> copied;
  if (copy) copied = std::make_unique<CopiedTensorSource>(**file, names);
  const TensorSource& source = copy ? static_cast<const TensorSource&>(*copied) : mapped;
  auto stage = LlamaStage::Load(source, config, range, pool).value();
  KvCache cache = KvCache::Create({config.n_layer, 16, 576, config.n_embd_kv(), kv_type}).value();
  CHORD_CHECK(cache.ReserveAll().ok());
  std::mt19937 rng(42);
  Runner runner(*stage, cache, rng);

  Row row;
  row.model = path.substr(path.find_last_of('/') + 1);
  row.weights = copy ? "copied" : "mmap";
  uint64_t bytes = 0;
  for (const std::string& name : names) {
    if (const gguf::TensorInfo* info = (*file)->FindTensor(name)) bytes += info->n_bytes;
  }
  row.model_mib = static_cast<double>(bytes) / (1 << 20);
  runner.Step(1, 0, 4);  // warm-up: first touch of every weight page
  std::vector<double> decode, p64, p512, b4, b16;
  for (int r = 0; r < runs; ++r) {
    decode.push_back(DecodeRate(runner, 1, 16));
    p64.push_back(64.0 / runner.Step(1, 0, 64));
    p512.push_back(512.0 / runner.Step(1, 0, 512));
    b4.push_back(DecodeRate(runner, 4, 8));
    b16.push_back(DecodeRate(runner, 16, 8));
  }
  row.decode = Median(decode);
  row.prefill64 = Median(p64);
  row.prefill512 = Median(p512);
  row.batch4 = Median(b4);
  row.batch16 = Median(b16);
  row.bandwidth = static_cast<double>(bytes) * row.decode;
  return row;
}

int Main(int argc, char** argv) {
  CLI::App app{"chord CPU benchmark"};
  std::vector<std::string> models;
  int threads = 2, runs = 5;
  std::string weights = "copy", kv = "f32";
  app.add_option("models", models, "GGUF model files")->required()->check(CLI::ExistingFile);
  app.add_option("--threads", threads, "compute threads");
  app.add_option("--runs", runs, "runs per measurement (median reported)")
      ->check(CLI::Range(1, 100));
  app.add_option("--weights", weights, "hold weights copied in memory, mmap'd, or both")
      ->check(CLI::IsMember({"copy", "mmap", "both"}));
  app.add_option("--kv-type", kv, "KV cache type")->check(CLI::IsMember({"f32", "f16"}));
  CLI11_PARSE(app, argc, argv);

  ThreadPool pool(threads);
  const double read_bw = MeasureReadBandwidth(pool, 5);
  std::printf("kernels: %s, threads: %d, kv: %s, runs: %d, memory read bandwidth: %.1f GB/s\n\n",
              kernels::KernelIsaName(kernels::BestKernelIsa()), threads, kv.c_str(), runs,
              read_bw / 1e9);
  std::printf(
      "| model | weights | MiB | decode tok/s | prefill 64 tok/s | prefill 512 tok/s | "
      "batch 4 tok/s | batch 16 tok/s | decode GB/s | of read bw |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  const DType kv_type = kv == "f16" ? DType::kF16 : DType::kF32;
  for (const std::string& model : models) {
    for (bool copy : {true, false}) {
      if ((copy && weights == "mmap") || (!copy && weights == "copy")) continue;
      const Row r = Measure(model, copy, kv_type, pool, runs);
      std::printf("| %s | %s | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f%% |\n",
                  r.model.c_str(), r.weights.c_str(), r.model_mib, r.decode, r.prefill64,
                  r.prefill512, r.batch4, r.batch16, r.bandwidth / 1e9,
                  100.0 * r.bandwidth / read_bw);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace chord

int main(int argc, char** argv) { return chord::Main(argc, argv); }
