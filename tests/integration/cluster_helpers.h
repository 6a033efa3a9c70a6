// Helpers for the multi-process tests: start a loopback deployment from the
// build's bin/ directory, run the in-process `chord generate --json` for the
// expected tokens, and stream generations through the gRPC API.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "chord/v1/inference.grpc.pb.h"
#include "cli/serve/local_cluster.h"
#include "nlohmann/json.hpp"

namespace chord::testing {

// The built binaries (chord, chord-loader, ...).
std::string BinDir();

// Starts loader + coordinator + `workers` workers on free loopback ports, with
// the children's output kept for failure messages (not echoed). Children:
// 0 loader, 1 coordinator, 2.. workers w0, w1, ...
absl::StatusOr<std::unique_ptr<serve::LocalCluster>> StartCluster(
    const std::string& model, int workers, int kv_slots = 8, int64_t ctx_size = 256,
    std::vector<std::string> coordinator_args = {});

std::unique_ptr<v1::Inference::Stub> Connect(const std::string& address);

// Runs `chord <args>` to completion (bounded by `timeout`) and returns the JSON
// object it printed on its own line; the error carries the output otherwise.
absl::StatusOr<nlohmann::json> RunChordJson(const std::vector<std::string>& args,
                                            std::chrono::milliseconds timeout = std::chrono::seconds(120));

struct StreamResult {
  std::vector<int32_t> token_ids;
  std::string text;
  int messages = 0;
  bool has_final = false;
  v1::FinalInfo final_info;
  grpc::Status status;
  std::string request_id;  // from the first message
};

// Streams one generation; `deadline` bounds the call (default 120 s).
// `on_tokens`, when set, is called on the reading thread after each message
// with the number of tokens received so far.
StreamResult Generate(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
                      std::chrono::milliseconds deadline = std::chrono::seconds(120),
                      const std::function<void(size_t)>& on_tokens = {});

v1::GenerateRequest GreedyRequest(const std::string& prompt, uint32_t max_tokens);

// The first `n` (at most 8) of a fixed list of story openings, which the
// bundled stories260K model continues: prompts for concurrent streams.
std::vector<std::string> StoryPrompts(size_t n);

v1::ServerInfo ServerInfo(v1::Inference::Stub& stub);

// Polls GetServerInfo until running_requests is 0; false after `timeout`.
bool WaitUntilIdle(v1::Inference::Stub& stub, std::chrono::milliseconds timeout);

// {model name, GGUF path, prompts}: the bundled model (always) and every model
// with a reference file under CHORD_SHARED_DIR/reference (when present).
struct TestModel {
  std::string name;
  std::string path;
  std::vector<std::string> prompts;
};
std::vector<TestModel> TestModels();

}  // namespace chord::testing
