#include "common/gguf/gguf_file.h"

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord::gguf {
namespace {

using ::testing::HasSubstr;

// Appends little-endian GGUF fields; the tests assemble files from these by hand
// so that they do not depend on any writer.
class Builder {
 public:
  template <typename T>
  Builder& Put(T value) {
    uint8_t raw[sizeof(T)];
    std::memcpy(raw, &value, sizeof(T));
    bytes_.insert(bytes_.end(), raw, raw + sizeof(T));
    return *this;
  }
  Builder& U32(uint32_t v) { return Put(v); }
  Builder& U64(uint64_t v) { return Put(v); }
  Builder& Str(std::string_view s) {
    U64(s.size());
    bytes_.insert(bytes_.end(), s.begin(), s.end());
    return *this;
  }
  Builder& Type(ValueType t) { return U32(static_cast<uint32_t>(t)); }
  Builder& PadTo(uint64_t alignment) {
    while (bytes_.size() % alignment != 0) bytes_.push_back(0);
    return *this;
  }
  Builder& Random(uint64_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    for (uint64_t i = 0; i < n; ++i) bytes_.push_back(static_cast<uint8_t>(rng() | 1));
    return *this;
  }
  size_t size() const { return bytes_.size(); }
  std::vector<uint8_t> Take() { return std::move(bytes_); }

 private:
  std::vector<uint8_t> bytes_;
};

using KvWriter = std::function<void(Builder&)>;

KvWriter KvU32(std::string key, uint32_t v) {
  return [=](Builder& b) { b.Str(key).Type(ValueType::kUint32).U32(v); };
}
KvWriter KvStr(std::string key, std::string v) {
  return [=](Builder& b) { b.Str(key).Type(ValueType::kString).Str(v); };
}

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = 0;
  uint64_t offset = 0;
  std::optional<uint32_t> n_dims;  // overrides ne.size() in the file
};

struct FileSpec {
  uint32_t version = 3;
  std::vector<KvWriter> kvs;
  std::vector<TensorSpec> tensors;
  uint64_t alignment = 32;  // padding before the data section
  uint64_t data_bytes = 0;
  std::optional<uint64_t> n_tensors;  // override the counts in the header
  std::optional<uint64_t> n_kv;
};

std::vector<uint8_t> Build(const FileSpec& spec) {
  Builder b;
  b.Put<char>('G').Put<char>('G').Put<char>('U').Put<char>('F');
  b.U32(spec.version);
  b.U64(spec.n_tensors.value_or(spec.tensors.size()));
  b.U64(spec.n_kv.value_or(spec.kvs.size()));
  for (const KvWriter& kv : spec.kvs) kv(b);
  for (const TensorSpec& t : spec.tensors) {
    b.Str(t.name).U32(t.n_dims.value_or(static_cast<uint32_t>(t.ne.size())));
    for (uint64_t d : t.ne) b.U64(d);
    b.U32(t.type).U64(t.offset);
  }
  if (!spec.tensors.empty()) b.PadTo(spec.alignment);
  b.Random(spec.data_bytes, 7);
  return b.Take();
}

// Two small tensors: "a" f32 {4, 2} (32 bytes at 0) and "b" q8_0 {32, 2}
// (68 bytes at 64), with the file ending exactly where "b" ends.
FileSpec TwoTensorSpec() {
  FileSpec spec;
  spec.kvs = {KvStr("general.architecture", "llama"), KvU32("llama.block_count", 5)};
  spec.tensors = {{"a", {4, 2}, 0, 0}, {"b", {32, 2}, 8, 64}};
  spec.data_bytes = 64 + 68;
  return spec;
}

absl::Status ParseStatus(const std::vector<uint8_t>& bytes) {
  return GgufFile::Parse(bytes).status();
}

void ExpectDataLoss(const std::vector<uint8_t>& bytes, std::string_view fragment) {
  absl::Status status = ParseStatus(bytes);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(std::string(fragment)));
}

