// The CPU forward pass on mkmodel-made models with Llama 3 / Mistral-style
// hyperparameters (large RoPE base, grouped-query attention), checked against
// an independent double-precision implementation written here, plus chord's
// invariance contracts in one process: the same bits for any prefill chunking,
// thread count and layer split.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli/mkmodel/mkmodel.h"
#include "common/gguf/gguf_file.h"
#include "common/model/model_config.h"
#include "common/quant/quant.h"
#include "gtest/gtest.h"
#include "kernels/cpu/thread_pool.h"
#include "worker/kv_cache.h"
#include "worker/local_generator.h"
#include "worker/models/llama.h"
#include "worker/models/tensor_source.h"

namespace chord {
namespace {

namespace fs = std::filesystem;

std::string WriteTestModel(const std::string& name, mkmodel::FileType type, float rope_base,
                           int64_t n_head_kv) {
  mkmodel::MkmodelOptions options;
  options.shape.name = name;
  options.shape.n_embd = 256;
  options.shape.n_layer = 3;
  options.shape.n_head = 8;
  options.shape.n_head_kv = n_head_kv;
  options.shape.n_ff = 512;
  options.shape.n_vocab = 400;
  options.shape.n_ctx = 256;
  options.shape.rope_base = rope_base;
  options.file_type = type;
  options.seed = 17;
  options.threads = 2;
  const std::string path = (fs::temp_directory_path() / ("chord_forward_test_" + name + ".gguf")).string();
  const absl::Status status = mkmodel::WriteModel(options, path);
  EXPECT_TRUE(status.ok()) << status;
  return path;
}

// ---- an independent double-precision Llama forward pass ----

class ReferenceLlama {
 public:
  ReferenceLlama(const gguf::GgufFile& file, const ModelConfig& config) : file_(file), c_(config) {}

  // Logits after feeding `tokens` from position 0.
  std::vector<double> Run(const std::vector<int32_t>& tokens) {
    const int64_t kv = c_.n_embd_kv(), hd = c_.head_dim;
    std::vector<std::vector<std::vector<double>>> keys(c_.n_layer), values(c_.n_layer);
    std::vector<double> x;
    for (size_t pos = 0; pos < tokens.size(); ++pos) {
      x = Row(kTokenEmbdName, tokens[pos]);
      for (int64_t l = 0; l < c_.n_layer; ++l) {
        std::vector<double> xn = Norm(x, Vector(LayerTensorName(l, "attn_norm")));
        std::vector<double> q = MatVec(LayerTensorName(l, "attn_q"), xn);
        std::vector<double> k = MatVec(LayerTensorName(l, "attn_k"), xn);
        keys[l].push_back(Rope(k, static_cast<double>(pos)));
        values[l].push_back(MatVec(LayerTensorName(l, "attn_v"), xn));
        q = Rope(q, static_cast<double>(pos));
        std::vector<double> att(static_cast<size_t>(c_.n_embd));
        for (int64_t h = 0; h < c_.n_head; ++h) {
          const int64_t kvh = h / (c_.n_head / c_.n_head_kv);
          std::vector<double> s(pos + 1);
          double max = -1e300, total = 0;
          for (size_t p = 0; p <= pos; ++p) {
            double dot = 0;
            for (int64_t d = 0; d < hd; ++d) dot += q[h * hd + d] * keys[l][p][kvh * hd + d];
            s[p] = dot / std::sqrt(static_cast<double>(hd));
            max = std::max(max, s[p]);
          }
          for (double& v : s) total += (v = std::exp(v - max));
          for (int64_t d = 0; d < hd; ++d) {
            double sum = 0;
            for (size_t p = 0; p <= pos; ++p) sum += s[p] / total * values[l][p][kvh * hd + d];
            att[h * hd + d] = sum;
          }
        }
        Add(x, MatVec(LayerTensorName(l, "attn_output"), att));
        xn = Norm(x, Vector(LayerTensorName(l, "ffn_norm")));
        std::vector<double> g = MatVec(LayerTensorName(l, "ffn_gate"), xn);
        const std::vector<double> u = MatVec(LayerTensorName(l, "ffn_up"), xn);
        for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
        Add(x, MatVec(LayerTensorName(l, "ffn_down"), g));
      }
      (void)kv;
    }
    const std::vector<double> xn = Norm(x, Vector(kOutputNormName));
    return MatVec(c_.tied_embeddings ? kTokenEmbdName : kOutputName, xn);
  }

