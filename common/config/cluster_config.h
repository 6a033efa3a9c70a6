// The cluster config: one YAML file describing the coordinator, the loader and
// the workers, read by every chord process (each picks its own section) and by
// `chord serve`. Flags given on a command line override the file's fields.
//
// Example (every field optional unless marked):
//   coordinator:
//     host: 127.0.0.1          # where the gRPC API and the control socket bind
//     grpc_port: 50051
//     control_port: 5555
//     kv_slots: 16             # sequences live at once (per worker KV cache)
//     ctx_size: 0              # positions per sequence; 0: the model's
//     kv_tokens: 0             # positions each stage's KV cache holds, shared by the slots
//                              # (paged); 0: 4 full contexts (at most kv_slots); beyond it
//                              # the newest sequence is preempted and recomputed later
//     kv_type: f32             # f32 or f16
//     exact: false             # true: a sequence's results never depend on its batch or on
//                              # how its prompt was chunked, on GPU stages too (slower prompts
//                              # and large batches there; CPU stages are always exact)
//     max_queue: 256
//     min_workers: 1           # workers that must register before the first plan
//     http_port: 8080          # OpenAI-compatible HTTP API; off when absent
//     http_host: 127.0.0.1     # where HTTP binds; default: host
//     chat_template: llama3    # default: recognized from the model
//     api_key_file: /etc/chord/token/token  # its first line is the bearer token (gRPC and HTTP)
//     tls_cert: /etc/chord/tls/server.crt   # PEM; with tls_key: gRPC and HTTP serve TLS
//     tls_key: /etc/chord/tls/server.key
//     tls_client_ca: /etc/chord/tls/clients.crt  # PEM CA: mutual TLS, clients need a certificate it signed
//     worker_timeout_ms: 2000  # a worker silent this long is lost (its layers re-planned)
//     grace_ms: 10000          # on SIGTERM, time in-flight requests get to finish
//     step_timeout_ms: 60000   # a step unanswered this long is replayed; stages drop it past then
//     chain_steps: true        # send a sequence's next step while its current one runs
//                              # (PROTOCOL.md, "Chained steps"); false: wait for each answer
//   loader:
//     host: 127.0.0.1
//     port: 5556
//     model: models/stories260K.gguf   # required for the loader
//     curve_key: /etc/chord/keys/coordinator.key  # this process's CURVE secret key
//   loader:
//     ...                      # (as above)
//     curve_key: /etc/chord/keys/loader.key
//   curve:                     # CURVE on every ZeroMQ link; plaintext when absent
//     allow: /etc/chord/keys/allowed   # *.pub files (or one file of keys) of every process
//     coordinator_public_key: /etc/chord/keys/coordinator.pub
//     loader_public_key: /etc/chord/keys/loader.pub
//   workers:
//     - id: w0                 # required, unique
//       host: 127.0.0.1
//       data_port: 5600
//       memory_budget: 2G      # bytes; K/M/G/T suffixes are powers of 1024; 0 = unlimited
//       gpu_memory_budget: 40G # cuda: bytes for weights in GPU memory; 0 = unlimited; layers
//                              # beyond it stream from host memory each step
//       backend: cpu           # cpu or cuda
//       device: 0
//       threads: 0             # 0: one per core
//       curve_key: /etc/chord/keys/w0.key
//       nccl: true             # cuda: activations to/from neighbouring GPU stages over NCCL
//       nccl_interface: eth1   # NCCL's bootstrap/socket traffic stays here; default: the
//                              # interface holding `host` (lo for 127.0.0.1)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace chord {

struct CoordinatorSection {
  std::string host = "127.0.0.1";
  int grpc_port = 50051;
  int control_port = 5555;
  int kv_slots = 16;
  int64_t ctx_size = 0;
  int64_t kv_tokens = 0;  // 0: min(kv_slots, 4) full contexts
  std::string kv_type = "f32";
  bool exact = false;  // batch-invariant results on GPU stages too (AssignLayers.exact)
  int max_queue = 256;
  int min_workers = 1;
  int http_port = -1;          // -1: no HTTP server; 0: chosen by the OS
  std::string http_host;       // empty: `host`
  std::string chat_template;   // empty: recognized from the model
  std::string api_key_file;    // empty: no bearer token (the CHORD_API_KEY variable may set one)
  std::string tls_cert, tls_key;  // PEM files, both or neither; for gRPC and HTTP
  std::string tls_client_ca;      // PEM CA file: clients must present a certificate it signed

  const std::string& http_bind_host() const { return http_host.empty() ? host : http_host; }
  int64_t worker_timeout_ms = 2000;
  int64_t grace_ms = 10000;
  // A step's deadline (StepHeader.deadline_unix_micros) is its launch plus
  // this: stages drop a step that arrives later, and the coordinator replays
  // a step unanswered by then. Positive.
  int64_t step_timeout_ms = 60000;
  // Chained steps (PROTOCOL.md): no coordinator round trip between two tokens.
  bool chain_steps = true;
  std::string curve_key;  // CURVE secret key file (PREFIX.key); with `curve.allow`
};

// INVALID_ARGUMENT when settings that only make sense together are not
// (tls_cert without tls_key, or the reverse; tls_client_ca without TLS).
absl::Status ValidateCoordinatorSection(const CoordinatorSection& section);

struct LoaderSection {
  std::string host = "127.0.0.1";
  int port = 5556;
  std::string model;
  std::string curve_key;
};

struct WorkerSection {
  std::string id;
  std::string host = "127.0.0.1";
  int data_port = 0;
  uint64_t memory_budget = 0;
  uint64_t gpu_memory_budget = 0;
  std::string backend = "cpu";
  int device = 0;
  int threads = 0;
  std::string curve_key;
  bool nccl = true;
  std::string nccl_interface;
};

// The cluster-wide half of CURVE (each section names its own secret key).
struct CurveSection {
  std::string allow;                   // a directory of *.pub files, or a file of keys
  std::string coordinator_public_key;  // file
  std::string loader_public_key;       // file
};

struct ClusterConfig {
  CoordinatorSection coordinator;
  LoaderSection loader;
  std::vector<WorkerSection> workers;
  CurveSection curve;

  const WorkerSection* FindWorker(std::string_view id) const;
  std::string ToYaml() const;  // the effective config, as processes print it at start
};

// INVALID_ARGUMENT naming the field (and line) for bad YAML, unknown keys,
// wrong types, out-of-range ports, duplicate worker ids, a bad size or backend.
absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);
absl::StatusOr<ClusterConfig> ParseClusterConfig(std::string_view yaml);

// "4096", "4K", "2M", "2G", "1T" (powers of 1024) -> bytes.
absl::StatusOr<uint64_t> ParseByteSize(std::string_view text);

}  // namespace chord
