#include "common/gguf/gguf_writer.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord::gguf {
namespace {

using ::testing::HasSubstr;

// Reads little-endian fields from a byte buffer, independently of the writer.
class Cursor {
 public:
  explicit Cursor(const std::vector<uint8_t>& bytes) : bytes_(bytes) {}
  template <typename T>
  T Get() {
    EXPECT_LE(pos_ + sizeof(T), bytes_.size());
    T v{};
    if (pos_ + sizeof(T) <= bytes_.size()) std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string GetString() {
    const uint64_t n = Get<uint64_t>();
    EXPECT_LE(pos_ + n, bytes_.size());
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  size_t pos() const { return pos_; }

 private:
  const std::vector<uint8_t>& bytes_;
  size_t pos_ = 0;
};

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) /
          (name + "_" + std::to_string(::getpid()) + ".gguf"))
      .string();
}

// Deterministic, non-zero bytes for tensor `index`.
void FillPattern(size_t index, std::span<uint8_t> out) {
  std::mt19937 rng(static_cast<uint32_t>(index * 7919 + 1));
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng() % 255 + 1);
}

TEST(GgufWriterTest, EmptyFileHeader) {
  GgufWriter writer;
  const std::vector<uint8_t> header = writer.SerializeHeader();
  ASSERT_EQ(header.size(), 32u);  // 24 bytes padded to the default alignment
  EXPECT_EQ(std::string(header.begin(), header.begin() + 4), "GGUF");
  Cursor c(header);
  c.Get<uint32_t>();
  EXPECT_EQ(c.Get<uint32_t>(), 3u);
  EXPECT_EQ(c.Get<uint64_t>(), 0u);
  EXPECT_EQ(c.Get<uint64_t>(), 0u);
  for (size_t i = 24; i < header.size(); ++i) EXPECT_EQ(header[i], 0) << i;
}

TEST(GgufWriterTest, EncodesEveryValueTypeInInsertionOrder) {
  GgufWriter writer;
  ASSERT_TRUE(writer.AddString("z.str", "héllo").ok());
  ASSERT_TRUE(writer.AddUint8("a.u8", 200).ok());
  ASSERT_TRUE(writer.AddInt8("a.i8", -100).ok());
  ASSERT_TRUE(writer.AddUint16("a.u16", 60000).ok());
  ASSERT_TRUE(writer.AddInt16("a.i16", -30000).ok());
  ASSERT_TRUE(writer.AddUint32("a.u32", 4000000000u).ok());
  ASSERT_TRUE(writer.AddInt32("a.i32", -2000000000).ok());
  ASSERT_TRUE(writer.AddFloat32("a.f32", 1.25f).ok());
  ASSERT_TRUE(writer.AddBool("a.bool", true).ok());
  ASSERT_TRUE(writer.AddUint64("a.u64", 0x123456789abcdef0ull).ok());
  ASSERT_TRUE(writer.AddInt64("a.i64", -0x123456789abcll).ok());
  ASSERT_TRUE(writer.AddFloat64("a.f64", -3.5e300).ok());
  ASSERT_TRUE(writer.AddStringArray("arr.str", {"<s>", "", "▁the"}).ok());
  ASSERT_TRUE(writer.AddFloat32Array("arr.f32", {0.5f, -2.0f}).ok());
  ASSERT_TRUE(writer.AddInt32Array("arr.i32", {1, -3, 6}).ok());

  const std::vector<uint8_t> header = writer.SerializeHeader();
  Cursor c(header);
  c.Get<uint32_t>();
  c.Get<uint32_t>();
  EXPECT_EQ(c.Get<uint64_t>(), 0u);
  EXPECT_EQ(c.Get<uint64_t>(), 15u);
  auto expect_key = [&](const char* key, uint32_t type) {
    EXPECT_EQ(c.GetString(), key);
    EXPECT_EQ(c.Get<uint32_t>(), type) << key;
  };
  expect_key("z.str", 8);
  EXPECT_EQ(c.GetString(), "héllo");
  expect_key("a.u8", 0);
  EXPECT_EQ(c.Get<uint8_t>(), 200);
  expect_key("a.i8", 1);
  EXPECT_EQ(c.Get<int8_t>(), -100);
  expect_key("a.u16", 2);
  EXPECT_EQ(c.Get<uint16_t>(), 60000);
  expect_key("a.i16", 3);
  EXPECT_EQ(c.Get<int16_t>(), -30000);
  expect_key("a.u32", 4);
  EXPECT_EQ(c.Get<uint32_t>(), 4000000000u);
  expect_key("a.i32", 5);
  EXPECT_EQ(c.Get<int32_t>(), -2000000000);
  expect_key("a.f32", 6);
  EXPECT_EQ(c.Get<float>(), 1.25f);
  expect_key("a.bool", 7);
  EXPECT_EQ(c.Get<uint8_t>(), 1);
  expect_key("a.u64", 10);
  EXPECT_EQ(c.Get<uint64_t>(), 0x123456789abcdef0ull);
  expect_key("a.i64", 11);
  EXPECT_EQ(c.Get<int64_t>(), -0x123456789abcll);
  expect_key("a.f64", 12);
  EXPECT_EQ(c.Get<double>(), -3.5e300);
  expect_key("arr.str", 9);
  EXPECT_EQ(c.Get<uint32_t>(), 8u);
  EXPECT_EQ(c.Get<uint64_t>(), 3u);
  EXPECT_EQ(c.GetString(), "<s>");
  EXPECT_EQ(c.GetString(), "");
  EXPECT_EQ(c.GetString(), "▁the");
  expect_key("arr.f32", 9);
  EXPECT_EQ(c.Get<uint32_t>(), 6u);
  EXPECT_EQ(c.Get<uint64_t>(), 2u);
  EXPECT_EQ(c.Get<float>(), 0.5f);
  EXPECT_EQ(c.Get<float>(), -2.0f);
  expect_key("arr.i32", 9);
  EXPECT_EQ(c.Get<uint32_t>(), 5u);
  EXPECT_EQ(c.Get<uint64_t>(), 3u);
  EXPECT_EQ(c.Get<int32_t>(), 1);
  EXPECT_EQ(c.Get<int32_t>(), -3);
  EXPECT_EQ(c.Get<int32_t>(), 6);
  EXPECT_EQ(header.size(), AlignUp(c.pos(), 32));
  for (size_t i = c.pos(); i < header.size(); ++i) EXPECT_EQ(header[i], 0) << i;
}