// One entry of every value type, including string arrays and nested arrays.
std::vector<KvWriter> EveryTypeKvs() {
  return {
      [](Builder& b) { b.Str("t.u8").Type(ValueType::kUint8).Put<uint8_t>(250); },
      [](Builder& b) { b.Str("t.i8").Type(ValueType::kInt8).Put<int8_t>(-7); },
      [](Builder& b) { b.Str("t.u16").Type(ValueType::kUint16).Put<uint16_t>(65000); },
      [](Builder& b) { b.Str("t.i16").Type(ValueType::kInt16).Put<int16_t>(-30000); },
      [](Builder& b) { b.Str("t.u32").Type(ValueType::kUint32).U32(4000000000u); },
      [](Builder& b) { b.Str("t.i32").Type(ValueType::kInt32).Put<int32_t>(-2000000000); },
      [](Builder& b) { b.Str("t.f32").Type(ValueType::kFloat32).Put<float>(1.5e-5f); },
      [](Builder& b) { b.Str("t.bool").Type(ValueType::kBool).Put<uint8_t>(1); },
      [](Builder& b) { b.Str("t.str").Type(ValueType::kString).Str("h\xc3\xa9llo"); },
      [](Builder& b) { b.Str("t.u64").Type(ValueType::kUint64).U64(18446744073709551615ull); },
      [](Builder& b) { b.Str("t.i64").Type(ValueType::kInt64).Put<int64_t>(-9000000000000ll); },
      [](Builder& b) { b.Str("t.f64").Type(ValueType::kFloat64).Put<double>(-2.25e100); },
      [](Builder& b) {
        b.Str("t.strs").Type(ValueType::kArray).Type(ValueType::kString).U64(3);
        b.Str("<s>").Str("").Str("\xe2\x96\x81the");
      },
      [](Builder& b) {
        b.Str("t.i32s").Type(ValueType::kArray).Type(ValueType::kInt32).U64(3);
        b.Put<int32_t>(-1).Put<int32_t>(0).Put<int32_t>(123456);
      },
      [](Builder& b) {
        b.Str("t.f32s").Type(ValueType::kArray).Type(ValueType::kFloat32).U64(2);
        b.Put<float>(-0.25f).Put<float>(3e7f);
      },
      [](Builder& b) {
        // [[1, 2], []] of u16, then an empty array of bools.
        b.Str("t.nested").Type(ValueType::kArray).Type(ValueType::kArray).U64(2);
        b.Type(ValueType::kUint16).U64(2).Put<uint16_t>(1).Put<uint16_t>(2);
        b.Type(ValueType::kUint16).U64(0);
      },
      [](Builder& b) { b.Str("t.empty").Type(ValueType::kArray).Type(ValueType::kBool).U64(0); },
      KvU32("general.alignment", 64),
  };
}

class ValidFileTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(ValidFileTest, ReadsBackEveryValueAndTensorExactly) {
  FileSpec spec;
  spec.version = GetParam();
  spec.kvs = EveryTypeKvs();
  spec.alignment = 64;
  spec.tensors = {{"tok", {64, 3}, 0, 0}, {"q", {256, 1, 1, 2}, 12, 832}, {"v", {5}, 24, 768}};
  spec.data_bytes = 832 + 2 * 144;
  const std::vector<uint8_t> bytes = Build(spec);
  absl::StatusOr<std::unique_ptr<GgufFile>> parsed = GgufFile::Parse(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const GgufFile& file = **parsed;

  EXPECT_EQ(file.version(), GetParam());
  EXPECT_EQ(file.alignment(), 64u);
  EXPECT_EQ(file.file_size(), bytes.size());
  ASSERT_EQ(file.metadata().size(), spec.kvs.size());
  EXPECT_EQ(file.metadata()[0].first, "t.u8");
  EXPECT_EQ(file.metadata()[0].second.type, ValueType::kUint8);
  EXPECT_EQ(*file.GetUint("t.u8"), 250u);
  EXPECT_EQ(*file.GetInt("t.i8"), -7);
  EXPECT_EQ(*file.GetUint("t.u16"), 65000u);
  EXPECT_EQ(*file.GetInt("t.i16"), -30000);
  EXPECT_EQ(*file.GetInt("t.u32"), 4000000000ll);
  EXPECT_EQ(*file.GetInt("t.i32"), -2000000000);
  EXPECT_EQ(*file.GetFloat("t.f32"), static_cast<double>(1.5e-5f));
  EXPECT_TRUE(*file.GetBool("t.bool"));
  EXPECT_EQ(*file.GetString("t.str"), "h\xc3\xa9llo");
  EXPECT_EQ(*file.GetUint("t.u64"), 18446744073709551615ull);
  EXPECT_EQ(*file.GetInt("t.i64"), -9000000000000ll);
  EXPECT_EQ(*file.GetFloat("t.f64"), -2.25e100);
  EXPECT_THAT(*file.GetStringArray("t.strs"), ::testing::ElementsAre("<s>", "", "\xe2\x96\x81the"));
  EXPECT_THAT(*file.GetIntArray("t.i32s"), ::testing::ElementsAre(-1, 0, 123456));
  EXPECT_THAT(*file.GetFloatArray("t.f32s"), ::testing::ElementsAre(-0.25f, 3e7f));
  const Value* nested = file.Find("t.nested");
  ASSERT_NE(nested, nullptr);
  const Array& outer = std::get<Array>(nested->data);
  ASSERT_EQ(outer.element_type, ValueType::kArray);
  ASSERT_EQ(outer.elements.size(), 2u);
  const Array& first = std::get<Array>(outer.elements[0].data);
  EXPECT_EQ(first.element_type, ValueType::kUint16);
  ASSERT_EQ(first.elements.size(), 2u);
  EXPECT_EQ(first.elements[1].type, ValueType::kUint16);
  EXPECT_EQ(std::get<uint64_t>(first.elements[1].data), 2u);
  EXPECT_TRUE(std::get<Array>(outer.elements[1].data).elements.empty());
  EXPECT_EQ(std::get<Array>(file.Find("t.empty")->data).element_type, ValueType::kBool);

  ASSERT_EQ(file.tensors().size(), 3u);
  EXPECT_EQ(file.data_offset() % 64, 0u);
  EXPECT_EQ(file.data_offset() + 832 + 288, bytes.size());
  const TensorInfo* tok = file.FindTensor("tok");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->type, DType::kF32);
  EXPECT_EQ(tok->dims, (std::vector<int64_t>{64, 3}));
  EXPECT_EQ(tok->n_elements, 192u);
  EXPECT_EQ(tok->n_bytes, 768u);
  EXPECT_EQ(tok->cols(), 64);
  EXPECT_EQ(tok->rows(), 3);
  EXPECT_EQ(tok->data, bytes.data() + file.data_offset());
  const TensorInfo* q = file.FindTensor("q");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->type, DType::kQ4_K);
  EXPECT_EQ(q->dims, (std::vector<int64_t>{256, 1, 1, 2}));
  EXPECT_EQ(q->rows(), 2);
  EXPECT_EQ(q->n_bytes, 288u);
  EXPECT_EQ(q->offset, 832u);
  EXPECT_EQ(q->data, bytes.data() + file.data_offset() + 832);
  EXPECT_EQ(file.FindTensor("v")->type, DType::kI8);
  EXPECT_EQ(file.FindTensor("v")->n_bytes, 5u);
  EXPECT_EQ(file.FindTensor("missing"), nullptr);
}

INSTANTIATE_TEST_SUITE_P(Versions, ValidFileTest, ::testing::Values(2u, 3u));

TEST(GgufFileTest, DefaultAlignmentIs32AndNoTensorsIsValid) {
  FileSpec spec;
  spec.kvs = {KvStr("general.name", "x")};
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(Build(spec));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->alignment(), 32u);
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE(GgufFile::Parse(Build(TwoTensorSpec())).ok());
}

