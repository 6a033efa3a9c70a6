#include "cli/serve/health_probe.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <thread>
#include <vector>

#include "common/base/status.h"

namespace chord::serve {
namespace {

// HealthCheckResponse is `ServingStatus status = 1;`: tag 0x08 then a varint.
// An absent field means UNKNOWN (proto3 default).
absl::StatusOr<HealthStatus> DecodeHealthResponse(const std::string& bytes) {
  if (bytes.empty()) return HealthStatus::kUnknown;
  if (bytes.size() != 2 || bytes[0] != 0x08 || (bytes[1] & 0x80) != 0) {
    return absl::DataLossError("unexpected grpc.health.v1.HealthCheckResponse encoding");
  }
  return static_cast<HealthStatus>(bytes[1]);
}

}  // namespace

absl::StatusOr<HealthStatus> CheckHealth(const std::string& address, std::chrono::milliseconds timeout,
                                         std::shared_ptr<grpc::ChannelCredentials> credentials) {
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(address, credentials != nullptr ? credentials : grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::CompletionQueue queue;
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1);
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
      stub.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", request, &queue);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  queue.Next(&tag, &ok);
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::DataLossError("unreadable health response");
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return DecodeHealthResponse(bytes);
}

absl::Status WaitUntilServing(const std::string& address, std::chrono::milliseconds timeout,
                              std::shared_ptr<grpc::ChannelCredentials> credentials) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last = "no answer";
  while (std::chrono::steady_clock::now() < deadline) {
    absl::StatusOr<HealthStatus> health = CheckHealth(address, std::chrono::milliseconds(1000), credentials);
    if (health.ok() && *health == HealthStatus::kServing) return absl::OkStatus();
    last = health.ok() ? absl::StrCat("status ", static_cast<int>(*health)) : health.status().ToString();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return absl::DeadlineExceededError(
      absl::StrCat(address, " did not report SERVING within ", timeout.count(), " ms (last: ", last, ")"));
}

}  // namespace chord::serve
