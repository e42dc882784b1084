// The device cast in builds without a CUDA compiler: there are no kernels, so a cast onto a GPU
// fails clearly (cuda/cast_kernel.cu is the real one).
#include "cuda/cast_kernel.h"

namespace shardstream::cuda {

io::Status DeviceConvert(StreamHandle stream, const std::byte* src, io::DType from, std::byte* dst,
                         io::DType to, uint64_t elements) {
  (void)stream, (void)src, (void)dst, (void)elements;
  return io::Status::Error(io::StatusCode::kUnsupported, "cast",
                           "casting " + std::string(io::DTypeName(from)) + " to " +
                               std::string(io::DTypeName(to)) +
                               " on a GPU needs shardstream's CUDA kernels, and this build had no "
                               "CUDA compiler (nvcc); load in the file's dtype, or rebuild with "
                               "nvcc on PATH");
}

}  // namespace shardstream::cuda
