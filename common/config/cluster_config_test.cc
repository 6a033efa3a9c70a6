#include "common/config/cluster_config.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/config/coordinator_flags.h"
#include "common/config/curve_flags.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord {
namespace {

using ::testing::HasSubstr;

constexpr char kFull[] = R"(coordinator:
  host: 127.0.0.1
  grpc_port: 6000
  control_port: 6001
  kv_slots: 4
  ctx_size: 512
  kv_tokens: 1024
  kv_type: f16
  exact: true
  chain_steps: false
  max_queue: 32
  min_workers: 2
  http_port: 8080
  http_host: 0.0.0.0
  chat_template: chatml
  api_key_file: /etc/chord/token
  tls_cert: /etc/chord/tls/server.crt
  tls_key: /etc/chord/tls/server.key
  tls_client_ca: /etc/chord/tls/clients.crt
  worker_timeout_ms: 750
  grace_ms: 3000
  step_timeout_ms: 4500
  curve_key: /etc/chord/keys/coordinator.key
loader:
  host: 127.0.0.1
  port: 6002
  model: models/stories260K.gguf
  curve_key: /etc/chord/keys/loader.key
curve:
  allow: /etc/chord/keys/allowed
  coordinator_public_key: /etc/chord/keys/coordinator.pub
  loader_public_key: /etc/chord/keys/loader.pub
workers:
  - id: w0
    data_port: 6100
    memory_budget: 2G
    threads: 3
    curve_key: /etc/chord/keys/w0.key
  - id: w1
    host: 127.0.0.2
    memory_budget: 512M
    gpu_memory_budget: 40G
    backend: cuda
    device: 1
    nccl: false
    nccl_interface: eth1
)";

TEST(ClusterConfigTest, ParsesEveryField) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(kFull);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->coordinator.grpc_port, 6000);
  EXPECT_EQ(config->coordinator.control_port, 6001);
  EXPECT_EQ(config->coordinator.kv_slots, 4);
  EXPECT_EQ(config->coordinator.ctx_size, 512);
  EXPECT_EQ(config->coordinator.kv_tokens, 1024);
  EXPECT_EQ(config->coordinator.kv_type, "f16");
  EXPECT_TRUE(config->coordinator.exact);
  EXPECT_FALSE(config->coordinator.chain_steps);
  EXPECT_EQ(config->coordinator.max_queue, 32);
  EXPECT_EQ(config->coordinator.min_workers, 2);
  EXPECT_EQ(config->coordinator.http_port, 8080);
  EXPECT_EQ(config->coordinator.http_bind_host(), "0.0.0.0");
  EXPECT_EQ(config->coordinator.chat_template, "chatml");
  EXPECT_EQ(config->coordinator.api_key_file, "/etc/chord/token");
  EXPECT_EQ(config->coordinator.tls_cert, "/etc/chord/tls/server.crt");
  EXPECT_EQ(config->coordinator.tls_key, "/etc/chord/tls/server.key");
  EXPECT_EQ(config->coordinator.tls_client_ca, "/etc/chord/tls/clients.crt");
  EXPECT_EQ(config->coordinator.worker_timeout_ms, 750);
  EXPECT_EQ(config->coordinator.grace_ms, 3000);
  EXPECT_EQ(config->coordinator.step_timeout_ms, 4500);
  EXPECT_EQ(config->loader.port, 6002);
  EXPECT_EQ(config->loader.model, "models/stories260K.gguf");
  ASSERT_EQ(config->workers.size(), 2u);
  EXPECT_EQ(config->workers[0].id, "w0");
  EXPECT_EQ(config->workers[0].host, "127.0.0.1");
  EXPECT_EQ(config->workers[0].data_port, 6100);
  EXPECT_EQ(config->workers[0].memory_budget, 2ull << 30);
  EXPECT_EQ(config->workers[0].threads, 3);
  EXPECT_TRUE(config->workers[0].nccl);
  EXPECT_TRUE(config->workers[0].nccl_interface.empty());
  EXPECT_FALSE(config->workers[1].nccl);
  EXPECT_EQ(config->workers[1].nccl_interface, "eth1");
  EXPECT_EQ(config->workers[0].backend, "cpu");
  EXPECT_EQ(config->workers[1].host, "127.0.0.2");
  EXPECT_EQ(config->workers[1].memory_budget, 512ull << 20);
  EXPECT_EQ(config->workers[1].gpu_memory_budget, 40ull << 30);
  EXPECT_EQ(config->workers[0].gpu_memory_budget, 0u);
  EXPECT_EQ(config->workers[1].backend, "cuda");
  EXPECT_EQ(config->workers[1].device, 1);
  ASSERT_NE(config->FindWorker("w1"), nullptr);
  EXPECT_EQ(config->FindWorker("w1")->device, 1);
  EXPECT_EQ(config->coordinator.curve_key, "/etc/chord/keys/coordinator.key");
  EXPECT_EQ(config->loader.curve_key, "/etc/chord/keys/loader.key");
  EXPECT_EQ(config->workers[0].curve_key, "/etc/chord/keys/w0.key");
  EXPECT_TRUE(config->workers[1].curve_key.empty());
  EXPECT_EQ(config->curve.allow, "/etc/chord/keys/allowed");
  EXPECT_EQ(config->curve.coordinator_public_key, "/etc/chord/keys/coordinator.pub");
  EXPECT_EQ(config->curve.loader_public_key, "/etc/chord/keys/loader.pub");
  EXPECT_EQ(config->FindWorker("w2"), nullptr);
}

