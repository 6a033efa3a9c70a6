// `chord mkmodel`: writes a Llama-architecture GGUF with seeded random weights
// (see cli/mkmodel/mkmodel.h), with a progress bar on a terminal.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "cli/commands.h"
#include "cli/mkmodel/mkmodel.h"
#include "common/base/log.h"

namespace chord::cli {
namespace {

struct MkmodelFlags {
  std::string out;
  std::string preset;
  std::string type;
  uint64_t seed = 42;
  int threads = 0;  // 0: all cores
  std::string vocab_from;
  std::string name;
  uint32_t alignment = 32;
  mkmodel::ModelShape dims;  // values of the shape flags that were given
  bool tied = false;
};

// Draws a bar on a terminal; otherwise logs a line every 10%.
class ProgressReporter {
 public:
  ProgressReporter() : tty_(::isatty(STDERR_FILENO) == 1), start_(Clock::now()) {}

  void Update(uint64_t done, uint64_t total) {
    const auto now = Clock::now();
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double fraction = total == 0 ? 1.0 : static_cast<double>(done) / total;
    if (tty_) {
      if (done != total && now - last_draw_ < std::chrono::milliseconds(100)) return;
      last_draw_ = now;
      constexpr int kWidth = 40;
      const int filled = static_cast<int>(fraction * kWidth);
      std::fprintf(stderr, "\r[%s%s] %3d%% %7.1f/%.1f MB %6.1f MB/s",
                   std::string(filled, '#').c_str(), std::string(kWidth - filled, ' ').c_str(),
                   static_cast<int>(fraction * 100), done / 1e6, total / 1e6,
                   seconds > 0 ? done / 1e6 / seconds : 0.0);
      if (done == total) std::fprintf(stderr, "\n");
      return;
    }
    const int decile = static_cast<int>(fraction * 10);
    if (decile > last_decile_) {
      last_decile_ = decile;
      log::Info("mkmodel: %d%% (%.1f of %.1f MB, %.1f s)", decile * 10, done / 1e6, total / 1e6,
                seconds);
    }
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool tty_;
  Clock::time_point start_;
  Clock::time_point last_draw_{};
  int last_decile_ = 0;
};

std::string Join(const std::vector<std::string_view>& names) {
  std::string out;
  for (std::string_view name : names) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "chord mkmodel: %s\n", message.c_str());
  return 2;
}

void AddShapeFlags(CLI::App* app, MkmodelFlags& f) {
  app->add_option("--n-embd", f.dims.n_embd, "embedding width");
  app->add_option("--n-layer", f.dims.n_layer, "number of blocks");
  app->add_option("--n-head", f.dims.n_head, "attention heads");
  app->add_option("--n-head-kv", f.dims.n_head_kv, "key/value heads (grouped-query attention)");
  app->add_option("--n-ff", f.dims.n_ff, "feed-forward width");
  app->add_option("--n-vocab", f.dims.n_vocab, "vocabulary size (synthetic vocabulary)");
  app->add_option("--n-ctx", f.dims.n_ctx, "training context length (llama.context_length)");
  app->add_option("--rope-base", f.dims.rope_base, "RoPE frequency base");
  app->add_option("--rms-eps", f.dims.rms_eps, "RMSNorm epsilon");
  app->add_flag("--tied,!--untied", f.tied, "share token_embd as the output matrix");
}

// Applies the preset, then every shape flag that was given.
std::optional<mkmodel::ModelShape> ResolveShape(CLI::App* app, const MkmodelFlags& f,
                                                std::string* error) {
  static constexpr const char* kShapeFlags[] = {"--n-embd",  "--n-layer", "--n-head", "--n-head-kv",
                                                "--n-ff",    "--n-vocab", "--n-ctx",  "--rope-base",
                                                "--rms-eps", "--tied"};
  bool any_shape_flag = false;
  for (const char* flag : kShapeFlags) any_shape_flag |= app->count(flag) > 0;
  if (f.preset.empty() && !any_shape_flag) {
    *error = "give --preset NAME or shape flags (--n-embd, --n-layer, ...)";
    return std::nullopt;
  }
  mkmodel::ModelShape shape;
  shape.name = "custom";
  if (!f.preset.empty()) {
    std::optional<mkmodel::ModelShape> preset = mkmodel::FindPreset(f.preset);
    if (!preset) {
      *error = absl::StrCat("unknown --preset '", f.preset, "' (choose from ",
                            Join(mkmodel::PresetNames()), ")");
      return std::nullopt;
    }
    shape = *preset;
  }
  if (app->count("--n-embd")) shape.n_embd = f.dims.n_embd;
  if (app->count("--n-layer")) shape.n_layer = f.dims.n_layer;
  if (app->count("--n-head")) shape.n_head = f.dims.n_head;
  if (app->count("--n-head-kv")) shape.n_head_kv = f.dims.n_head_kv;
  if (app->count("--n-ff")) shape.n_ff = f.dims.n_ff;
  if (app->count("--n-vocab")) shape.n_vocab = f.dims.n_vocab;
  if (app->count("--n-ctx")) shape.n_ctx = f.dims.n_ctx;
  if (app->count("--rope-base")) shape.rope_base = f.dims.rope_base;
  if (app->count("--rms-eps")) shape.rms_eps = f.dims.rms_eps;
  if (app->count("--tied")) shape.tied = f.tied;
  if (!f.name.empty()) shape.name = f.name;
  return shape;
}

int RunMkmodel(CLI::App* app, const MkmodelFlags& f) {
  std::optional<mkmodel::FileType> type = mkmodel::ParseFileType(f.type);
  if (!type) {
    return UsageError(absl::StrCat("unknown --type '", f.type, "' (choose from ",
                                   Join(mkmodel::FileTypeNames()), ")"));
  }
  std::string error;
  std::optional<mkmodel::ModelShape> shape = ResolveShape(app, f, &error);
  if (!shape) return UsageError(error);
  if (!f.vocab_from.empty() && app->count("--n-vocab")) {
    return UsageError("--n-vocab and --vocab-from exclude each other (the source sets n_vocab)");
  }
  if (f.threads < 0) return UsageError("--threads must be positive");
  if (f.alignment == 0 || (f.alignment & (f.alignment - 1)) != 0) {
    return UsageError("--alignment must be a power of two");
  }
  if (absl::Status valid = mkmodel::ValidateShape(*shape); !valid.ok()) {
    return UsageError(std::string(valid.message()));
  }
  if (absl::Status planned = mkmodel::PlanTensors(*shape, *type).status(); !planned.ok()) {
    return UsageError(std::string(planned.message()));
  }

  mkmodel::MkmodelOptions options;
  options.shape = *shape;
  options.file_type = *type;
  options.seed = f.seed;
  options.threads = f.threads > 0
                        ? f.threads
                        : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  options.alignment = f.alignment;
  options.vocab_from = f.vocab_from;

  log::Info("mkmodel: writing %s (%s, %s, seed %d, %d threads)", f.out, shape->name,
            mkmodel::FileTypeName(*type), f.seed, options.threads);
  ProgressReporter progress;
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = mkmodel::WriteModel(
      options, f.out, [&progress](uint64_t done, uint64_t total) { progress.Update(done, total); });
  if (!status.ok()) {
    std::fprintf(stderr, "chord mkmodel: %s\n", std::string(status.message()).c_str());
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  log::Info("mkmodel: wrote %s in %.1f s", f.out,
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}

}  // namespace

Subcommand AddMkmodelCommand(CLI::App& parent) {
  auto flags = std::make_shared<MkmodelFlags>();
  Subcommand command;
  CLI::App* app = parent.add_subcommand(
      "mkmodel", "write a Llama-architecture GGUF with seeded random weights");
  app->add_option("--out", flags->out, "output GGUF path")->required();
  app->add_option("--preset", flags->preset, "tiny, tinyllama-1.1b or llama2-7b");
  app->add_option("--type", flags->type, "F32, F16, Q8_0, Q4_0, Q4_K_M, Q5_K_M or Q6_K")
      ->required();
  app->add_option("--seed", flags->seed, "weights' random seed")->capture_default_str();
  app->add_option("--threads", flags->threads, "writer threads (default: all cores)");
  app->add_option("--vocab-from", flags->vocab_from,
                  "copy the tokenizer (and vocabulary size) from this GGUF");
  app->add_option("--name", flags->name, "general.name (default: the preset's name)");
  app->add_option("--alignment", flags->alignment, "general.alignment")->capture_default_str();
  AddShapeFlags(app, *flags);
  command.app = app;
  command.run = [app, flags] { return RunMkmodel(app, *flags); };
  return command;
}

}  // namespace chord::cli