 private:
  std::vector<double> Row(const std::string& name, int64_t r) const {
    const gguf::TensorInfo* t = file_.FindTensor(name);
    const int64_t cols = t->dims[0];
    std::vector<float> f(static_cast<size_t>(cols));
    const uint64_t row_bytes = RowBytes(t->type, cols).value();
    EXPECT_TRUE(quant::DequantizeRow(t->type, t->data + r * row_bytes, f.data(), cols).ok());
    return std::vector<double>(f.begin(), f.end());
  }
  std::vector<double> Vector(const std::string& name) const { return Row(name, 0); }
  std::vector<double> MatVec(const std::string& name, const std::vector<double>& x) const {
    const gguf::TensorInfo* t = file_.FindTensor(name);
    std::vector<double> y(static_cast<size_t>(t->dims[1]));
    for (int64_t r = 0; r < t->dims[1]; ++r) {
      const std::vector<double> w = Row(name, r);
      for (size_t c = 0; c < w.size(); ++c) y[r] += w[c] * x[c];
    }
    return y;
  }
  std::vector<double> Norm(const std::vector<double>& x, const std::vector<double>& w) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double scale = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + c_.rms_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * scale * w[i];
    return y;
  }
  std::vector<double> Rope(std::vector<double> v, double pos) const {
    const int64_t hd = c_.head_dim;
    for (size_t h = 0; h < v.size() / static_cast<size_t>(hd); ++h) {
      for (int64_t i = 0; i < c_.n_rot; i += 2) {
        const double theta = pos * std::pow(static_cast<double>(c_.rope_freq_base),
                                            -static_cast<double>(i) / static_cast<double>(c_.n_rot));
        double& a = v[h * hd + i];
        double& b = v[h * hd + i + 1];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(theta) - b0 * std::sin(theta);
        b = a0 * std::sin(theta) + b0 * std::cos(theta);
      }
    }
    return v;
  }
  static void Add(std::vector<double>& y, const std::vector<double>& x) {
    for (size_t i = 0; i < y.size(); ++i) y[i] += x[i];
  }

