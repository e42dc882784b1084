// CUDA runtime errors as shardstream errors. Only compiled into builds with CUDA.
//
//   SHARDSTREAM_CUDA_TRY(cudaMemcpyAsync(...));          // throws CudaError with file:line
//   SHARDSTREAM_CUDA_TRY_NOTHROW(cudaEventDestroy(ev));  // for destructors: logs, never throws
//   io::Status s = CudaStatus(cudaStreamSynchronize(s), "cudaStreamSynchronize");
#pragma once

#include "io/status.h"

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace shardstream::cuda {

// A failed CUDA runtime call: what() is "FILE:LINE: CALL failed: cudaErrorName: description".
class CudaError : public std::runtime_error {
 public:
  CudaError(cudaError_t error, const char* call, const char* file, int line);
  cudaError_t error() const { return error_; }

 private:
  cudaError_t error_;
};

// OK for cudaSuccess; otherwise rule "cuda" with the call, the error's name and description.
io::Status CudaStatus(cudaError_t error, const char* call);

// Prints one line to stderr for a failed call in a context that must not throw.
void LogCudaError(cudaError_t error, const char* call, const char* file, int line) noexcept;

}  // namespace shardstream::cuda

#define SHARDSTREAM_CUDA_TRY(call)                                                              \
  do {                                                                                          \
    cudaError_t shardstream_cuda_error_ = (call);                                               \
    if (shardstream_cuda_error_ != cudaSuccess) {                                               \
      throw ::shardstream::cuda::CudaError(shardstream_cuda_error_, #call, __FILE__, __LINE__); \
    }                                                                                           \
  } while (0)

#define SHARDSTREAM_CUDA_TRY_NOTHROW(call)                                                   \
  do {                                                                                       \
    cudaError_t shardstream_cuda_error_ = (call);                                            \
    if (shardstream_cuda_error_ != cudaSuccess) {                                            \
      ::shardstream::cuda::LogCudaError(shardstream_cuda_error_, #call, __FILE__, __LINE__); \
    }                                                                                        \
  } while (0)
