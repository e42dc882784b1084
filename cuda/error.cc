#include "cuda/error.h"

#include <cstdio>

namespace shardstream::cuda {
namespace {

std::string Describe(cudaError_t error, const char* call) {
  return std::string(call) + " failed: " + cudaGetErrorName(error) + ": " +
         cudaGetErrorString(error);
}

}  // namespace

CudaError::CudaError(cudaError_t error, const char* call, const char* file, int line)
    : std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " +
                         Describe(error, call)),
      error_(error) {}

io::Status CudaStatus(cudaError_t error, const char* call) {
  if (error == cudaSuccess) return io::Status::Ok();
  return io::Status::Error(io::StatusCode::kIoError, "cuda", Describe(error, call));
}

void LogCudaError(cudaError_t error, const char* call, const char* file, int line) noexcept {
  std::fprintf(stderr, "shardstream: %s:%d: %s (ignored during cleanup)\n", file, line,
               Describe(error, call).c_str());
}

}  // namespace shardstream::cuda
