// The encoders against llama.cpp's own output: the shared synthetic model
// exists as F16 and as llama-quantize's Q8_0, Q4_0, Q4_K_M and Q6_K files
// (quantized from the same F32 weights, without an importance matrix). Encoding
// the F16 weights here must give the same error as llama.cpp's files and, up
// to the F16 rounding of the inputs, mostly the same values.

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/gguf/gguf_file.h"
#include "common/quant/quant.h"
#include "common/tensor/dtype.h"
#include "gtest/gtest.h"

namespace chord::quant {
namespace {

const std::string kModelDir = std::string(CHORD_SHARED_DIR) + "/models/";

std::vector<float> DecodeTensor(const gguf::TensorInfo& t) {
  const int64_t cols = t.cols();
  const uint64_t row_bytes = RowBytes(t.type, cols).value();
  std::vector<float> out(static_cast<size_t>(cols * t.rows()));
  for (int64_t r = 0; r < t.rows(); ++r) {
    EXPECT_TRUE(DequantizeRow(t.type, t.data + r * row_bytes, out.data() + r * cols, cols).ok());
  }
  return out;
}

struct Comparison {
  double err_ours = 0;  // relative RMS error against the F16 weights
  double err_llama = 0;
  double same_values = 0;  // fraction of elements decoding identically
};

Comparison Compare(const gguf::TensorInfo& ref, const std::vector<float>& x) {
  const int64_t cols = ref.cols();
  const int64_t rows = ref.rows();
  std::vector<uint8_t> ours(RowBytes(ref.type, cols).value() * rows);
  EXPECT_TRUE(QuantizeRows(ref.type, x.data(), rows, cols, ours.data()).ok());
  gguf::TensorInfo mine = ref;
  mine.data = ours.data();
  const std::vector<float> y_ours = DecodeTensor(mine);
  const std::vector<float> y_llama = DecodeTensor(ref);
  double e_ours = 0;
  double e_llama = 0;
  double s = 0;
  int64_t same = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    e_ours += std::pow(static_cast<double>(x[i]) - y_ours[i], 2);
    e_llama += std::pow(static_cast<double>(x[i]) - y_llama[i], 2);
    s += static_cast<double>(x[i]) * x[i];
    same += y_ours[i] == y_llama[i];
  }
  return {std::sqrt(e_ours / s), std::sqrt(e_llama / s),
          static_cast<double>(same) / static_cast<double>(x.size())};
}

TEST(QuantModelTest, MatchesLlamaQuantizeOutput) {
  const std::string f16_path = kModelDir + "synth-llama-256x4v512-f16.gguf";
  if (!std::filesystem::exists(f16_path)) {
    GTEST_SKIP() << "shared models not found under " << kModelDir;
  }
  auto f16 = gguf::GgufFile::Open(f16_path);
  ASSERT_TRUE(f16.ok()) << f16.status();
  int compared = 0;
  for (const char* suffix : {"q8_0", "q4_0", "q4_k_m", "q6_k"}) {
    auto quantized = gguf::GgufFile::Open(kModelDir + "synth-llama-256x4v512-" + suffix + ".gguf");
    ASSERT_TRUE(quantized.ok()) << quantized.status();
    for (const gguf::TensorInfo& t : (*quantized)->tensors()) {
      const gguf::TensorInfo* src = (*f16)->FindTensor(t.name);
      if (src == nullptr || src->type != DType::kF16 || !CanQuantize(t.type) ||
          t.type == DType::kF16 || t.type == DType::kF32) {
        continue;
      }
      const Comparison c = Compare(t, DecodeTensor(*src));
      const std::string what = std::string(suffix) + " " + t.name;
      // Same algorithm: same error to within a fraction of a percent.
      EXPECT_NEAR(c.err_ours, c.err_llama, 0.005 * c.err_llama) << what;
      // Most values identical; Q4_0's plain rounding is almost never moved by
      // the F16 rounding of its inputs, the searched scales more often.
      EXPECT_GE(c.same_values, t.type == DType::kQ4_0 ? 0.99 : 0.5) << what;
      ++compared;
    }
  }
  EXPECT_GE(compared, 80);
}

}  // namespace
}  // namespace chord::quant
