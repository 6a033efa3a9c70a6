// StageCompute's defaults: a stage that cannot hold activations on a GPU
// (the CPU stage) has no NCCL links and no one-call whole-model step.
#include "worker/stage_compute.h"

namespace chord {

absl::Status StageCompute::ReceiveRows(NcclLink&, int64_t) {
  return absl::UnimplementedError("this stage's activations live in host memory: no NCCL link");
}

absl::Status StageCompute::RunLayersOnDevice(std::span<const BatchToken>, float*, bool, bool) {
  return absl::UnimplementedError("this stage's activations live in host memory: no NCCL link");
}

absl::Status StageCompute::SendRows(NcclLink&, int64_t) {
  return absl::UnimplementedError("this stage's activations live in host memory: no NCCL link");
}

absl::Status StageCompute::EmbedOnDevice(std::span<const int32_t>) {
  return absl::UnimplementedError("this stage's activations live in host memory");
}

absl::Status StageCompute::LogitsOfDeviceRows(int64_t, int64_t, const LogitsRequest&) {
  return absl::UnimplementedError("this stage's activations live in host memory");
}

absl::Status StageCompute::Forward(std::span<const int32_t>, std::span<const BatchToken>, int64_t,
                                   const LogitsRequest&) {
  return absl::UnimplementedError("this stage runs a step as Embed, RunLayers and Logits");
}

}  // namespace chord
