// libshardstream_torch_cuda.so: the parts of the CUDA path that need LibTorch's CUDA libraries.
// See integration/detail/torch_cuda.h for why this is a plugin.
#include "integration/detail/torch_cuda.h"

#include <ATen/Context.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>

#include <cuda_runtime_api.h>

#include <exception>
#include <string>

namespace shardstream::detail {
namespace {

int DeviceCount() { return static_cast<int>(c10::cuda::device_count()); }

uint64_t PeakAllocatedBytes(int device) {
  try {
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    return static_cast<uint64_t>(
        stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
            .peak);
  } catch (const std::exception&) {
    return 0;
  }
}

uint64_t DeviceAllocations(int device) {
  try {
    return static_cast<uint64_t>(
        c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device))
            .num_device_alloc);
  } catch (const std::exception&) {
    return 0;
  }
}

bool TorchHasCuda() { return at::hasCUDA(); }

io::Status InitDevice(int device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const cudaError_t error = cudaFree(nullptr);  // creates the primary context
  if (error == cudaSuccess) return io::Status::Ok();
  return io::Status::Error(io::StatusCode::kUnsupported, "device",
                           "cannot start CUDA on cuda:" + std::to_string(device) + ": " +
                               cudaGetErrorName(error) + ": " + cudaGetErrorString(error));
}

const TorchCudaPlugin kPlugin{kTorchCudaPluginAbi, &DeviceCount,  &PeakAllocatedBytes,
                              &DeviceAllocations,  &TorchHasCuda, &InitDevice};

}  // namespace
}  // namespace shardstream::detail

extern "C" __attribute__((visibility("default"))) const shardstream::detail::TorchCudaPlugin*
shardstream_torch_cuda_plugin() {
  return &shardstream::detail::kPlugin;
}
