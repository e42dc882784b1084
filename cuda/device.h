// Which CUDA devices this process can use. Safe to call in any build: without CUDA support, or
// on a machine without a GPU or driver, it says so instead of failing.
#pragma once

#include <string>

namespace shardstream::cuda {

struct DeviceProbe {
  int device_count = 0;     // usable devices; 0 when none
  std::string reason;       // why there are none ("built without CUDA", the driver's error, ...)
  int driver_version = 0;   // e.g. 13000 for CUDA 13.0; 0 when unknown
  int runtime_version = 0;  // the CUDA runtime this build links
};

// Whether shardstream was compiled with the CUDA sink.
bool BuiltWithCuda();

// Asks the CUDA runtime for devices. Never throws. Thread-safe.
DeviceProbe ProbeDevices();

}  // namespace shardstream::cuda