TEST(ClusterConfigTest, EmptyDocumentGivesDefaults) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig("");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->coordinator.grpc_port, 50051);
  EXPECT_EQ(config->coordinator.kv_slots, 16);
  EXPECT_EQ(config->coordinator.http_port, -1);  // HTTP off
  EXPECT_EQ(config->coordinator.http_bind_host(), "127.0.0.1");
  EXPECT_TRUE(config->coordinator.api_key_file.empty());
  EXPECT_TRUE(config->coordinator.tls_cert.empty());
  EXPECT_EQ(config->coordinator.step_timeout_ms, 60000);
  EXPECT_EQ(config->loader.port, 5556);
  EXPECT_TRUE(config->workers.empty());
}

TEST(ClusterConfigTest, ToYamlRoundTrips) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(kFull);
  ASSERT_TRUE(config.ok()) << config.status();
  std::string yaml = config->ToYaml();
  absl::StatusOr<ClusterConfig> again = ParseClusterConfig(yaml);
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << yaml;
  EXPECT_EQ(again->ToYaml(), yaml);
  EXPECT_EQ(again->workers[1].memory_budget, 512ull << 20);
  EXPECT_EQ(again->workers[1].gpu_memory_budget, 40ull << 30);
  EXPECT_EQ(again->coordinator.kv_type, "f16");
  EXPECT_TRUE(again->coordinator.exact);
  EXPECT_FALSE(again->coordinator.chain_steps);
  EXPECT_EQ(again->coordinator.http_port, 8080);
  EXPECT_EQ(again->coordinator.tls_key, "/etc/chord/tls/server.key");
  EXPECT_EQ(again->coordinator.step_timeout_ms, 4500);
  EXPECT_EQ(again->curve.loader_public_key, "/etc/chord/keys/loader.pub");
  EXPECT_EQ(again->workers[0].curve_key, "/etc/chord/keys/w0.key");
  // Defaults print too, so the effective config is complete.
  absl::StatusOr<ClusterConfig> defaults = ParseClusterConfig("");
  ASSERT_TRUE(defaults.ok());
  EXPECT_THAT(defaults->ToYaml(), HasSubstr("grpc_port: 50051"));
  EXPECT_THAT(defaults->ToYaml(), HasSubstr("step_timeout_ms: 60000"));
  EXPECT_THAT(defaults->ToYaml(), HasSubstr("workers: []"));
}

struct BadCase {
  const char* yaml;
  const char* expect;  // substring of the error message
};

