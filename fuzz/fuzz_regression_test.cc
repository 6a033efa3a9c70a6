// Runs every file of fuzz/corpus/<target>/ (seed inputs and the inputs that
// once crashed a target, named crash-*) through that target's entry point in
// the normal, sanitized build. A target aborts on a broken invariant and the
// sanitizers abort on memory errors or undefined behaviour, so a regression
// fails this test by killing it, with the file's name printed just before.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <ostream>
#include <string>
#include <vector>

#include "fuzz/fuzz_target.h"

// libFuzzer fails an input that allocates more than -rss_limit_mb (2 GiB in
// scripts/fuzz.sh). Under AddressSanitizer this test does the same, so that an
// input once found to allocate gigabytes fails here at once instead of
// swapping; without ASan the function is unused.
extern "C" const char* __asan_default_options() { return "max_allocation_size_mb=2048"; }

namespace chord::fuzz {
namespace {

struct Target {
  const char* name;
  int (*run)(const uint8_t*, size_t);
};

constexpr Target kTargets[] = {
    {"gguf", FuzzGguf},
    {"tokenizer", FuzzTokenizer},
    {"message", FuzzMessage},
    {"config", FuzzConfig},
};

// How ctest lists a case: by the target's name, not its bytes.
void PrintTo(const Target& target, std::ostream* out) { *out << target.name; }

class FuzzRegressionTest : public ::testing::TestWithParam<Target> {};

TEST_P(FuzzRegressionTest, EveryCorpusFileRuns) {
  const std::filesystem::path dir = std::filesystem::path(CHORD_FUZZ_CORPUS_DIR) / GetParam().name;
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());  // a stable order for reading the log
  ASSERT_FALSE(files.empty()) << "no inputs in " << dir;
  for (const std::filesystem::path& file : files) {
    std::ifstream in(file, std::ios::binary);
    ASSERT_TRUE(in) << file;
    const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                     std::istreambuf_iterator<char>());
    // Printed first: if the target crashes, this is the last line of the log.
    std::fprintf(stderr, "fuzz_regression_test: %s\n", file.c_str());
    EXPECT_EQ(GetParam().run(bytes.data(), bytes.size()), 0) << file;
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzRegressionTest, ::testing::ValuesIn(kTargets),
                         [](const ::testing::TestParamInfo<Target>& param_info) {
                           return std::string(param_info.param.name);
                         });

}  // namespace
}  // namespace chord::fuzz