TEST(GgufFileTest, TypedGettersRejectOtherTypes) {
  FileSpec spec;
  spec.kvs = EveryTypeKvs();
  spec.kvs.push_back([](Builder& b) { b.Str("neg").Type(ValueType::kInt32).Put<int32_t>(-1); });
  absl::StatusOr<std::unique_ptr<GgufFile>> parsed = GgufFile::Parse(Build(spec));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const GgufFile& file = **parsed;
  auto invalid = [](const absl::Status& status, std::string_view key) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(std::string(key)));
  };
  invalid(file.GetString("t.u32").status(), "t.u32");
  invalid(file.GetInt("t.str").status(), "t.str");
  invalid(file.GetInt("t.f32").status(), "t.f32");
  invalid(file.GetInt("t.u64").status(), "t.u64");  // does not fit in int64
  invalid(file.GetUint("neg").status(), "neg");
  invalid(file.GetFloat("t.i32").status(), "t.i32");
  invalid(file.GetBool("t.u8").status(), "t.u8");
  invalid(file.GetStringArray("t.i32s").status(), "t.i32s");
  invalid(file.GetStringArray("t.str").status(), "t.str");
  invalid(file.GetIntArray("t.strs").status(), "t.strs");
  invalid(file.GetIntArray("t.f32s").status(), "t.f32s");
  invalid(file.GetIntArray("t.nested").status(), "t.nested");
  invalid(file.GetFloatArray("t.i32s").status(), "t.i32s");
  EXPECT_EQ(file.GetString("absent").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(file.GetIntArray("absent").status().code(), absl::StatusCode::kNotFound);
  invalid(file.GetUint("t.i8").status(), "t.i8");
}

TEST(GgufFileTest, RejectsBadMagicAndVersions) {
  std::vector<uint8_t> bytes = Build(TwoTensorSpec());
  bytes[0] = 'X';
  ExpectDataLoss(bytes, "not a GGUF file");
  FileSpec spec = TwoTensorSpec();
  spec.version = 1;
  ExpectDataLoss(Build(spec), "version 1 is not supported");
  spec.version = 99;
  ExpectDataLoss(Build(spec), "unsupported GGUF version 99");
  ExpectDataLoss({}, "too short");
}

TEST(GgufFileTest, RejectsHugeCountsBeforeAllocating) {
  FileSpec spec = TwoTensorSpec();
  spec.n_tensors = uint64_t{1} << 62;
  ExpectDataLoss(Build(spec), "claims 4611686018427387904 tensors");
  spec = TwoTensorSpec();
  spec.n_kv = ~uint64_t{0};
  ExpectDataLoss(Build(spec), "claims 18446744073709551615 metadata entries");
  spec = TwoTensorSpec();
  spec.kvs.push_back([](Builder& b) {
    b.Str("big").Type(ValueType::kArray).Type(ValueType::kUint64).U64(uint64_t{1} << 61);
  });
  ExpectDataLoss(Build(spec), "'big'");
  ExpectDataLoss(Build(spec), "claims 2305843009213693952 uint64 elements");
}

TEST(GgufFileTest, RejectsStringLengthPastEnd) {
  FileSpec spec = TwoTensorSpec();
  spec.kvs.push_back([](Builder& b) { b.Str("s").Type(ValueType::kString).U64(1000).U32(0); });
  ExpectDataLoss(Build(spec), "metadata key 's'");
  ExpectDataLoss(Build(spec), "claims 1000 bytes");
  spec = TwoTensorSpec();
  spec.kvs.push_back([](Builder& b) { b.U64(~uint64_t{0}); });
  ExpectDataLoss(Build(spec), "key of metadata entry #2");
}

