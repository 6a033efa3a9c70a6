// MakeCudaStageCompute in a build without CUDA (nvcc was not found).
#include "worker/stage_compute.h"

namespace chord {

absl::StatusOr<std::unique_ptr<StageCompute>> MakeCudaStageCompute(const TensorSource&, const ModelConfig&,
                                                                   const StageComputeOptions&,
                                                                   DeviceStreamedLayers) {
  return absl::UnimplementedError("this chord-worker was built without CUDA (nvcc was not found)");
}

bool CudaBackendBuilt() { return false; }

const MemoryPinner* CudaMemoryPinner() { return nullptr; }

absl::StatusOr<double> MeasureCudaWeightThroughput(int) {
  return absl::UnimplementedError("this chord-worker was built without CUDA (nvcc was not found)");
}

absl::StatusOr<std::string> CudaDeviceUuid(int) {
  return absl::UnimplementedError("this chord-worker was built without CUDA (nvcc was not found)");
}

}  // namespace chord
