// CPU matrix-product benchmark: MatMul::Run on the weight matrices of one
// layer of a GGUF model (copied into memory), for several token counts and
// kernel instruction sets, in multiply-accumulates per second. The kernels'
// own speed, without attention, norms or thread hand-offs of a whole model.
//
//   matmul_bench --threads 1 --runs 5 [--layer 0] [--matrix ffn_down] [--tokens 1,4,16,64]
//   MODEL.gguf
//
// Each cell is the median of --runs passes over every matrix of the layer.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_timing.h"
#include "common/gguf/gguf_file.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"

namespace chord {
namespace {

using bench::Clock;
using bench::Median;
using bench::Seconds;

struct Matrix {
  std::string name;
  std::vector<uint8_t> bytes;  // a private copy, so the file mapping is not measured
  kernels::WeightMatrix view;
};

std::vector<Matrix> LayerMatrices(const gguf::GgufFile& file, int layer, const std::string& only) {
  static const char* const kNames[] = {"attn_q",   "attn_k", "attn_v",   "attn_output",
                                       "ffn_gate", "ffn_up", "ffn_down", "output"};
  std::vector<Matrix> out;
  for (const char* name : kNames) {
    // The output projection is not in a layer: only when asked for.
    if (only.empty() ? std::string(name) == "output" : only != name) continue;
    const std::string full = std::string(name) == "output"
                                 ? "output.weight"
                                 : "blk." + std::to_string(layer) + "." + name + ".weight";
    const gguf::TensorInfo* info = file.FindTensor(full);
    if (info == nullptr || info->dims.size() != 2) continue;
    Matrix m;
    m.name = name;
    m.bytes.assign(info->data, info->data + info->n_bytes);
    m.view = {info->type, info->rows(), info->cols(), info->n_bytes / info->rows(), nullptr};
    out.push_back(std::move(m));
  }
  for (Matrix& m : out) m.view.data = m.bytes.data();
  return out;
}

int Run(int argc, char** argv) {
  CLI::App app{"chord CPU matrix-product benchmark"};
  std::string path, only;
  int threads = 1, runs = 5, layer = 0;
  std::vector<int> token_counts{1, 4, 16, 64};
  app.add_option("model", path, "GGUF model")->required()->check(CLI::ExistingFile);
  app.add_option("--threads", threads, "compute threads")->check(CLI::PositiveNumber);
  app.add_option("--runs", runs, "passes per cell (median reported)")->check(CLI::PositiveNumber);
  app.add_option("--layer", layer, "which layer's matrices")->check(CLI::NonNegativeNumber);
  app.add_option("--matrix", only, "only this matrix of the layer (attn_q, ffn_down, ...; output)");
  app.add_option("--tokens", token_counts, "token counts (rows of activations)")->delimiter(',');
  CLI11_PARSE(app, argc, argv);

  auto file = gguf::GgufFile::Open(path);
  if (!file.ok()) {
    std::fprintf(stderr, "matmul_bench: %s\n", std::string(file.status().message()).c_str());
    return 1;
  }
  const std::vector<Matrix> matrices = LayerMatrices(**file, layer, only);
  if (matrices.empty()) {
    std::fprintf(stderr, "matmul_bench: no 2-D matrices in layer %d of %s\n", layer, path.c_str());
    return 1;
  }
  int64_t max_cols = 0, max_rows = 0, macs_per_token = 0;
  for (const Matrix& m : matrices) {
    max_cols = std::max(max_cols, m.view.cols);
    max_rows = std::max(max_rows, m.view.rows);
    macs_per_token += m.view.rows * m.view.cols;
  }
  const int max_tokens = *std::max_element(token_counts.begin(), token_counts.end());
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(max_cols * max_tokens));
  for (float& v : x) v = normal(rng);
  std::vector<float> y(static_cast<size_t>(max_rows * max_tokens));

  std::vector<kernels::KernelIsa> isas{kernels::KernelIsa::kAvx2};
  if (kernels::BestKernelIsa() == kernels::KernelIsa::kAvx512Vnni)
    isas.push_back(kernels::KernelIsa::kAvx512Vnni);
  if (!kernels::HasAvx2(kernels::BestKernelIsa())) isas = {kernels::KernelIsa::kPortable};

  std::printf("matrices of layer %d:", layer);
  for (const Matrix& m : matrices)
    std::printf(" %s %s %lldx%lld", m.name.c_str(), std::string(DTypeName(m.view.type)).c_str(),
                static_cast<long long>(m.view.rows), static_cast<long long>(m.view.cols));
  std::printf(
      "\nthreads: %d, runs: %d\n\n| kernels | tokens | ms per layer | GMAC/s "
      "|\n|---|---|---|---|\n",
      threads, runs);
  ThreadPool pool(threads);
  for (kernels::KernelIsa isa : isas) {
    kernels::MatMul matmul(pool, isa);
    for (int n_tokens : token_counts) {
      std::vector<double> seconds;
      for (int r = 0; r < runs + 1; ++r) {  // the first pass warms the caches and is dropped
        const auto start = Clock::now();
        for (const Matrix& m : matrices) {
          const absl::Status status = matmul.Run(m.view, x.data(), n_tokens, y.data());
          if (!status.ok()) {
            std::fprintf(stderr, "matmul_bench: %s\n", std::string(status.message()).c_str());
            return 1;
          }
        }
        if (r > 0) seconds.push_back(Seconds(start));
      }
      const double s = Median(seconds);
      std::printf("| %s | %d | %.3f | %.1f |\n", kernels::KernelIsaName(isa), n_tokens, s * 1e3,
                  static_cast<double>(macs_per_token) * n_tokens / s / 1e9);
    }
  }
  return 0;
}

}  // namespace
}  // namespace chord

int main(int argc, char** argv) { return chord::Run(argc, argv); }