TEST(GgufFileTest, RejectsBadDims) {
  FileSpec spec = TwoTensorSpec();
  spec.tensors[1].ne = {32, uint64_t{1} << 32, uint64_t{1} << 32};
  ExpectDataLoss(Build(spec), "tensor 'b'");
  ExpectDataLoss(Build(spec), "overflows int64");
  spec.tensors[1].ne = {32, 0};
  ExpectDataLoss(Build(spec), "ne[1] is 0");
  spec.tensors[1].ne = {uint64_t{1} << 63};
  ExpectDataLoss(Build(spec), "ne[0] is 9223372036854775808");
  spec.tensors[1].ne = {16, 2};
  ExpectDataLoss(Build(spec), "not a multiple of q8_0's block size 32");
  spec = TwoTensorSpec();
  spec.tensors[0].ne = {};
  ExpectDataLoss(Build(spec), "n_dims is 0");
  spec.tensors[0].ne = {1, 1, 1, 2, 2};
  ExpectDataLoss(Build(spec), "n_dims is 5");
  spec = TwoTensorSpec();
  spec.tensors[0].n_dims = 0x7fffffff;
  ExpectDataLoss(Build(spec), "tensor 'a'");
}

TEST(GgufFileTest, RejectsUnknownTypeIds) {
  FileSpec spec = TwoTensorSpec();
  spec.tensors[1].type = 4;  // removed Q4_2
  ExpectDataLoss(Build(spec), "tensor 'b'");
  ExpectDataLoss(Build(spec), "unknown ggml type 4");
  spec.tensors[1].type = 1000;
  ExpectDataLoss(Build(spec), "unknown ggml type 1000");
  spec = TwoTensorSpec();
  spec.kvs.push_back([](Builder& b) { b.Str("odd.key").U32(13).U32(0); });
  ExpectDataLoss(Build(spec), "metadata key 'odd.key'");
  ExpectDataLoss(Build(spec), "unknown value type 13");
  spec = TwoTensorSpec();
  spec.kvs.push_back([](Builder& b) { b.Str("odd.arr").Type(ValueType::kArray).U32(77).U64(0); });
  ExpectDataLoss(Build(spec), "metadata key 'odd.arr'");
  ExpectDataLoss(Build(spec), "unknown element type 77");
}

TEST(GgufFileTest, BoundsArrayNesting) {
  auto nested = [](int levels) {
    return [levels](Builder& b) {
      b.Str("deep").Type(ValueType::kArray);
      for (int i = 1; i < levels; ++i) b.Type(ValueType::kArray).U64(1);
      b.Type(ValueType::kUint8).U64(1).Put<uint8_t>(9);
    };
  };
  FileSpec spec = TwoTensorSpec();
  spec.kvs.push_back(nested(8));
  EXPECT_TRUE(ParseStatus(Build(spec)).ok()) << ParseStatus(Build(spec));
  spec.kvs.back() = nested(9);
  ExpectDataLoss(Build(spec), "nested deeper than 8");
  spec.kvs.back() = nested(100000);
  ExpectDataLoss(Build(spec), "metadata key 'deep'");
}

TEST(GgufFileTest, RejectsBadAlignment) {
  for (uint32_t bad : {0u, 3u, 48u}) {
    FileSpec spec = TwoTensorSpec();
    spec.kvs.push_back(KvU32("general.alignment", bad));
    ExpectDataLoss(Build(spec), absl::StrCat("'general.alignment' is ", bad));
  }
  FileSpec spec = TwoTensorSpec();
  spec.kvs.push_back(
      [](Builder& b) { b.Str("general.alignment").Type(ValueType::kUint64).U64(32); });
  ExpectDataLoss(Build(spec), "'general.alignment' must be a uint32, found uint64");
  spec.kvs.back() = KvStr("general.alignment", "32");
  ExpectDataLoss(Build(spec), "found string");
}

