#include "cuda/device.h"

#ifdef SHARDSTREAM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace shardstream::cuda {

#ifdef SHARDSTREAM_HAVE_CUDA

bool BuiltWithCuda() { return true; }

DeviceProbe ProbeDevices() {
  DeviceProbe probe;
  cudaRuntimeGetVersion(&probe.runtime_version);
  if (cudaDriverGetVersion(&probe.driver_version) != cudaSuccess || probe.driver_version == 0) {
    probe.reason = "no NVIDIA driver is installed on this machine";
    return probe;
  }
  int count = 0;
  cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    probe.reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(error) + ": " +
                   cudaGetErrorString(error);
    // Clear the sticky error so that later calls in this process start clean.
    cudaGetLastError();
    return probe;
  }
  probe.device_count = count;
  if (count == 0) probe.reason = "the CUDA driver reports no devices";
  return probe;
}

#else

bool BuiltWithCuda() { return false; }

DeviceProbe ProbeDevices() {
  DeviceProbe probe;
  probe.reason = "shardstream was built without CUDA (SHARDSTREAM_WITH_CUDA=OFF or no toolkit)";
  return probe;
}

#endif

}  // namespace shardstream::cuda
