#include "common/config/coordinator_flags.h"

#include <cctype>
#include <limits>
#include <string>

namespace chord {

namespace {

// Every flag also reads from a variable: --grpc-port from CHORD_GRPC_PORT.
std::string VariableOf(const char* name) {
  std::string variable = "CHORD_";
  for (const char* c = name + 2; *c != '\0'; ++c) {
    variable += *c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(*c)));
  }
  return variable;
}

}  // namespace

template <typename T>
CLI::Option* CoordinatorFlags::Override(CLI::Option* option, T CoordinatorSection::*field) {
  overrides_.push_back([this, option, field](CoordinatorSection& section) {
    if (option->count() > 0) section.*field = values_.*field;
  });
  return option;
}

CLI::Option* CoordinatorFlags::AddFlag(CLI::App& app, const char* name, bool CoordinatorSection::*field,
                                       const char* help) {
  return Override(app.add_flag(name, values_.*field, help)->envname(VariableOf(name)), field);
}

template <typename T>
CLI::Option* CoordinatorFlags::Add(CLI::App& app, const char* name, T CoordinatorSection::*field,
                                   const char* help) {
  return Override(app.add_option(name, values_.*field, help)->envname(VariableOf(name)), field);
}

CoordinatorFlags::CoordinatorFlags(CLI::App& app) {
  using S = CoordinatorSection;
  Add(app, "--grpc-port", &S::grpc_port, "gRPC port; 0 lets the OS pick")
      ->check(CLI::Range(0, 65535));
  Add(app, "--min-workers", &S::min_workers, "workers needed before the first plan")
      ->check(CLI::Range(1, 4096));
  Add(app, "--kv-slots", &S::kv_slots, "sequences held at once")->check(CLI::Range(1, 4096));
  Add(app, "--ctx-size", &S::ctx_size, "positions per sequence; 0: the model's")
      ->check(CLI::NonNegativeNumber);
  Add(app, "--kv-tokens", &S::kv_tokens,
      "positions each stage's paged KV cache holds, shared by the sequences; beyond it the newest "
      "is preempted (0: min(kv-slots, 4) full contexts)")
      ->check(CLI::Range(int64_t{0}, int64_t{std::numeric_limits<int32_t>::max()}));
  Add(app, "--kv-type", &S::kv_type, "f32 or f16")->check(CLI::IsMember({"f32", "f16"}));
  AddFlag(app, "--exact", &S::exact,
          "results independent of batching and prompt chunking on GPU stages too (CPU stages always are)");
  Override(app.add_flag("--chain-steps,!--no-chain-steps", values_.chain_steps,
                        "send each sequence's next step while its current one runs; stage 0 fills "
                        "in the token it samples (no round trip between two tokens)")
               ->envname("CHORD_CHAIN_STEPS"),
           &S::chain_steps);
  Add(app, "--max-queue", &S::max_queue, "queued requests before RESOURCE_EXHAUSTED")
      ->check(CLI::PositiveNumber);
  Add(app, "--worker-timeout-ms", &S::worker_timeout_ms,
      "a worker silent this long is lost and its layers re-planned (default 2000)")
      ->check(CLI::Range(100, 3600000));
  Add(app, "--grace-ms", &S::grace_ms,
      "on SIGTERM, time in-flight requests get to finish (default 10000)")
      ->check(CLI::Range(0, 3600000));
  Add(app, "--step-timeout-ms", &S::step_timeout_ms,
      "a step unanswered this long is replayed, and stages drop it once it is this late "
      "(default 60000)")
      ->check(CLI::Range(1, 3600000));
  Add(app, "--http-port", &S::http_port,
      "OpenAI-compatible HTTP port (off unless given; 0: OS pick)")
      ->check(CLI::Range(0, 65535));
  Add(app, "--http-host", &S::http_host,
      "where the HTTP API binds (default: the coordinator's host)");
  Add(app, "--chat-template", &S::chat_template,
      "llama2, llama3, chatml, mistral, zephyr, gemma or phi3 (default: recognized from the "
      "model)");
  Add(app, "--api-key-file", &S::api_key_file,
      "file whose first line is the bearer token gRPC and HTTP clients must send (or set "
      "CHORD_API_KEY)")
      ->check(CLI::ExistingFile);
  Add(app, "--tls-cert", &S::tls_cert, "PEM certificate: serve gRPC and HTTP over TLS")
      ->check(CLI::ExistingFile);
  Add(app, "--tls-key", &S::tls_key, "PEM private key of --tls-cert")->check(CLI::ExistingFile);
  Add(app, "--tls-client-ca", &S::tls_client_ca,
      "PEM CA: require client certificates it signed (mutual TLS)")
      ->check(CLI::ExistingFile);
}

CoordinatorSection CoordinatorFlags::Apply(CoordinatorSection file) const {
  for (const auto& apply : overrides_) apply(file);
  return file;
}

}  // namespace chord