TEST(GgufWriterTest, RejectsBadMetadata) {
  GgufWriter writer;
  ASSERT_TRUE(writer.AddUint32("k", 1).ok());
  absl::Status dup = writer.AddString("k", "x");
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dup.message(), HasSubstr("duplicate"));
  EXPECT_FALSE(writer.AddString("", "x").ok());
  // Payload that does not fit or match the declared type.
  EXPECT_FALSE(writer.AddValue("big", Value{ValueType::kUint8, uint64_t{256}}).ok());
  EXPECT_FALSE(writer.AddValue("neg", Value{ValueType::kInt8, int64_t{-129}}).ok());
  EXPECT_FALSE(writer.AddValue("mismatch", Value{ValueType::kFloat32, uint64_t{1}}).ok());
  Array nested{ValueType::kArray, {}};
  EXPECT_FALSE(writer.AddValue("nested", Value{ValueType::kArray, nested}).ok());
  Array mixed{ValueType::kInt32,
              {Value{ValueType::kInt32, int64_t{1}}, Value{ValueType::kUint32, uint64_t{1}}}};
  EXPECT_FALSE(writer.AddValue("mixed", Value{ValueType::kArray, mixed}).ok());
  EXPECT_FALSE(writer.AddUint32("general.alignment", 48).ok());
  EXPECT_FALSE(writer.AddUint64("general.alignment", 64).ok());
  // Failed adds leave nothing behind.
  EXPECT_EQ(writer.metadata().size(), 1u);
  EXPECT_EQ(writer.alignment(), 32u);
}

TEST(GgufWriterTest, RejectsBadTensors) {
  GgufWriter writer;
  ASSERT_TRUE(writer.AddTensor("a", DType::kF32, {4, 2}).ok());
  EXPECT_FALSE(writer.AddTensor("a", DType::kF32, {4}).ok());
  EXPECT_FALSE(writer.AddTensor("", DType::kF32, {4}).ok());
  EXPECT_FALSE(writer.AddTensor(std::string(64, 'x'), DType::kF32, {4}).ok());
  EXPECT_FALSE(writer.AddTensor("b", DType::kF32, {}).ok());
  EXPECT_FALSE(writer.AddTensor("b", DType::kF32, {1, 1, 1, 1, 1}).ok());
  EXPECT_FALSE(writer.AddTensor("b", DType::kF32, {4, 0}).ok());
  absl::StatusOr<size_t> bad_block = writer.AddTensor("q", DType::kQ4_K, {100, 4});
  ASSERT_FALSE(bad_block.ok());
  EXPECT_THAT(bad_block.status().message(), HasSubstr("q4_K"));
  absl::StatusOr<size_t> ok = writer.AddTensor("q", DType::kQ4_K, {512, 3});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 1u);
  EXPECT_EQ(writer.tensors()[1].n_bytes, 3u * 2 * 144);
}