TEST(GgufFileTest, RejectsMisalignedAndOutOfBoundsData) {
  FileSpec spec = TwoTensorSpec();
  spec.tensors[1].offset = 48;
  ExpectDataLoss(Build(spec), "tensor 'b'");
  ExpectDataLoss(Build(spec), "offset 48");
  ExpectDataLoss(Build(spec), "not a multiple of the alignment 32");
  spec = TwoTensorSpec();
  spec.data_bytes -= 1;
  ExpectDataLoss(Build(spec), "tensor 'b': data at offset 64 + 68 bytes");
  ExpectDataLoss(Build(spec), "runs past the end of the file");
}

TEST(GgufFileTest, OffsetsAbove4GiBAreNotTruncated) {
  FileSpec spec = TwoTensorSpec();
  spec.tensors[1].offset = (uint64_t{1} << 32) + 64;  // would alias 64 if cut to 32 bits
  ExpectDataLoss(Build(spec), "tensor 'b': data at offset 4294967360 + 68 bytes");
  spec.tensors[1].offset = ~uint64_t{0} - 31;  // aligned; data_offset + offset wraps
  ExpectDataLoss(Build(spec), "offset 18446744073709551584");
  spec = TwoTensorSpec();
  spec.tensors[1].ne = {uint64_t{1} << 40, 4};  // 2^42 elements: ~4.6 TB of q8_0
  ExpectDataLoss(Build(spec), "runs past the end of the file");
}

TEST(GgufFileTest, RejectsOverlapAndDuplicates) {
  FileSpec spec = TwoTensorSpec();
  spec.tensors[0].ne = {24, 2};  // 192 bytes at 0 reach into "b" at 64
  spec.data_bytes = 192;
  ExpectDataLoss(Build(spec), "tensors 'a' (data offsets 0..192) and 'b' (from 64) overlap");
  spec = TwoTensorSpec();
  spec.tensors[1].offset = 0;
  spec.data_bytes = 68;
  ExpectDataLoss(Build(spec), "overlap");
  spec = TwoTensorSpec();
  spec.tensors[1].name = "a";
  ExpectDataLoss(Build(spec), "tensor 'a' (info #1");
  ExpectDataLoss(Build(spec), "duplicate name");
  spec = TwoTensorSpec();
  spec.kvs.push_back(KvU32("llama.block_count", 6));
  ExpectDataLoss(Build(spec), "metadata key 'llama.block_count' (entry #2");
  ExpectDataLoss(Build(spec), "duplicate key");
}

TEST(GgufFileTest, EveryTruncationIsAnError) {
  FileSpec spec = TwoTensorSpec();
  spec.kvs = EveryTypeKvs();
  spec.alignment = 64;
  spec.tensors[1].offset = 64;
  const std::vector<uint8_t> bytes = Build(spec);
  ASSERT_TRUE(ParseStatus(bytes).ok()) << ParseStatus(bytes);
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A fresh allocation of exactly n bytes lets a sanitizer catch any over-read.
    const std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + n);
    const absl::Status status = ParseStatus(prefix);
    ASSERT_EQ(status.code(), absl::StatusCode::kDataLoss) << "truncated to " << n << ": " << status;
  }
}

TEST(GgufFileTest, RandomCorruptionNeverCrashes) {
  FileSpec spec = TwoTensorSpec();
  spec.kvs = EveryTypeKvs();
  spec.alignment = 64;
  const std::vector<uint8_t> bytes = Build(spec);
  std::mt19937 rng(1234);
  int rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<uint8_t> copy = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) copy[rng() % copy.size()] = static_cast<uint8_t>(rng());
    const absl::Status status = ParseStatus(copy);
    if (!status.ok()) {
      ++rejected;
      EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    }
  }
  EXPECT_GT(rejected, 0);
}