TEST(ClusterConfigTest, UnicodeStringsRoundTrip) {
  const char* yaml = "workers:\n  - id: w\xc3\xa9\n  - id: w\xf0\x9f\x98\x80\n";
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(yaml);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->workers.size(), 2u);
  EXPECT_EQ(config->workers[0].id, "w\xc3\xa9");
  EXPECT_EQ(config->workers[1].id, "w\xf0\x9f\x98\x80");
  absl::StatusOr<ClusterConfig> again = ParseClusterConfig(config->ToYaml());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->ToYaml(), config->ToYaml());
  EXPECT_EQ(again->workers[1].id, config->workers[1].id);
}

TEST(ClusterConfigTest, RejectsBadDocumentsNamingFieldAndLine) {
  const BadCase cases[] = {
      {"coordinator:\n  grpc_prot: 1\n", "coordinator.grpc_prot (line 2): unknown key"},
      {"curve:\n  loader_public_key: l.pub\n", "curve.allow (line 2): required"},
      {"curve:\n  allow: a\n  secret: s\n", "curve.secret (line 3): unknown key"},
      {"coordinator:\n  kv_slots: many\n", "coordinator.kv_slots (line 2): expected an integer"},
      {"coordinator:\n  kv_slots: 0\n", "coordinator.kv_slots (line 2)"},
      {"coordinator:\n  kv_tokens: -16\n", "coordinator.kv_tokens (line 2)"},
      {"coordinator:\n  grpc_port: 70000\n",
       "coordinator.grpc_port (line 2): 70000 is out of range"},
      {"coordinator:\n  kv_type: q8\n", "coordinator.kv_type (line 2): 'q8' is not one of"},
      {"coordinator:\n  exact: maybe\n", "coordinator.exact (line 2): expected true or false"},
      {"coordinator:\n  host: [a, b]\n", "coordinator.host (line 2): expected a string"},
      {"coordinator: 3\n", "coordinator (line 1): expected a mapping"},
      {"coordinator:\n  http_port: -1\n", "coordinator.http_port (line 2)"},
      {"coordinator:\n  step_timeout_ms: 0\n",
       "coordinator.step_timeout_ms (line 2): 0 is out of range [1, 3600000]"},
      {"coordinator:\n  step_timeout_ms: -5\n",
       "coordinator.step_timeout_ms (line 2): -5 is out of range"},
      {"coordinator:\n  step_timeout_ms: 2s\n",
       "coordinator.step_timeout_ms (line 2): expected an integer, got '2s'"},
      {"coordinator:\n  api_key_file: [a]\n",
       "coordinator.api_key_file (line 2): expected a string"},
      {"coordinator:\n  tls_cert: c.pem\n", "tls_cert and tls_key go together"},
      {"coordinator:\n  tls_key: k.pem\n", "tls_cert and tls_key go together"},
      {"coordinator:\n  tls_client_ca: ca.pem\n", "tls_client_ca (mutual TLS) needs tls_cert"},
      {"loader:\n  port: -1\n", "loader.port (line 2)"},
      {"loader:\n  model:\n", "loader.model (line 2): missing value"},
      {"workers:\n  - id: a\n  - id: a\n", "workers[1].id (line 3): duplicate worker id 'a'"},
      {"workers:\n  - host: x\n", "workers[0].id (line 2): required"},
      {"workers:\n  - id: a\n    memory_budget: 2Q\n",
       "workers[0].memory_budget (line 3): bad size"},
      {"workers:\n  - id: a\n    gpu_memory_budget: [1]\n",
       "workers[0].gpu_memory_budget (line 3): expected a size"},
      {"workers:\n  - id: a\n    nccl: maybe\n",
       "workers[0].nccl (line 3): expected true or false"},
      {"workers:\n  - id: a\n    backend: tpu\n", "workers[0].backend (line 3)"},
      {"workers:\n  - id: a\n    colour: red\n", "workers[0].colour (line 3): unknown key"},
      {"workers: {id: a}\n", "workers (line 1): expected a list"},
      {"scheduler:\n  x: 1\n", "scheduler (line 1): unknown key"},
      {"coordinator:\n  host: [unclosed\n", "line"},
      {"- a\n- b\n", "expected a mapping"},
      // A repeated key is refused rather than read twice: two workers lists
      // would otherwise join past the duplicate-id check.
      {"workers:\n  - id: a\nworkers:\n  - id: a\n", "workers (line 3): duplicate key"},
      {"loader:\n  port: 1\n  port: 2\n", "loader.port (line 3): duplicate key"},
      // YAML is Unicode: other bytes would print as replacement characters, and
      // two different ids could then print the same.
      {"workers:\n  - id: w\xff"
       "0\n",
       "workers[0].id (line 2): not valid UTF-8"},
      {"workers:\n  - id: w\xc0\xb0\n", "workers[0].id (line 2): not valid UTF-8"},  // overlong
      {"workers:\n  - id: w\xed\xa0\x80\n", "not valid UTF-8"},                      // surrogate
      {"loader:\n  model: m\xe2\x82\n", "loader.model (line 2): not valid UTF-8"},   // cut short
  };
  for (const BadCase& c : cases) {
    absl::StatusOr<ClusterConfig> config = ParseClusterConfig(c.yaml);
    ASSERT_FALSE(config.ok()) << c.yaml;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << c.yaml;
    EXPECT_THAT(std::string(config.status().message()), HasSubstr(c.expect)) << c.yaml;
  }
}