TEST(GgufWriterTest, TensorInfosAndAlignedData) {
  GgufWriter writer;
  ASSERT_TRUE(writer.AddString("general.architecture", "llama").ok());
  ASSERT_TRUE(writer.AddUint32("general.alignment", 64).ok());
  ASSERT_TRUE(writer.AddTensor("first", DType::kF32, {3}).ok());        // 12 bytes
  ASSERT_TRUE(writer.AddTensor("second", DType::kQ8_0, {64, 3}).ok());  // 204 bytes
  ASSERT_TRUE(writer.AddTensor("third", DType::kF16, {5, 2, 3}).ok());  // 60 bytes
  const std::string path = TempPath("aligned");
  ASSERT_TRUE(writer
                  .Write(
                      path,
                      [](size_t i, std::span<uint8_t> out) {
                        FillPattern(i, out);
                        return absl::OkStatus();
                      },
                      2)
                  .ok());

  const std::vector<uint8_t> bytes = ReadFile(path);
  Cursor c(bytes);
  c.Get<uint32_t>();
  c.Get<uint32_t>();
  EXPECT_EQ(c.Get<uint64_t>(), 3u);
  EXPECT_EQ(c.Get<uint64_t>(), 2u);
  c.GetString();
  c.Get<uint32_t>();
  c.GetString();
  c.GetString();
  c.Get<uint32_t>();
  EXPECT_EQ(c.Get<uint32_t>(), 64u);
  struct Expected {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    uint64_t offset;
    uint64_t n_bytes;
  };
  const std::vector<Expected> expected = {
      {"first", {3}, 0, 0, 12}, {"second", {64, 3}, 8, 64, 204}, {"third", {5, 2, 3}, 1, 320, 60}};
  for (const Expected& e : expected) {
    EXPECT_EQ(c.GetString(), e.name);
    ASSERT_EQ(c.Get<uint32_t>(), e.dims.size());
    for (uint64_t d : e.dims) EXPECT_EQ(c.Get<uint64_t>(), d);
    EXPECT_EQ(c.Get<uint32_t>(), e.type);
    EXPECT_EQ(c.Get<uint64_t>(), e.offset);
  }
  const uint64_t data_start = AlignUp(c.pos(), 64);
  for (size_t i = c.pos(); i < data_start; ++i) EXPECT_EQ(bytes[i], 0) << i;
  ASSERT_EQ(bytes.size(), data_start + 384);  // 64 + 256 + 64: the last tensor padded too
  std::vector<bool> is_data(bytes.size(), false);
  for (size_t t = 0; t < expected.size(); ++t) {
    std::vector<uint8_t> want(expected[t].n_bytes);
    FillPattern(t, want);
    const uint64_t at = data_start + expected[t].offset;
    EXPECT_TRUE(std::equal(want.begin(), want.end(), bytes.begin() + at)) << expected[t].name;
    std::fill(is_data.begin() + at, is_data.begin() + at + want.size(), true);
  }
  for (size_t i = data_start; i < bytes.size(); ++i) {
    if (!is_data[i]) {
      EXPECT_EQ(bytes[i], 0) << "padding byte " << i;
    }
  }
  std::filesystem::remove(path);
}

TEST(GgufWriterTest, SameBytesForAnyThreadCount) {
  GgufWriter writer;
  ASSERT_TRUE(writer.AddUint32("x", 7).ok());
  for (int i = 0; i < 23; ++i) {
    ASSERT_TRUE(writer.AddTensor(absl::StrCat("t", i), DType::kF32, {i * 13 + 1, 3}).ok());
  }
  auto producer = [](size_t i, std::span<uint8_t> out) {
    FillPattern(i, out);
    return absl::OkStatus();
  };
  const std::string one = TempPath("threads1");
  const std::string four = TempPath("threads4");
  ASSERT_TRUE(writer.Write(one, producer, 1).ok());
  std::vector<uint64_t> progress;
  ASSERT_TRUE(writer
                  .Write(four, producer, 4,
                         [&](uint64_t done, uint64_t total) {
                           progress.push_back(done);
                           EXPECT_LE(done, total);
                         })
                  .ok());
  const std::vector<uint8_t> a = ReadFile(one);
  EXPECT_EQ(a.size(), writer.SerializeHeader().size() + writer.DataSectionBytes());
  EXPECT_EQ(a, ReadFile(four));
  ASSERT_EQ(progress.size(), 23u);
  uint64_t total = 0;
  for (const auto& t : writer.tensors()) total += t.n_bytes;
  EXPECT_EQ(progress.back(), total);
  std::filesystem::remove(one);
  std::filesystem::remove(four);
}

