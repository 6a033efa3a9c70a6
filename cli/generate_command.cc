// `chord generate`: text generation in one process, like llama.cpp's CLI.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/generate_common.h"
#include "cli/default_model.h"
#include "cli/remote_generate.h"
#include "common/gguf/gguf_file.h"
#include "common/tensor/dtype.h"
#include "common/tokenizer/tokenizer.h"
#include "worker/local_generator.h"

namespace chord::cli {
namespace {

int RunGenerate(const GenerateFlags& flags) {
  if (!flags.server.empty()) return RunRemoteGenerate(flags);
  const std::string model_path = flags.model.empty() ? DefaultModelPath() : flags.model;
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> file = gguf::GgufFile::Open(model_path);
  if (!file.ok()) {
    std::fprintf(stderr, "chord generate: %s\n", std::string(file.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(**file);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "chord generate: %s\n", std::string(tokenizer.status().message()).c_str());
    return 1;
  }
  LocalGeneratorOptions options;
  options.n_ctx = flags.n_ctx;
  options.n_threads = flags.threads;
  options.kv_type = flags.kv_type == "f16" ? DType::kF16 : DType::kF32;
  absl::StatusOr<std::unique_ptr<LocalGenerator>> generator = LocalGenerator::Create(**file, options);
  if (!generator.ok()) {
    std::fprintf(stderr, "chord generate: %s\n", std::string(generator.status().message()).c_str());
    return 1;
  }
  GenerationRequest request;
  request.prompt_ids = (*tokenizer)->Encode(flags.prompt, /*add_special=*/true);
  request.sampling = flags.sampling;
  request.max_tokens = flags.max_tokens;
  request.stop = flags.stop;
  request.ignore_eos = flags.ignore_eos;
  request.logprobs = flags.logprobs;

  if (!flags.json) {
    std::fputs(flags.prompt.c_str(), stdout);
    std::fflush(stdout);
  }
  absl::StatusOr<GenerationResult> result =
      (*generator)->Generate(request, **tokenizer, [&](std::string_view text) {
        if (flags.json) return;
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
      });
  if (!result.ok()) {
    std::fprintf(stderr, "\nchord generate: %s\n", std::string(result.status().message()).c_str());
    return 1;
  }
  if (flags.json) {
    const char* finish = result->finish_reason == FinishReason::kStop ? "stop" : "length";
    std::printf("%s\n", JsonLine(GenerationJson(request.prompt_ids, result->token_ids, result->text,
                                                 result->top_logprobs, finish))
                            .c_str());
  } else {
    std::printf("\n");
  }
  const double decode_rate = result->decode_seconds > 0
                                 ? static_cast<double>(result->token_ids.size()) / result->decode_seconds
                                 : 0.0;
  std::fprintf(stderr, "chord generate: %zu prompt tokens in %.3f s, %zu tokens generated (%.1f tok/s)\n",
               request.prompt_ids.size(), result->prompt_seconds, result->token_ids.size(), decode_rate);
  return 0;
}

}  // namespace

Subcommand AddGenerateCommand(CLI::App& parent) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* app = parent.add_subcommand("generate", "Generate text from a prompt in this process");
  app->add_option("--model", flags->model, "GGUF model (default: the bundled stories260K)");
  app->add_option("--server", flags->server, "HOST:PORT of a chord server: generate there instead of here")
      ->excludes("--model");
  app->add_option("--api-key", flags->api_key, "with --server: the server's API key (default: $CHORD_API_KEY)");
  app->add_option("--tls-ca", flags->tls_ca, "with --server: use TLS, trusting this PEM CA")->check(CLI::ExistingFile);
  app->add_option("--tls-cert", flags->tls_cert, "with --server and --tls-ca: PEM client certificate (mutual TLS)")
      ->check(CLI::ExistingFile);
  app->add_option("--tls-key", flags->tls_key, "PEM private key of --tls-cert")->check(CLI::ExistingFile);
  app->add_option("--prompt", flags->prompt, "prompt text (may be empty)")->required();
  app->add_option("--max-tokens", flags->max_tokens, "most tokens to generate")
      ->capture_default_str()->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  app->add_option("--temperature", flags->sampling.temperature, "0 = greedy")
      ->capture_default_str()->check(CLI::Range(0.0, 100.0));
  app->add_option("--top-k", flags->sampling.top_k, "keep the K most likely (<= 0: all)")->capture_default_str();
  app->add_option("--top-p", flags->sampling.top_p, "nucleus sampling (1 = off)")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  app->add_option("--min-p", flags->sampling.min_p, "drop tokens below min-p x the top probability")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  app->add_option("--repeat-penalty", flags->sampling.repetition_penalty, "1 = off")
      ->capture_default_str()->check(CLI::Range(0.0, 100.0));
  app->add_option("--repeat-last-n", flags->sampling.penalty_last_n, "penalty window (-1: all)")->capture_default_str();
  app->add_option("--presence-penalty", flags->sampling.presence_penalty)->capture_default_str();
  app->add_option("--frequency-penalty", flags->sampling.frequency_penalty)->capture_default_str();
  app->add_option("--stop", flags->stop, "stop when this text appears (repeatable)");
  app->add_option("--seed", flags->sampling.seed, "random seed")->capture_default_str();
  app->add_flag("--ignore-eos", flags->ignore_eos, "keep generating past end-of-sequence");
  app->add_option("--logprobs", flags->logprobs, "report the N most likely tokens at each step")
      ->check(CLI::Range(0, 1000));
  app->add_option("--kv-type", flags->kv_type, "KV cache type")
      ->capture_default_str()->check(CLI::IsMember({"f32", "f16"}));
  app->add_option("--ctx-size", flags->n_ctx, "context size (0: the model's)")->check(CLI::NonNegativeNumber);
  app->add_option("--threads", flags->threads, "compute threads (0: one per core)")->check(CLI::NonNegativeNumber);
  app->add_flag("--json", flags->json, "print one JSON object with the result on stdout");
  return {app, [flags] { return RunGenerate(*flags); }};
}

}  // namespace chord::cli