TEST(ClusterConfigTest, LoadsFromFileAndReportsPath) {
  std::filesystem::path dir = std::filesystem::temp_directory_path();
  std::filesystem::path good = dir / ("chord_cfg_good_" + std::to_string(::getpid()) + ".yaml");
  std::filesystem::path bad = dir / ("chord_cfg_bad_" + std::to_string(::getpid()) + ".yaml");
  std::ofstream(good) << kFull;
  std::ofstream(bad) << "coordinator:\n  kv_slots: 1\n  oops: 2\n";
  absl::StatusOr<ClusterConfig> config = LoadClusterConfig(good.string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->workers.size(), 2u);
  absl::StatusOr<ClusterConfig> broken = LoadClusterConfig(bad.string());
  ASSERT_FALSE(broken.ok());
  EXPECT_THAT(std::string(broken.status().message()), HasSubstr(bad.string()));
  EXPECT_THAT(std::string(broken.status().message()), HasSubstr("coordinator.oops (line 3)"));
  EXPECT_EQ(LoadClusterConfig((dir / "no_such_chord_config.yaml").string()).status().code(),
            absl::StatusCode::kNotFound);
  std::filesystem::remove(good);
  std::filesystem::remove(bad);
}

// Parses `args` (after the program name) with CoordinatorFlags and applies
// them over `file`.
absl::StatusOr<CoordinatorSection> ApplyFlags(const CoordinatorSection& file,
                                              std::vector<std::string> args) {
  CLI::App app;
  CoordinatorFlags flags(app);
  std::reverse(args.begin(), args.end());  // CLI11 takes a vector in reverse order
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(e.what());
  }
  return flags.Apply(file);
}

