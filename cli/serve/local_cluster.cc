#include "cli/serve/local_cluster.h"

#include <unistd.h>

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <filesystem>

#include "cli/serve/health_probe.h"
#include "common/base/status.h"

namespace chord::serve {
namespace {

constexpr char kLoaderReady[] = "chord-loader listening on";
constexpr char kGrpcReady[] = "chord-coordinator serving gRPC on";
constexpr char kControlReady[] = "chord-coordinator control on";

void SetFlag(std::vector<std::string>& args, const std::string& flag, const std::string& value) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == flag) {
      args[i + 1] = value;
      return;
    }
  }
  args.push_back(flag);
  args.push_back(value);
}

std::string Tail(const std::string& text, size_t max_chars) {
  return text.size() <= max_chars ? text : "..." + text.substr(text.size() - max_chars);
}

}  // namespace

absl::StatusOr<int> PortOf(std::string_view address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon != std::string_view::npos) {
    std::string_view digits = address.substr(colon + 1);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (ec == std::errc() && end == digits.data() + digits.size() && port > 0 && port < 65536) return port;
  }
  return absl::InvalidArgumentError(absl::StrCat("no port in '", std::string(address), "'"));
}

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(LocalClusterOptions options) {
  std::unique_ptr<LocalCluster> cluster(new LocalCluster(std::move(options)));
  absl::Status started = cluster->StartAll();
  if (!started.ok()) {
    cluster->Stop(std::chrono::seconds(3));
    return started;
  }
  return cluster;
}

LocalCluster::~LocalCluster() { Stop(std::chrono::seconds(5)); }

absl::StatusOr<std::string> LocalCluster::Launch(Spec spec) {
  auto on_line = options_.on_line;
  ChildProcess::LineCallback callback;
  if (on_line) callback = [on_line, name = spec.name](std::string_view line) { on_line(name, line); };
  ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> child,
                   ChildProcess::Start(spec.name, spec.binary, spec.args, std::move(callback)));
  ChildProcess* raw = child.get();
  children_.push_back(std::move(child));
  specs_.push_back(std::move(spec));
  if (specs_.back().ready_marker.empty()) return std::string();
  absl::StatusOr<std::string> ready = raw->WaitForLine(specs_.back().ready_marker, options_.start_timeout);
  if (!ready.ok()) {
    return absl::Status(ready.status().code(),
                        absl::StrCat(ready.status().message(), "; its output:\n", Tail(raw->Output(), 4000)));
  }
  return ready;
}

