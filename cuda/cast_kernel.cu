#include "cuda/cast_kernel.h"
#include "engine/cast.h"
#include "engine/detail/convert.h"

#include <cuda_runtime_api.h>

#include <string>

namespace shardstream::cuda {
namespace {

constexpr unsigned kThreadsPerBlock = 256;
// Enough blocks to fill any current GPU; each thread then strides over the rest.
constexpr uint64_t kMaxBlocks = 4096;

__global__ void ConvertKernel(const unsigned char* src, io::DType from, unsigned char* dst,
                              io::DType to, uint64_t n) {
  const uint64_t stride = uint64_t{gridDim.x} * blockDim.x;
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    engine::detail::ConvertElement(from, src, to, dst, i);
  }
}

}  // namespace

io::Status DeviceConvert(StreamHandle stream, const std::byte* src, io::DType from, std::byte* dst,
                         io::DType to, uint64_t elements) {
  if (std::string why = engine::CastRefusal(from, to); !why.empty()) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "cast", std::move(why));
  }
  if (elements == 0) return io::Status::Ok();
  const uint64_t blocks =
      std::min<uint64_t>((elements + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks);
  ConvertKernel<<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
      reinterpret_cast<const unsigned char*>(src), from, reinterpret_cast<unsigned char*>(dst), to,
      elements);
  // A launch error (bad configuration, no kernel image for this GPU) shows at once; errors while
  // it runs come back from the stream's next synchronisation, as for the copies.
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    return io::Status::Error(io::StatusCode::kIoError, "cuda",
                             std::string("cast kernel launch failed: ") + cudaGetErrorName(error) +
                                 ": " + cudaGetErrorString(error));
  }
  return io::Status::Ok();
}

}  // namespace shardstream::cuda