TEST(CoordinatorFlagsTest, GivenFlagsOverrideTheFileAndTheRestKeepIt) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(kFull);
  ASSERT_TRUE(config.ok()) << config.status();
  const std::string key_file =
      std::filesystem::temp_directory_path() / ("chord_flags_key_" + std::to_string(::getpid()));
  std::ofstream(key_file) << "sekret\n";
  absl::StatusOr<CoordinatorSection> s =
      ApplyFlags(config->coordinator, {"--grpc-port", "7000", "--http-port", "0", "--http-host",
                                       "127.0.0.2", "--chat-template", "llama3", "--api-key-file",
                                       key_file, "--kv-slots", "9", "--step-timeout-ms", "250"});
  std::filesystem::remove(key_file);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->grpc_port, 7000);
  EXPECT_EQ(s->http_port, 0);
  EXPECT_EQ(s->http_bind_host(), "127.0.0.2");
  EXPECT_EQ(s->chat_template, "llama3");
  EXPECT_EQ(s->api_key_file, key_file);
  EXPECT_EQ(s->kv_slots, 9);
  EXPECT_EQ(s->step_timeout_ms, 250);
  // Not given: the file's values.
  EXPECT_EQ(s->control_port, 6001);
  EXPECT_EQ(s->kv_type, "f16");
  EXPECT_TRUE(s->exact);
  EXPECT_EQ(s->max_queue, 32);
  EXPECT_EQ(s->tls_cert, "/etc/chord/tls/server.crt");
  EXPECT_EQ(s->grace_ms, 3000);
  // No flags at all: the file unchanged; no file: the defaults.
  s = ApplyFlags(config->coordinator, {});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->http_port, 8080);
  EXPECT_EQ(s->step_timeout_ms, 4500);
  EXPECT_FALSE(s->chain_steps);  // the file's
  s = ApplyFlags(config->coordinator, {"--chain-steps"});
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->chain_steps);
  s = ApplyFlags(CoordinatorSection(), {"--kv-type", "f16", "--exact", "--no-chain-steps"});
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->exact);
  EXPECT_FALSE(s->chain_steps);
  EXPECT_EQ(s->http_port, -1);
  EXPECT_EQ(s->grpc_port, 50051);
  EXPECT_EQ(s->kv_type, "f16");
  EXPECT_EQ(s->step_timeout_ms, 60000);
}

TEST(CoordinatorFlagsTest, BadValuesAndHalfTlsAreRefused) {
  EXPECT_FALSE(ApplyFlags(CoordinatorSection(), {"--http-port", "70000"}).ok());
  EXPECT_FALSE(ApplyFlags(CoordinatorSection(), {"--kv-type", "q4"}).ok());
  EXPECT_FALSE(ApplyFlags(CoordinatorSection(), {"--exact=sometimes"}).ok());
  for (const char* bad : {"0", "-1", "soon", "3600001"}) {
    const absl::Status refused =
        ApplyFlags(CoordinatorSection(), {"--step-timeout-ms", bad}).status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(refused.message()), HasSubstr("--step-timeout-ms")) << bad;
  }
  EXPECT_FALSE(ApplyFlags(CoordinatorSection(), {"--tls-cert", "/nonexistent/cert.pem"}).ok());
  CoordinatorSection half;
  half.tls_cert = "cert.pem";
  EXPECT_EQ(ValidateCoordinatorSection(half).code(), absl::StatusCode::kInvalidArgument);
  half.tls_key = "key.pem";
  EXPECT_TRUE(ValidateCoordinatorSection(half).ok());
  CoordinatorSection ca_only;
  ca_only.tls_client_ca = "ca.pem";
  EXPECT_EQ(ValidateCoordinatorSection(ca_only).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CoordinatorFlagsTest, EnvironmentVariablesOverrideTheFileAndFlagsOverrideThem) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(kFull);
  ASSERT_TRUE(config.ok()) << config.status();
  ::setenv("CHORD_MAX_QUEUE", "77", 1);
  ::setenv("CHORD_KV_SLOTS", "5", 1);
  absl::StatusOr<CoordinatorSection> s = ApplyFlags(config->coordinator, {"--kv-slots", "9"});
  ::unsetenv("CHORD_MAX_QUEUE");
  ::unsetenv("CHORD_KV_SLOTS");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->max_queue, 77);  // the variable over the file's 32
  EXPECT_EQ(s->kv_slots, 9);    // the flag over the variable
  EXPECT_EQ(s->grpc_port, 6000);
}

