// LibTorch's CUDA side, loaded only when a load asks for a CUDA device.
//
// libtorch_cuda and its CUDA libraries add ~0.25 s to every process start, so shardstream_torch
// links only torch_cpu. The few things that need torch's CUDA libraries (allocating CUDA tensors
// needs them loaded, and torch's allocator statistics) live in a small plugin,
// libshardstream_torch_cuda.so (integration/torch_cuda_plugin.cc), which RequireTorchCuda finds and
// dlopens on first use: next to the running executable, at the path the build put it, then on the
// library search path. A program that links the plugin directly skips the search (its entry point
// is then already in the process). Private to integration/.
#pragma once

#include "io/status.h"

#include <c10/core/Device.h>

#include <cstdint>

namespace shardstream::detail {

inline constexpr int kTorchCudaPluginAbi = 3;

// What the plugin exports (extern "C" shardstream_torch_cuda_plugin()).
struct TorchCudaPlugin {
  int abi = kTorchCudaPluginAbi;
  // CUDA devices torch sees (torch::cuda::device_count()).
  int (*device_count)() = nullptr;
  // The most bytes torch's caching allocator has had allocated on `device` in this process.
  uint64_t (*peak_allocated_bytes)(int device) = nullptr;
  // How many times torch's caching allocator has called cudaMalloc on `device` in this process.
  uint64_t (*device_allocations)(int device) = nullptr;
  // Whether LibTorch's CUDA kernels and allocator are registered (libtorch_cuda loaded).
  bool (*torch_has_cuda)() = nullptr;
  // Creates `device`'s CUDA context now (otherwise the first allocation does, ~0.1–0.5 s).
  io::Status (*init_device)(int device) = nullptr;
};

// The plugin, loaded on first use, after checking that this build has CUDA, that the plugin can
// be loaded, and that `device` exists, whose CUDA context it then creates: the process's one-time
// CUDA start-up happens here, which loads time after this call (as Python loaders are timed after
// torch.cuda.init()). Throws LoadError rule "device" naming what is missing. Thread-safe.
const TorchCudaPlugin& RequireTorchCuda(c10::Device device);

// One cudaMalloc instead of hundreds. Torch's caching allocator gives every large tensor (over
// its 1 MiB small-block size) its own cudaMalloc unless a free cached segment can be split; a
// load allocates hundreds of fresh tensors at once, so it first allocates and frees one block of
// their summed sizes (AddDeviceReservation), which the allocator keeps cached and splits for
// them. Peak device memory is unchanged. Best effort: when the block does not fit, nothing
// happens and each tensor is allocated (or refused) on its own.
void AddDeviceReservation(uint64_t tensor_bytes, uint64_t* total);
void ReserveDeviceMemory(c10::Device device, uint64_t bytes);

}  // namespace shardstream::detail