absl::Status LocalCluster::StartAll() {
  // Children inherit it: NCCL's NVLink multicast (NVLS) stays off for GPU
  // workers (it needs fabric settings chord never changes).
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  const std::string bin = options_.bin_dir.empty() ? SelfDirectory() : options_.bin_dir;
  std::vector<std::string> common = options_.log_args;
  if (!options_.config_path.empty()) {
    common.push_back("--config");
    common.push_back(options_.config_path);
  }

  Spec loader{"loader", bin + "/chord-loader", common, kLoaderReady};
  loader.args.insert(loader.args.end(), options_.loader_args.begin(), options_.loader_args.end());
  if (!options_.model.empty()) SetFlag(loader.args, "--model", options_.model);
  if (options_.loader_transport == "ipc") {
    ipc_path_ = (std::filesystem::temp_directory_path() /
                 absl::StrCat("chord-loader-", getpid(), "-", reinterpret_cast<uintptr_t>(this), ".ipc"))
                    .string();
    SetFlag(loader.args, "--bind", "ipc://" + ipc_path_);
  } else if (options_.loader_transport == "tcp") {
    SetFlag(loader.args, "--bind", "tcp://127.0.0.1:0");
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("loader transport must be ipc or tcp, not '", options_.loader_transport, "'"));
  }
  ASSIGN_OR_RETURN(loader_endpoint_, Launch(std::move(loader)));
  SetFlag(specs_[0].args, "--bind", loader_endpoint_);  // a restart binds the same port

  Spec coordinator{"coordinator", bin + "/chord-coordinator", common, kGrpcReady};
  coordinator.args.insert(coordinator.args.end(), options_.coordinator_args.begin(), options_.coordinator_args.end());
  SetFlag(coordinator.args, "--loader", loader_endpoint_);
  SetFlag(coordinator.args, "--grpc-port", std::to_string(options_.grpc_port));
  SetFlag(coordinator.args, "--control-bind", "tcp://127.0.0.1:0");
  SetFlag(coordinator.args, "--min-workers", std::to_string(options_.workers));
  if (options_.kv_slots > 0) SetFlag(coordinator.args, "--kv-slots", std::to_string(options_.kv_slots));
  if (options_.ctx_size >= 0) SetFlag(coordinator.args, "--ctx-size", std::to_string(options_.ctx_size));
  ASSIGN_OR_RETURN(grpc_address_, Launch(std::move(coordinator)));
  ASSIGN_OR_RETURN(grpc_port_, PortOf(grpc_address_));
  ASSIGN_OR_RETURN(control_endpoint_, children_[1]->WaitForLine(kControlReady, options_.start_timeout));
  SetFlag(specs_[1].args, "--grpc-port", std::to_string(grpc_port_));
  SetFlag(specs_[1].args, "--control-bind", control_endpoint_);

  for (int i = 0; i < options_.workers; ++i) {
    Spec worker{"w" + std::to_string(i), bin + "/chord-worker", common, ""};
    worker.args.insert(worker.args.end(), options_.worker_args.begin(), options_.worker_args.end());
    if (static_cast<size_t>(i) < options_.per_worker_args.size()) {
      const std::vector<std::string>& own = options_.per_worker_args[static_cast<size_t>(i)];
      worker.args.insert(worker.args.end(), own.begin(), own.end());
    }
    SetFlag(worker.args, "--coordinator", control_endpoint_);
    SetFlag(worker.args, "--id", worker.name);
    SetFlag(worker.args, "--data-bind", "tcp://127.0.0.1:0");
    if (options_.threads_per_worker > 0) {
      SetFlag(worker.args, "--threads", std::to_string(options_.threads_per_worker));
    }
    if (!options_.worker_devices.empty()) {
      const size_t device = static_cast<size_t>(i) % options_.worker_devices.size();
      SetFlag(worker.args, "--device", std::to_string(options_.worker_devices[device]));
    }
    RETURN_IF_ERROR(Launch(std::move(worker)).status());
  }
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials, ClientCredentials(options_.probe_tls));
  absl::Status serving = WaitUntilServing(grpc_address_, options_.start_timeout, credentials);
  if (!serving.ok()) {
    std::string outputs;
    for (const auto& child : children_) {
      absl::StrAppend(&outputs, "--- ", child->name(), ":\n", Tail(child->Output(), 1500));
    }
    return absl::Status(serving.code(), absl::StrCat(serving.message(), "\n", outputs));
  }
  return absl::OkStatus();
}

absl::Status LocalCluster::Restart(size_t index) {
  CHORD_CHECK(index < children_.size());
  if (!children_[index]->Poll().has_value()) return absl::FailedPreconditionError("child is still running");
  children_[index]->Stop(std::chrono::milliseconds(0));  // joins its reader
  const Spec& spec = specs_[index];
  ChildProcess::LineCallback callback;
  if (options_.on_line) {
    callback = [on_line = options_.on_line, name = spec.name](std::string_view line) { on_line(name, line); };
  }
  ASSIGN_OR_RETURN(children_[index], ChildProcess::Start(spec.name, spec.binary, spec.args, std::move(callback)));
  if (spec.ready_marker.empty()) return absl::OkStatus();
  return children_[index]->WaitForLine(spec.ready_marker, options_.start_timeout).status();
}

std::vector<std::string> LocalCluster::Stop(std::chrono::milliseconds grace) {
  std::vector<std::string> unclean;
  // The coordinator (child 1) first, so that it drains; then reverse start
  // order (workers, loader), most of which have exited on its Shutdown by then.
  std::vector<size_t> order;
  if (children_.size() > 1) order.push_back(1);
  for (size_t i = children_.size(); i-- > 0;) {
    if (i != 1) order.push_back(i);
  }
  for (const size_t i : order) {
    if (children_[i] == nullptr) continue;
    const int status = children_[i]->Stop(grace);
    if (!IsCleanExit(status)) unclean.push_back(children_[i]->name() + ": " + DescribeWaitStatus(status));
    children_[i].reset();
  }
  children_.clear();
  if (!ipc_path_.empty()) std::filesystem::remove(ipc_path_);  // the loader's socket file
  return unclean;
}

}  // namespace chord::serve