TEST(CoordinatorFlagsTest, StepTimeoutComesFromTheFileTheVariableOrTheFlag) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(kFull);
  ASSERT_TRUE(config.ok()) << config.status();
  ::setenv("CHORD_STEP_TIMEOUT_MS", "900", 1);
  absl::StatusOr<CoordinatorSection> from_variable = ApplyFlags(config->coordinator, {});
  absl::StatusOr<CoordinatorSection> from_flag =
      ApplyFlags(config->coordinator, {"--step-timeout-ms", "120"});
  ::setenv("CHORD_STEP_TIMEOUT_MS", "0", 1);
  absl::StatusOr<CoordinatorSection> bad_variable = ApplyFlags(config->coordinator, {});
  ::unsetenv("CHORD_STEP_TIMEOUT_MS");
  ASSERT_TRUE(from_variable.ok()) << from_variable.status();
  EXPECT_EQ(from_variable->step_timeout_ms, 900);  // over the file's 4500
  ASSERT_TRUE(from_flag.ok()) << from_flag.status();
  EXPECT_EQ(from_flag->step_timeout_ms, 120);  // over the variable
  ASSERT_FALSE(bad_variable.ok());
  EXPECT_THAT(std::string(bad_variable.status().message()), HasSubstr("--step-timeout-ms"));
  absl::StatusOr<CoordinatorSection> file_only = ApplyFlags(config->coordinator, {});
  ASSERT_TRUE(file_only.ok());
  EXPECT_EQ(file_only->step_timeout_ms, 4500);
}

TEST(CurveFlagsTest, FileSectionsThenVariablesThenFlags) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(kFull);
  ASSERT_TRUE(config.ok()) << config.status();
  auto resolve = [&](std::vector<std::string> args, const ClusterConfig* file) {
    CLI::App app;
    CurveFlags flags(app);
    std::vector<std::string> argv = {"test"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> raw;
    for (std::string& arg : argv) raw.push_back(arg.data());
    app.parse(static_cast<int>(raw.size()), raw.data());
    return flags.Resolve(file, file != nullptr ? file->workers[0].curve_key : "");
  };
  wire::CurveFiles files = resolve({}, &*config);
  EXPECT_EQ(files.secret_key, "/etc/chord/keys/w0.key");
  EXPECT_EQ(files.allow, "/etc/chord/keys/allowed");
  EXPECT_EQ(files.coordinator_public_key, "/etc/chord/keys/coordinator.pub");
  EXPECT_EQ(files.loader_public_key, "/etc/chord/keys/loader.pub");
  ::setenv("CHORD_CURVE_ALLOW", "/env/allowed", 1);
  files = resolve({"--curve-key", "/flag/w0.key"}, &*config);
  ::unsetenv("CHORD_CURVE_ALLOW");
  EXPECT_EQ(files.secret_key, "/flag/w0.key");
  EXPECT_EQ(files.allow, "/env/allowed");
  EXPECT_EQ(files.loader_public_key, "/etc/chord/keys/loader.pub");
  files = resolve({}, nullptr);  // no file, no flags: plaintext
  EXPECT_TRUE(files.secret_key.empty());
  EXPECT_TRUE(files.allow.empty());
}

TEST(ParseByteSizeTest, AcceptsSuffixesAsPowersOf1024) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("0"), 0u);
  EXPECT_EQ(*ParseByteSize("4K"), 4096u);
  EXPECT_EQ(*ParseByteSize("4k"), 4096u);
  EXPECT_EQ(*ParseByteSize("2M"), 2u << 20);
  EXPECT_EQ(*ParseByteSize("2G"), 2ull << 30);
  EXPECT_EQ(*ParseByteSize("1T"), 1ull << 40);
  EXPECT_EQ(*ParseByteSize(" 3G "), 3ull << 30);
}

TEST(ParseByteSizeTest, RejectsGarbageAndOverflow) {
  for (const char* text : {"", "G", "-1", "1.5G", "2GB", "abc", "1 G", "99999999999999999999"}) {
    EXPECT_FALSE(ParseByteSize(text).ok()) << text;
  }
  EXPECT_FALSE(ParseByteSize("17179869184T").ok());
  EXPECT_TRUE(ParseByteSize("16777215T").ok());
}

}  // namespace
}  // namespace chord