  const gguf::GgufFile& file_;
  const ModelConfig& c_;
};

struct Loaded {
  std::unique_ptr<gguf::GgufFile> file;
  std::unique_ptr<LocalGenerator> generator;
};

Loaded Load(const std::string& path, int threads, DType kv_type = DType::kF32) {
  Loaded loaded;
  auto file = gguf::GgufFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  loaded.file = std::move(*file);
  LocalGeneratorOptions options;
  options.n_threads = threads;
  options.kv_type = kv_type;
  auto generator = LocalGenerator::Create(*loaded.file, options);
  EXPECT_TRUE(generator.ok()) << generator.status();
  loaded.generator = std::move(*generator);
  return loaded;
}

const std::vector<int32_t> kPrompt = {1, 17, 250, 3, 99, 398, 42, 42, 7, 300, 12, 5, 64};

TEST(ForwardTest, Llama3StyleGqaAndLargeRopeBaseMatchDoublePrecisionReference) {
  for (auto [type, tol] : {std::pair{mkmodel::FileType::kF32, 1e-3}, std::pair{mkmodel::FileType::kF16, 2e-2}}) {
    const std::string path = WriteTestModel("llama3ish", type, 500000.0f, 2);
    Loaded m = Load(path, 2);
    ASSERT_TRUE(m.generator);
    EXPECT_EQ(m.generator->config().n_head_kv, 2);
    EXPECT_EQ(m.generator->config().rope_freq_base, 500000.0f);
    ReferenceLlama reference(*m.file, m.generator->config());
    for (size_t n : {size_t{1}, size_t{5}, kPrompt.size()}) {
      const std::vector<int32_t> prefix(kPrompt.begin(), kPrompt.begin() + static_cast<ptrdiff_t>(n));
      m.generator->Reset();
      auto ours = m.generator->Feed(prefix);
      ASSERT_TRUE(ours.ok()) << ours.status();
      const std::vector<double> expected = reference.Run(prefix);
      double max_diff = 0;
      for (size_t i = 0; i < expected.size(); ++i) max_diff = std::max(max_diff, std::fabs((*ours)[i] - expected[i]));
      EXPECT_LE(max_diff, tol) << "prefix " << n;
    }
    fs::remove(path);
  }
}

std::vector<float> FeedInChunks(LocalGenerator& g, const std::vector<int32_t>& tokens, size_t chunk) {
  g.Reset();
  std::span<const float> logits;
  for (size_t i = 0; i < tokens.size(); i += chunk) {
    const size_t n = std::min(chunk, tokens.size() - i);
    auto r = g.Feed(std::span<const int32_t>(tokens.data() + i, n));
    EXPECT_TRUE(r.ok()) << r.status();
    logits = *r;
  }
  return std::vector<float>(logits.begin(), logits.end());
}

TEST(ForwardTest, SameBitsForAnyPrefillChunkingAndThreadCount) {
  const std::string path = WriteTestModel("invariance", mkmodel::FileType::kQ4_K_M, 10000.0f, 4);
  Loaded one = Load(path, 1), three = Load(path, 3);
  const std::vector<float> whole = FeedInChunks(*one.generator, kPrompt, kPrompt.size());
  for (size_t chunk : {size_t{1}, size_t{3}, size_t{7}}) {
    const std::vector<float> chunked = FeedInChunks(*three.generator, kPrompt, chunk);
    ASSERT_EQ(chunked.size(), whole.size());
    EXPECT_EQ(0, std::memcmp(chunked.data(), whole.data(), whole.size() * sizeof(float)))
        << "chunk " << chunk;
  }
  fs::remove(path);
}

TEST(ForwardTest, SameBitsForAnyLayerSplit) {
  const std::string path = WriteTestModel("split", mkmodel::FileType::kQ6_K, 10000.0f, 2);
  Loaded m = Load(path, 2);
  const std::vector<float> whole = FeedInChunks(*m.generator, kPrompt, kPrompt.size());
  const ModelConfig config = m.generator->config();
  ThreadPool pool(2);
  const GgufTensorSource source(*m.file);
  for (int64_t cut : {int64_t{1}, int64_t{2}}) {
    auto first = LlamaStage::Load(source, config, {0, cut}, pool);
    auto second = LlamaStage::Load(source, config, {cut, config.n_layer}, pool);
    ASSERT_TRUE(first.ok() && second.ok());
    auto cache1 = KvCache::Create({cut, 1, 64, config.n_embd_kv(), DType::kF32});
    auto cache2 = KvCache::Create({config.n_layer - cut, 1, 64, config.n_embd_kv(), DType::kF32});
    ASSERT_TRUE(cache1.ok() && cache2.ok());
    ASSERT_TRUE(cache1->ReserveAll().ok() && cache2->ReserveAll().ok());
    std::vector<BatchToken> batch;
    for (size_t i = 0; i < kPrompt.size(); ++i) batch.push_back({0, static_cast<int64_t>(i)});
    std::vector<float> x(kPrompt.size() * static_cast<size_t>(config.n_embd));
    ASSERT_TRUE((*first)->Embed(kPrompt, x.data()).ok());
    ASSERT_TRUE((*first)->RunLayers(batch, x.data(), *cache1).ok());
    ASSERT_TRUE((*second)->RunLayers(batch, x.data(), *cache2).ok());
    std::vector<float> logits(static_cast<size_t>(config.n_vocab));
    ASSERT_TRUE((*second)->Logits(x.data() + (kPrompt.size() - 1) * config.n_embd, 1, logits.data()).ok());
    EXPECT_EQ(0, std::memcmp(logits.data(), whole.data(), whole.size() * sizeof(float))) << "cut " << cut;
  }
  fs::remove(path);
}

TEST(ForwardTest, F16KvCacheStaysCloseToF32) {
  Loaded f32 = Load(CHORD_DEFAULT_MODEL, 2), f16 = Load(CHORD_DEFAULT_MODEL, 2, DType::kF16);
  const std::vector<int32_t> tokens = {1, 403, 407, 261, 378, 432, 383, 286};
  const std::vector<float> a = FeedInChunks(*f32.generator, tokens, tokens.size());
  const std::vector<float> b = FeedInChunks(*f16.generator, tokens, tokens.size());
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max<double>(max_diff, std::fabs(a[i] - b[i]));
  EXPECT_LT(max_diff, 2e-2);
  EXPECT_GT(max_diff, 0.0);  // the f16 cache really is in use
}

}  // namespace
}  // namespace chord