class TempFile {
 public:
  explicit TempFile(const std::vector<uint8_t>& bytes) {
    path_ = (std::filesystem::temp_directory_path() /
             absl::StrCat("gguf_file_test_", ::getpid(), "_", counter_++, ".gguf"))
                .string();
    std::ofstream out(path_, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
  }
  ~TempFile() { std::filesystem::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  std::string path_;
};

TEST(GgufFileTest, OpenMapsTheFileAndReportsIoErrors) {
  const std::vector<uint8_t> bytes = Build(TwoTensorSpec());
  TempFile good(bytes);
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(good.path());
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->file_size(), bytes.size());
  EXPECT_EQ(*(*file)->GetUint("llama.block_count"), 5u);
  const TensorInfo* b = (*file)->FindTensor("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(std::memcmp(b->data, bytes.data() + (*file)->data_offset() + 64, 68), 0);

  EXPECT_EQ(GgufFile::Open("/nonexistent/dir/model.gguf").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(GgufFile::Open(std::filesystem::temp_directory_path().string()).ok());
  TempFile empty(std::vector<uint8_t>{});
  EXPECT_EQ(GgufFile::Open(empty.path()).status().code(), absl::StatusCode::kDataLoss);
  std::vector<uint8_t> corrupt = bytes;
  corrupt[5] = 9;
  TempFile bad(corrupt);
  const absl::Status status = GgufFile::Open(bad.path()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(status.message()), HasSubstr(bad.path()));
}

std::vector<std::string> GgufFilesIn(const std::filesystem::path& dir) {
  std::vector<std::string> paths;
  if (!std::filesystem::is_directory(dir)) return paths;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".gguf") paths.push_back(entry.path().string());
  }
  return paths;
}

TEST(GgufFileTest, OpensEverySharedModelAndTokenizer) {
  const std::filesystem::path shared = CHORD_SHARED_DIR;
  std::vector<std::string> paths = GgufFilesIn(shared / "models");
  const std::vector<std::string> tokenizers = GgufFilesIn(shared / "tokenizer");
  paths.insert(paths.end(), tokenizers.begin(), tokenizers.end());
  if (paths.empty()) GTEST_SKIP() << "no .gguf files under " << shared << "/{models,tokenizer}";
  for (const std::string& path : paths) {
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_TRUE((*file)->GetString("general.architecture").ok()) << path;
  }
}

TEST(GgufFileTest, Stories260KFacts) {
  const std::string path = std::string(CHORD_SHARED_DIR) + "/models/stories260K.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*(*file)->GetString("general.architecture"), "llama");
  EXPECT_EQ(*(*file)->GetInt("llama.block_count"), 5);
  EXPECT_EQ(*(*file)->GetInt("llama.embedding_length"), 64);
  const TensorInfo* embd = (*file)->FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->dims, (std::vector<int64_t>{64, 512}));
  EXPECT_EQ((*file)->GetStringArray("tokenizer.ggml.tokens")->size(), 512u);
}

TEST(GgufFileTest, ParseHeaderReadsMetadataAndTensorTableWithoutData) {
  const std::string path = std::string(CHORD_DEFAULT_MODEL);
  absl::StatusOr<std::unique_ptr<GgufFile>> full = GgufFile::Open(path);
  ASSERT_TRUE(full.ok()) << full.status();
  const auto header_bytes = (*full)->bytes().first((*full)->data_offset());
  absl::StatusOr<std::unique_ptr<GgufFile>> header =
      GgufFile::ParseHeader(std::string(header_bytes.begin(), header_bytes.end()));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ((*header)->metadata().size(), (*full)->metadata().size());
  ASSERT_EQ((*header)->tensors().size(), (*full)->tensors().size());
  for (size_t i = 0; i < (*full)->tensors().size(); ++i) {
    EXPECT_EQ((*header)->tensors()[i].name, (*full)->tensors()[i].name);
    EXPECT_EQ((*header)->tensors()[i].n_bytes, (*full)->tensors()[i].n_bytes);
    EXPECT_EQ((*header)->tensors()[i].data, nullptr);
  }
  // A header cut inside the tensor table is still an error.
  EXPECT_FALSE(GgufFile::ParseHeader(std::string(header_bytes.begin(), header_bytes.end() - 40)).ok());
}

}  // namespace
}  // namespace chord::gguf