TEST(GgufWriterTest, ProducerErrorNamesTensorAndLeavesNoFile) {
  GgufWriter writer;
  ASSERT_TRUE(writer.AddTensor("good", DType::kF32, {8}).ok());
  ASSERT_TRUE(writer.AddTensor("bad", DType::kF32, {8}).ok());
  const std::string path = TempPath("fails");
  absl::Status status = writer.Write(
      path,
      [](size_t i, std::span<uint8_t> out) {
        if (i == 1) return absl::InvalidArgumentError("no data");
        FillPattern(i, out);
        return absl::OkStatus();
      },
      2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("bad"));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
}

// The reader (an independent implementation of the format) accepts what the
// writer produces and sees the same values and tensor bytes.
TEST(GgufWriterTest, RoundTripThroughReader) {
  GgufWriter writer;
  ASSERT_TRUE(writer.AddString("general.architecture", "llama").ok());
  ASSERT_TRUE(writer.AddUint32("general.alignment", 16).ok());
  ASSERT_TRUE(writer.AddInt8("i8", -5).ok());
  ASSERT_TRUE(writer.AddUint16("u16", 65535).ok());
  ASSERT_TRUE(writer.AddInt64("i64", -(int64_t{1} << 40)).ok());
  ASSERT_TRUE(writer.AddFloat64("f64", 0.125).ok());
  ASSERT_TRUE(writer.AddBool("flag", false).ok());
  ASSERT_TRUE(writer.AddStringArray("words", {"a", "▁bc", ""}).ok());
  ASSERT_TRUE(writer.AddFloat32Array("scores", {-1.5f, 2.0f}).ok());
  ASSERT_TRUE(writer.AddInt32Array("ids", {7, -8}).ok());
  ASSERT_TRUE(writer.AddTensor("w", DType::kQ4_0, {64, 5}).ok());
  ASSERT_TRUE(writer.AddTensor("b", DType::kF32, {7}).ok());
  const std::string path = TempPath("roundtrip");
  ASSERT_TRUE(writer
                  .Write(
                      path,
                      [](size_t i, std::span<uint8_t> out) {
                        FillPattern(i, out);
                        return absl::OkStatus();
                      },
                      2)
                  .ok());
  const std::vector<uint8_t> bytes = ReadFile(path);
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 16u);
  ASSERT_EQ(f.metadata().size(), writer.metadata().size());
  for (size_t i = 0; i < f.metadata().size(); ++i) {
    EXPECT_EQ(f.metadata()[i].first, writer.metadata()[i].first);
  }
  EXPECT_EQ(*f.GetInt("i8"), -5);
  EXPECT_EQ(*f.GetUint("u16"), 65535u);
  EXPECT_EQ(*f.GetInt("i64"), -(int64_t{1} << 40));
  EXPECT_EQ(*f.GetFloat("f64"), 0.125);
  EXPECT_EQ(*f.GetBool("flag"), false);
  EXPECT_EQ(*f.GetStringArray("words"), (std::vector<std::string>{"a", "▁bc", ""}));
  EXPECT_EQ(*f.GetFloatArray("scores"), (std::vector<float>{-1.5f, 2.0f}));
  EXPECT_EQ(*f.GetIntArray("ids"), (std::vector<int64_t>{7, -8}));
  ASSERT_EQ(f.tensors().size(), 2u);
  for (size_t t = 0; t < 2; ++t) {
    const TensorInfo& info = f.tensors()[t];
    EXPECT_EQ(info.name, writer.tensors()[t].name);
    EXPECT_EQ(info.dims, writer.tensors()[t].dims);
    EXPECT_EQ(info.type, writer.tensors()[t].type);
    ASSERT_EQ(info.n_bytes, writer.tensors()[t].n_bytes);
    std::vector<uint8_t> want(info.n_bytes);
    FillPattern(t, want);
    EXPECT_TRUE(std::equal(want.begin(), want.end(), info.data)) << info.name;
  }
  std::filesystem::remove(path);
}

TEST(GgufWriterTest, IoErrorNamesPath) {
  GgufWriter writer;
  ASSERT_TRUE(writer.AddTensor("t", DType::kF32, {8}).ok());
  absl::Status status = writer.Write(
      "/nonexistent-dir/x.gguf", [](size_t, std::span<uint8_t>) { return absl::OkStatus(); }, 1);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("/nonexistent-dir/x.gguf"));
}

}  // namespace
}  // namespace chord::gguf
