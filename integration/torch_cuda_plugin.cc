// libshardstream_torch_cuda.so: the parts of the CUDA path that need LibTorch's CUDA libraries.
// See integration/detail/torch_cuda.h for why this is a plugin.
#include "integration/detail/torch_cuda.h"
#include "integration/dtype.h"

#include <ATen/Context.h>
#include <ATen/ops/from_blob.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime_api.h>

#include <exception>
#include <string>

namespace shardstream::detail {
namespace {

int DeviceCount() { return static_cast<int>(c10::cuda::device_count()); }

io::Status Cast(int device, cuda::StreamHandle stream, const std::byte* src, io::DType src_dtype,
                std::byte* dst, io::DType dst_dtype, uint64_t elements) {
  try {
    // ATen queues its kernel on the current stream: make the sink's stream current for the call.
    const c10::cuda::CUDAStream external = c10::cuda::getStreamFromExternal(
        reinterpret_cast<cudaStream_t>(stream), static_cast<c10::DeviceIndex>(device));
    const c10::cuda::CUDAStreamGuard guard(external);
    const auto where = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
    const auto count = static_cast<int64_t>(elements);
    const at::Tensor from =
        at::from_blob(const_cast<std::byte*>(src), {count},
                      at::TensorOptions().dtype(StorageDType(src_dtype)).device(where));
    at::Tensor to = at::from_blob(dst, {count},
                                  at::TensorOptions().dtype(StorageDType(dst_dtype)).device(where));
    to.copy_(from, /*non_blocking=*/true);
    return io::Status::Ok();
  } catch (const c10::Error& e) {
    return io::Status::Error(
        io::StatusCode::kInvalidArgument, "cast",
        std::string("torch cannot cast ") + std::string(io::DTypeName(src_dtype)) + " to " +
            std::string(io::DTypeName(dst_dtype)) + " on cuda:" + std::to_string(device) + ": " +
            e.what_without_backtrace());
  } catch (const std::exception& e) {
    return io::Status::Error(io::StatusCode::kInternal, "cast", e.what());
  }
}

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

const TorchCudaPlugin kPlugin{kTorchCudaPluginAbi, &DeviceCount,  &Cast,      &PeakAllocatedBytes,
                              &DeviceAllocations,  &TorchHasCuda, &InitDevice};

}  // namespace
}  // namespace shardstream::detail

extern "C" __attribute__((visibility("default"))) const shardstream::detail::TorchCudaPlugin*
shardstream_torch_cuda_plugin() {
  return &shardstream::detail::kPlugin;
}
