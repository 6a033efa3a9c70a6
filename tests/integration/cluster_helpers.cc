#include "tests/integration/cluster_helpers.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <thread>

#include "cli/serve/child_process.h"
#include "common/base/status.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace chord::testing {

namespace fs = std::filesystem;

std::string BinDir() { return CHORD_BIN_DIR; }

absl::StatusOr<std::unique_ptr<serve::LocalCluster>> StartCluster(
    const std::string& model, int workers, int kv_slots, int64_t ctx_size,
    std::vector<std::string> coordinator_args) {
  serve::LocalClusterOptions options;
  options.bin_dir = BinDir();
  options.model = model;
  options.workers = workers;
  options.kv_slots = kv_slots;
  options.ctx_size = ctx_size;
  options.threads_per_worker = 1;
  options.log_args = {"--log-level", "warn"};
  options.coordinator_args = std::move(coordinator_args);
  options.start_timeout = std::chrono::seconds(60);
  return serve::LocalCluster::Start(std::move(options));
}

std::unique_ptr<v1::Inference::Stub> Connect(const std::string& address) {
  return v1::Inference::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

absl::StatusOr<nlohmann::json> RunChordJson(const std::vector<std::string>& args,
                                            std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(std::unique_ptr<serve::ChildProcess> chord,
                   serve::ChildProcess::Start("chord", BinDir() + "/chord", args));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!chord->Poll().has_value() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const int status = chord->Stop(std::chrono::seconds(1));
  const std::string output = chord->Output();
  if (status != 0) {
    return absl::InternalError(absl::StrCat("chord ", serve::DescribeWaitStatus(status), ":\n", output));
  }
  size_t start = 0;
  while (start < output.size()) {
    size_t end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    if (output.compare(start, 2, "{\"") == 0) {
      nlohmann::json parsed = nlohmann::json::parse(output.substr(start, end - start), nullptr, false);
      if (!parsed.is_discarded()) return parsed;
    }
    start = end + 1;
  }
  return absl::InternalError(absl::StrCat("no JSON line in chord's output:\n", output));
}

StreamResult Generate(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
                      std::chrono::milliseconds deadline,
                      const std::function<void(size_t)>& on_tokens) {
  StreamResult result;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (result.messages++ == 0) result.request_id = response.request_id();
    result.token_ids.insert(result.token_ids.end(), response.token_ids().begin(), response.token_ids().end());
    result.text += response.text();
    if (response.has_final()) {
      result.has_final = true;
      result.final_info = response.final();
    }
    if (on_tokens) on_tokens(result.token_ids.size());
  }
  result.status = reader->Finish();
  return result;
}

v1::GenerateRequest GreedyRequest(const std::string& prompt, uint32_t max_tokens) {
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  request.set_max_tokens(max_tokens);
  request.set_ignore_eos(true);
  request.mutable_sampling()->set_temperature(0.0f);
  return request;
}

std::vector<std::string> StoryPrompts(size_t n) {
  static const std::vector<std::string> kPrompts = {
      "Once upon a time", "The cat",     "Lily wanted",   "One day, a big",
      "Tom and Sue",      "The sun was", "A little bird", "Mom said"};
  return {kPrompts.begin(), kPrompts.begin() + static_cast<std::ptrdiff_t>(std::min(n, kPrompts.size()))};
}

v1::ServerInfo ServerInfo(v1::Inference::Stub& stub) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ServerInfo info;
  grpc::Status status = stub.GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  if (!status.ok()) info.set_version("error: " + status.error_message());
  return info;
}

bool WaitUntilIdle(v1::Inference::Stub& stub, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    v1::ServerInfo info = ServerInfo(stub);
    if (info.version().rfind("error", 0) != 0 && info.running_requests() == 0 && info.queued_requests() == 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

std::vector<TestModel> TestModels() {
  const std::vector<std::string> fallback_prompts = {"Once upon a time", "The little dog", ""};
  std::vector<TestModel> models;
  const fs::path reference_dir = fs::path(CHORD_SHARED_DIR) / "reference";
  auto prompts_of = [&](const std::string& name) {
    std::vector<std::string> prompts;
    std::ifstream in(reference_dir / (name + ".json"));
    if (!in) return fallback_prompts;
    nlohmann::json reference = nlohmann::json::parse(in, nullptr, false);
    if (reference.is_discarded()) return fallback_prompts;
    for (const auto& item : reference["cases"]) prompts.push_back(item["prompt"].get<std::string>());
    return prompts;
  };
  models.push_back({"bundled", CHORD_DEFAULT_MODEL, prompts_of("stories260K")});
  if (!fs::exists(reference_dir)) return models;
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(reference_dir)) {
    if (entry.path().extension() == ".json") names.push_back(entry.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const fs::path path = fs::path(CHORD_SHARED_DIR) / "models" / (name + ".gguf");
    if (fs::exists(path)) models.push_back({name, path.string(), prompts_of(name)});
  }
  return models;
}

}  // namespace chord::testing
